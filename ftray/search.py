"""Ray Tune on the driver: the search space, the trial function, resources, and the Tuner itself.

A trial is a Tune *function* trial that builds a Ray Train `TorchTrainer` for its sampled
configuration and runs it; `TuneReportCallback` forwards rank 0's reports (and the checkpoint path)
to Tune. Hyperparameters are sampled once, here on the driver, so every worker of a trial trains
the same configuration.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ftray.errors import FtrayInputError
from ftray.sweep import Sweep

# The idle trial driver (it only waits on its Train workers) counts as this many CPUs, so a
# 2-worker trial fits on 2 cores instead of needing 3 and hanging.
TRIAL_DRIVER_CPU = 0.01
from ftray.report import RUN_FILE

SWEEP_COPY = "sweep.py"  # the sweep file as run, so `ftray resume` needs nothing else
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class Resources:
    cpus_per_worker: float
    max_concurrent_trials: int
    cluster: Mapping[str, float]


def plan_resources(sweep: Sweep, cluster: Mapping[str, float]) -> Resources:
    """Size each trial from what the cluster has; refuse a trial that can never be placed."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    model_ids = _models_in_space(sweep)
    biggest = max(sweep.workers_for(m) for m in model_ids)
    # One CPU per worker when the cluster has them, else share: a 2-worker trial on a 1-core laptop.
    cpw = sweep.cpus_per_worker or min(1.0, (cpus - TRIAL_DRIVER_CPU) / biggest)
    per_trial_cpu = []
    per_trial_gpu = []
    for m in model_ids:
        w, g = sweep.workers_for(m), sweep.gpus_for(m)
        need_cpu = w * cpw + TRIAL_DRIVER_CPU
        if need_cpu > cpus + 1e-9:
            raise FtrayInputError(
                f"a trial of {m!r} needs {w} workers x {cpw:g} CPUs (+{TRIAL_DRIVER_CPU} for its driver) = "
                f"{need_cpu:g} CPUs, but the cluster has {cpus:g}: lower `workers` or `cpus_per_worker`"
            )
        if w * g > gpus + 1e-9:
            raise FtrayInputError(
                f"a trial of {m!r} needs {w} workers x {g:g} GPUs = {w * g:g} GPUs, but the cluster has {gpus:g}: "
                "lower `workers` or `gpus_per_worker`"
            )
        per_trial_cpu.append(need_cpu)
        per_trial_gpu.append(w * g)
    # Enough concurrency that the largest trials all fit at once: none waits for resources forever.
    fit = math.floor(cpus / max(per_trial_cpu) + 1e-9)
    if max(per_trial_gpu) > 0:
        fit = min(fit, math.floor(gpus / max(per_trial_gpu) + 1e-9))
    concurrent = max(1, min(fit, sweep.num_trials))
    if sweep.max_concurrent_trials:
        concurrent = min(concurrent, sweep.max_concurrent_trials)
    return Resources(cpw, concurrent, dict(cluster))


def _models_in_space(sweep: Sweep) -> list[str]:
    from ray.tune.search.sample import Categorical

    m = sweep.space["model"]
    return list(m.categories) if isinstance(m, Categorical) else [m]


class DefineByRun:
    """The Optuna search space, written from the sweep's Tune space.

    Settings in `sweep.per_model` (the learning rate, by default) are suggested under a name per model
    ("lr/tiny-m"), so Optuna learns a separate value for each size. The values the trial uses are
    returned under their plain names, which is what Tune, W&B and the report see.
    """

    def __init__(self, sweep: Sweep, model_params: Mapping[str, int]):
        from ray.tune.search.optuna import OptunaSearch

        self.space = dict(sweep.space)
        self.per_model = tuple(sweep.per_model)
        self.distributions = OptunaSearch.convert_search_space(
            {k: v for k, v in self.space.items() if _is_domain(v)}
        )
        self.model_params = dict(model_params)
        self.default_model = sweep.models[0].id

    def __call__(self, trial) -> dict:
        out: dict[str, Any] = {}
        if "model" in self.distributions:
            model = self._suggest(trial, "model", self.distributions["model"])
        else:
            model = self.space.get("model", self.default_model)
        out["model"] = model
        for key, value in self.space.items():
            if key == "model":
                continue
            if key in self.distributions:
                name = f"{key}/{model}" if key in self.per_model else key
                out[key] = self._suggest(trial, name, self.distributions[key])
            else:
                out[key] = value
        out["model_params"] = self.model_params[model]
        return out

    @staticmethod
    def _suggest(trial, name, dist):
        import optuna.distributions as od

        if isinstance(dist, od.CategoricalDistribution):
            return trial.suggest_categorical(name, dist.choices)
        if isinstance(dist, od.IntDistribution):
            return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def _is_domain(v) -> bool:
    from ray.tune.search.sample import Domain

    return isinstance(v, Domain)


def run_trial(config: dict, sweep: Sweep, run_dir: str, tokenizer_json: str | None, cpus_per_worker: float) -> None:
    """One Tune trial: the driver of a Ray Train run for one sampled configuration."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from ftray.train import TrialSpec, train_loop

    resolved = sweep.resolve(config)
    rung = sweep.model(resolved["model"])
    workers, gpus = sweep.workers_for(rung.id), sweep.gpus_for(rung.id)
    filters = None
    if resolved["data_filter"] is not None:
        filters = {sweep.data_filter_column: resolved["data_filter"]}
    spec = TrialSpec(
        task=sweep.task, model=rung, lora=sweep.lora(resolved), lr=float(resolved["lr"]),
        steps=sweep.steps, epochs=sweep.epochs, batch_size=int(resolved["batch_size"]),
        grad_accum=int(resolved["grad_accum"]), max_length=sweep.max_length,
        weight_decay=float(resolved["weight_decay"]), warmup_ratio=float(resolved["warmup_ratio"]),
        data_fraction=float(resolved["data_fraction"]), data_filters=filters, seed=sweep.seed,
        eval_every=sweep.eval_every, eval_samples=sweep.eval_samples, max_new_tokens=sweep.max_new_tokens,
        objective=sweep.objective, tokenizer_json=tokenizer_json if rung.is_preset else None,
        threads=max(1, int(cpus_per_worker)), extra=config.get("_extra", {}),
    )
    per_worker = {"CPU": cpus_per_worker}
    if gpus:
        per_worker["GPU"] = gpus
    trial_id = tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec},
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=bool(gpus), resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=_join(run_dir, "checkpoints"),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=sweep.keep_checkpoints,
                checkpoint_score_attribute=sweep.objective,
                checkpoint_score_order=sweep.mode,
            ),
            failure_config=ray.train.FailureConfig(max_failures=2),
        ),
    )
    trainer.fit()


def prepare(sweep: Sweep) -> tuple[dict[str, int], str | None]:
    """Driver-side work before Ray: check the data and models, count parameters, build the tokenizer.

    Returns total parameters per model and the tokenizer JSON for the offline presets.
    """
    from ftray.models import build_tokenizer, param_counts, tokenizer_to_json

    sweep.task.check()
    tokenizer_json, vocab = None, None
    if any(m.is_preset for m in sweep.models):
        # One tokenizer for the whole ladder, trained on the task's text, shipped to every worker.
        tokenizer = build_tokenizer(t for e in sweep.task.examples("train") for t in (e.prompt, e.completion))
        tokenizer_json, vocab = tokenizer_to_json(tokenizer), len(tokenizer)
    model_params = {}
    for m in sweep.models:
        resolved = sweep.resolve({"model": m.id})
        # Counting with LoRA also checks that its targets match this model's layers.
        total, _ = param_counts(m, vocab if m.is_preset else None, sweep.lora(resolved))
        model_params[m.id] = total
    return model_params, tokenizer_json


def run(sweep: Sweep, storage: str | None = None, name: str | None = None, *, resume: bool = False,
        ray_address: str | None = None, sweep_file: str | None = None) -> str:
    """Run (or resume) a sweep; returns the run folder."""
    storage = storage or sweep.storage
    name = name or sweep.name
    run_dir = _join(storage, name)
    local = "://" not in storage
    if local:
        storage = os.path.abspath(storage)
        run_dir = os.path.join(storage, name)
        _check_writable(storage, field="storage")
        if not resume and os.path.exists(os.path.join(run_dir, RUN_FILE)):
            raise FtrayInputError(
                f"a sweep run already exists at {run_dir}: resume it with `ftray resume {run_dir}`, "
                "or choose another --name"
            )

    model_params, tokenizer_json = prepare(sweep)

    import ray
    from ray import tune

    from ftray.tracking import WandbTracking

    _init_ray(ray_address)
    try:
        resources = plan_resources(sweep, ray.cluster_resources())
    except FtrayInputError:
        ray.shutdown()
        raise
    print(
        f"ftray: {sweep.num_trials} trials, {resources.max_concurrent_trials} at a time; each trial "
        f"{sweep.workers} Train workers x {resources.cpus_per_worker:g} CPU"
        + (f" x {sweep.gpus_per_worker:g} GPU" if sweep.gpus_per_worker else "")
        + f"; cluster {_fmt_resources(resources.cluster)}",
        flush=True,
    )
    if local:
        os.makedirs(run_dir, exist_ok=True)
        if sweep_file and not resume:
            shutil.copyfile(sweep_file, os.path.join(run_dir, SWEEP_COPY))
        _write_json(os.path.join(run_dir, RUN_FILE), {
            "sweep": sweep.describe(), "objective": {"metric": sweep.objective, "mode": sweep.mode},
            "model_params": model_params, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "resources": {"cpus_per_worker": resources.cpus_per_worker,
                          "max_concurrent_trials": resources.max_concurrent_trials},
        })

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep, run_dir=run_dir, tokenizer_json=tokenizer_json,
                             cpus_per_worker=resources.cpus_per_worker),
        {"cpu": TRIAL_DRIVER_CPU},
    )
    callbacks = [WandbTracking(sweep.wandb, group=name, model_params=model_params)]
    run_config = tune.RunConfig(name=name, storage_path=storage, callbacks=callbacks, verbose=1)
    if resume:
        tuner = tune.Tuner.restore(run_dir, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=None if sweep.search == "optuna" else _random_space(sweep, model_params),
            tune_config=tune.TuneConfig(
                metric=sweep.objective, mode=sweep.mode, num_samples=sweep.num_trials,
                search_alg=_searcher(sweep, model_params), scheduler=_scheduler(sweep),
                max_concurrent_trials=resources.max_concurrent_trials,
            ),
            run_config=run_config,
        )
    tuner.fit()
    return run_dir


def _searcher(sweep: Sweep, model_params):
    if sweep.search != "optuna":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=sweep.seed)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=min(10, max(2, sweep.num_trials // 3)))
    return OptunaSearch(space=DefineByRun(sweep, model_params), sampler=sampler)


def _random_space(sweep: Sweep, model_params) -> dict:
    from ray import tune

    space = dict(sweep.space)
    space["model_params"] = tune.sample_from(lambda spec: model_params[spec.config["model"]])
    return space


def _scheduler(sweep: Sweep):
    if sweep.asha is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="step", metric=sweep.asha.metric or sweep.objective, mode=sweep.mode if not sweep.asha.metric else None,
        grace_period=sweep.asha.grace_steps, reduction_factor=sweep.asha.reduction_factor,
        max_t=sweep.steps or 10**9,
    )


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Inside `ray job submit` RAY_ADDRESS points at the cluster: join it. Without one, start a
    # local Ray sized to this machine.
    kwargs: dict[str, Any] = {"address": address} if address else {}
    ray.init(log_to_driver=True, logging_level="WARNING", **kwargs)


def _check_writable(path: str, field: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".ftray-write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise FtrayInputError(f"{field} {path!r} cannot be written: {e.strerror}") from None


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)  # a crash mid-write never leaves a half file


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if "://" in base else os.path.join(base, *parts)


def _fmt_resources(r: Mapping[str, float]) -> str:
    return ", ".join(f"{r[k]:g} {k}" for k in ("CPU", "GPU") if k in r) or "no resources"


def resume(run_dir: str, ray_address: str | None = None) -> str:
    """Go on with a sweep run from its folder: finished trials stay, unfinished ones continue."""
    from ftray.sweep import load_sweep

    run_dir = os.path.abspath(run_dir)
    if not os.path.isfile(os.path.join(run_dir, RUN_FILE)):
        raise FtrayInputError(f"{run_dir} is not an ftray run folder (no {RUN_FILE})")
    sweep = load_sweep(os.path.join(run_dir, SWEEP_COPY))
    return run(sweep, storage=os.path.dirname(run_dir), name=os.path.basename(run_dir), resume=True,
               ray_address=ray_address)
