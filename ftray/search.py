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
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Mapping

from ftray import storage as st
from ftray.errors import FtrayInputError
from ftray.report import RUN_FILE
from ftray.sweep import Sweep, diff_descriptions

# The idle trial driver (it only waits on its Train workers) counts as this many CPUs, so a
# 2-worker trial fits on 2 cores instead of needing 3 and hanging.
TRIAL_DRIVER_CPU = 0.01
# Below this a worker shares its core with too many others to be worth starting.
MIN_CPUS_PER_WORKER = 0.25
SWEEP_COPY = "sweep.py"  # the sweep file as run, so `ftray resume` needs nothing else


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
    if cpw < MIN_CPUS_PER_WORKER:
        raise FtrayInputError(
            f"workers: a trial of {biggest} workers needs at least {biggest * MIN_CPUS_PER_WORKER:g} CPUs "
            f"({MIN_CPUS_PER_WORKER} per worker), but the cluster has {cpus:g}: lower `workers`"
        )
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


def _trial_shapes(sweep: Sweep, resources: Resources) -> str:
    """"2 Train workers x 1 CPU", or one such per distinct shape when model rungs override it."""
    shapes = sorted({(sweep.workers_for(m), sweep.gpus_for(m)) for m in _models_in_space(sweep)})
    return " or ".join(f"{w} Train worker{'s' * (w > 1)} x {resources.cpus_per_worker:g} CPU" + (f" x {g:g} GPU" if g else "")
                       for w, g in shapes)


def local_resources() -> dict[str, float]:
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # a broken CUDA install still runs on CPU
        pass
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


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
        self.round_robin = sweep.model_sampling == "round-robin"

    def __call__(self, trial) -> dict:
        out: dict[str, Any] = {}
        if "model" in self.distributions and self.round_robin:
            choices = self.distributions["model"].choices
            model = choices[trial.number % len(choices)]
        elif "model" in self.distributions:
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


def train_env(local: bool) -> dict[str, str]:
    """Ray Train settings for the trials (Train passes them on from a trial's driver to its controller
    and workers), where the user has not set them:

    - the controller checks on its workers every 0.5 s instead of 2 s: a trial otherwise idles up to
      2 s before its end is noticed, then again while its workers shut down;
    - on a local Ray, no preemption watcher: one machine is never drained, and the watcher is one more
      actor process to start per trial.
    Measured on 2 CPUs (2026-11-24): about 6 s less per trial.
    """
    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    if local:
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    return {k: v for k, v in env.items() if k not in os.environ}


def run_trial(config: dict, sweep: Sweep, run_dir: str, tokenizer_json: str | None, cpus_per_worker: float,
              env: Mapping[str, str] | None = None) -> None:
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
        objective=sweep.objective, eval_base=sweep.eval_base, tokenizer_json=tokenizer_json if rung.is_preset else None,
        threads=max(1, int(cpus_per_worker)), extra=_injected_faults(resolved["model"]),
    )
    per_worker = {"CPU": cpus_per_worker}
    if gpus:
        per_worker["GPU"] = gpus
    trial_id = tune.get_context().get_trial_id()
    os.environ.update(env or {})

    def trainer(restarts: int) -> TorchTrainer:
        # The same run name and storage each time: Train finds the trial's checkpoints and the
        # workers go on from the latest one.
        return TorchTrainer(
            train_loop,
            train_loop_config={"spec": spec, "restarts": restarts, "launched_at": time.time()},
            torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=bool(gpus),
                                                   resources_per_worker=per_worker),
            run_config=ray.train.RunConfig(
                name=trial_id,
                storage_path=st.join(run_dir, "checkpoints"),
                callbacks=[TuneReportCallback()],
                checkpoint_config=ray.train.CheckpointConfig(
                    num_to_keep=sweep.keep_checkpoints,
                    checkpoint_score_attribute=sweep.objective,
                    checkpoint_score_order=sweep.mode,
                ),
                # ftray decides about retries itself (below): a lost worker is worth a restart, a bug
                # or an out-of-memory is not.
                failure_config=ray.train.FailureConfig(max_failures=0),
            ),
        )

    for restarts in range(sweep.max_restarts + 1):
        try:
            trainer(restarts).fit()
            return
        except ray.train.TrainingFailedError as e:
            kind, message = classify_failure(e)
            if kind == "did-not-fit":
                # Not an error of the sweep: this model and batch do not fit this hardware. Say so
                # in the results (the report lists it) and let the sweep go on.
                tune.report({"did_not_fit": 1, "did_not_fit_reason": message[:500], "step": 0,
                             "restarts": restarts})
                return
            if kind != "lost-worker" or restarts == sweep.max_restarts:
                raise
            print(f"ftray: trial {trial_id}: {message}; restarting its workers from the latest checkpoint "
                  f"({restarts + 1}/{sweep.max_restarts})", flush=True)


def _injected_faults(model_id: str) -> dict:
    """Fault injection for ftray's own tests: FTRAY_INJECT='{"nan_at_step": 3, "model": "tiny-s"}'."""
    raw = os.environ.get("FTRAY_INJECT")
    if not raw:
        return {}
    faults = json.loads(raw)
    for f in faults if isinstance(faults, list) else [faults]:
        if f.get("model", model_id) == model_id:
            return f
    return {}


def _did_not_fit_errors():
    import torch

    from ftray.train import DidNotFitError

    return (DidNotFitError, torch.OutOfMemoryError, MemoryError)


def classify_failure(error: Exception) -> tuple[str, str]:
    """("lost-worker" | "did-not-fit" | "error", message) for a failed Train run.

    When one worker dies the others fail too, with collateral collective errors; one dead actor
    among the failures makes it a lost worker, which a restart from the checkpoint can fix.
    """
    from ray.exceptions import RayActorError

    failures = list(getattr(error, "worker_failures", {}).values()) or [error]
    text = "\n".join(str(f) for f in failures)
    if any(isinstance(f, _did_not_fit_errors()) or "OutOfMemoryError" in type(f).__name__ for f in failures) \
            or "CUDA out of memory" in text or "DidNotFitError" in text:
        return "did-not-fit", _last_line(text)
    if any(isinstance(f, RayActorError) for f in failures):
        return "lost-worker", "a Train worker was lost"
    if "ActorDiedError" in text or "actor died" in text.lower():
        return "lost-worker", "a Train worker was lost"
    return "error", _last_line(text)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def prepare(sweep: Sweep, hub_optional: bool = False) -> tuple[dict[str, int | None], str | None, list[str]]:
    """Driver-side work before Ray: check the data and models, count parameters, build the tokenizer.

    Returns total parameters per model, the tokenizer JSON for the offline presets, and notes on what
    could only be checked for form because the hub is out of reach (only with `hub_optional`).
    """
    from ftray.errors import HubUnavailable
    from ftray.models import build_tokenizer, param_counts, tokenizer_to_json

    notes: list[str] = []
    try:
        sweep.task.check()
        data_ok = True
    except HubUnavailable as e:
        if not hub_optional:
            raise
        notes.append(f"data not checked: {e}")
        data_ok = False
    tokenizer_json, vocab = None, None
    if data_ok and any(m.is_preset for m in sweep.models):
        # One tokenizer for the whole ladder, trained on the task's text, shipped to every worker.
        tokenizer = build_tokenizer(t for e in sweep.task.examples("train") for t in (e.prompt, e.completion))
        tokenizer_json, vocab = tokenizer_to_json(tokenizer), len(tokenizer)
    model_params: dict[str, int | None] = {}
    for m in sweep.models:
        resolved = sweep.resolve({"model": m.id})
        try:
            # Counting with LoRA also checks that its targets match this model's layers.
            model_params[m.id] = param_counts(m, vocab if m.is_preset else None, sweep.lora(resolved))[0]
        except HubUnavailable as e:
            if not hub_optional:
                raise
            notes.append(f"{m.id}: id checked for form only (no hub here)")
            model_params[m.id] = None
    return model_params, tokenizer_json, notes


def run(sweep: Sweep, storage: str | None = None, name: str | None = None, *, resume: bool = False,
        new_run: bool = False, resume_errored: bool = False, restart_errored: bool = False,
        ray_address: str | None = None, sweep_file: str | None = None) -> str:
    """Run a sweep, or go on with it when its run folder already holds the same sweep; returns the folder.

    A run folder holding a *different* sweep definition is never mixed with this one: that is refused
    with what changed, unless `new_run` asks for a fresh folder (name-2, name-3, ...).
    """
    raw_storage = storage or sweep.storage
    if not st.is_uri(raw_storage) and not os.path.isabs(os.path.expanduser(raw_storage)) \
            and "runtime_resources" in os.getcwd():
        # Inside `ray job submit` the working directory is Ray's unpacked copy of --working-dir.
        print(f"ftray: warning: storage {raw_storage!r} is relative, so results go into the job's copy of its "
              f"working directory ({os.getcwd()}), which Ray may delete; pass --storage with an absolute path "
              "on shared storage or a URI (s3://...)", flush=True)
    storage = st.normalize(raw_storage)
    name = name or sweep.name
    st.check_writable(storage, field="storage")
    run_dir = st.join(storage, name)
    previous = _read_run_file(run_dir)
    if previous is not None:
        changes = diff_descriptions(previous.get("sweep", {}), sweep.describe())
        if changes and new_run:
            name = _free_name(storage, name)
            run_dir, previous = st.join(storage, name), None
        elif changes:
            raise FtrayInputError(
                f"{run_dir} holds a run of a different sweep definition, so it cannot be resumed with this one. "
                f"Changed: {'; '.join(changes[:8])}{' ...' if len(changes) > 8 else ''}. "
                "Use --name for another run folder, or --new-run to get one"
            )
        else:
            resume = True
    elif resume:
        raise FtrayInputError(f"{run_dir} is not an ftray run folder (no {RUN_FILE})")

    print(f"ftray: checking sweep {sweep.name!r}: data, models and LoRA targets, parameter counts", flush=True)
    model_params, tokenizer_json, _ = prepare(sweep)
    if not (ray_address or os.environ.get("RAY_ADDRESS")):
        # A local Ray gets this machine's CPUs and GPUs: a trial that cannot fit fails here, before
        # anything starts. (On a cluster the check runs once connected, against its resources.)
        plan_resources(sweep, local_resources())

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
        f"ftray: {'resuming' if resume else 'starting'} sweep {sweep.name!r} in {run_dir}: {sweep.num_trials} trials, "
        f"{resources.max_concurrent_trials} at a time; each trial {_trial_shapes(sweep, resources)}"
        f"; cluster {_fmt_resources(resources.cluster)}",
        flush=True,
    )
    record = previous or {
        "sweep": sweep.describe(), "objective": {"metric": sweep.objective, "mode": sweep.mode},
        "model_params": model_params, "workers": {m.id: sweep.workers_for(m.id) for m in sweep.models},
        "gpus_per_worker": {m.id: sweep.gpus_for(m.id) for m in sweep.models},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed": [],
        "sweep_file": os.path.abspath(sweep_file) if sweep_file else None,
    }
    if previous is not None:
        record.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%S"))
    record["resources"] = {"cpus_per_worker": resources.cpus_per_worker,
                           "max_concurrent_trials": resources.max_concurrent_trials}
    st.write_text(st.join(run_dir, RUN_FILE), json.dumps(record, indent=2))
    if sweep_file and previous is None:
        with open(sweep_file) as f:
            st.write_text(st.join(run_dir, SWEEP_COPY), f.read())

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep, run_dir=run_dir, tokenizer_json=tokenizer_json,
                             cpus_per_worker=resources.cpus_per_worker,
                             env=train_env(local=not (ray_address or os.environ.get("RAY_ADDRESS")))),
        {"cpu": TRIAL_DRIVER_CPU},
    )
    callbacks = [WandbTracking(sweep.wandb, group=name, model_params=model_params)]
    run_config = tune.RunConfig(name=name, storage_path=storage, callbacks=callbacks, verbose=1)
    if resume and tune.Tuner.can_restore(run_dir):
        # Finished trials stay finished; unfinished ones go on from their latest checkpoints; the
        # searcher and scheduler come back with the state they had.
        tuner = tune.Tuner.restore(run_dir, trainable, resume_unfinished=True, resume_errored=resume_errored,
                                   restart_errored=restart_errored)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=None if sweep.search == "optuna" else _random_space(sweep, model_params),
            tune_config=tune.TuneConfig(
                metric=sweep.objective, mode=sweep.mode, num_samples=sweep.num_trials,
                search_alg=_searcher(sweep, model_params, resources.max_concurrent_trials), scheduler=_scheduler(sweep),
                max_concurrent_trials=resources.max_concurrent_trials,
                # Trial drivers all ask for the same resources: one process serves trial after trial
                # (measured: about 2.5 s less between trials on 2 CPUs). Not with ASHA: a trial it stops
                # must take its Train run down with it, and only ending its driver's process does that
                # (a reused driver would wait on the still-running run, and the next trial with it).
                reuse_actors=sweep.asha is None,
            ),
            run_config=run_config,
        )
    # A trial that stops without the objective (diverged, did not fit) is a result, not an error:
    # Optuna is told it was pruned, and the report lists why.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    tuner.fit()
    return run_dir


def _read_run_file(run_dir: str) -> dict | None:
    path = st.join(run_dir, RUN_FILE)
    if not st.is_file(path):
        return None
    try:
        return json.loads(st.read_text(path))
    except json.JSONDecodeError:
        raise FtrayInputError(f"{path} is not valid JSON: the run folder is damaged") from None


def _free_name(storage: str, name: str) -> str:
    i = 2
    while st.exists(st.join(storage, f"{name}-{i}")):
        i += 1
    return f"{name}-{i}"


def _searcher(sweep: Sweep, model_params, max_concurrent: int):
    if sweep.search != "optuna":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Tune ignores TuneConfig.max_concurrent_trials for a generator passed in: set it here.
        return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=max_concurrent)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=min(10, max(2, sweep.num_trials // 3)))
    return OptunaSearch(space=DefineByRun(sweep, model_params), metric=sweep.objective, mode=sweep.mode, sampler=sampler)


def _random_space(sweep: Sweep, model_params) -> dict:
    from ray import tune

    space = dict(sweep.space)
    space["model_params"] = tune.sample_from(lambda spec: model_params[spec.config["model"]])
    return space


def _scheduler(sweep: Sweep):
    if sweep.asha is None:
        return None
    from ftray.schedulers import PerModelASHA
    from ftray.sweep import default_mode

    metric = sweep.asha.metric or sweep.objective
    return PerModelASHA(
        metric=metric, mode=default_mode(metric) if sweep.asha.metric else sweep.mode,
        grace_period=sweep.asha.grace_steps, reduction_factor=sweep.asha.reduction_factor,
        max_t=sweep.steps or 10**9, per_model=sweep.asha.per_model,
    )


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Inside `ray job submit` RAY_ADDRESS points at the cluster: join it. Without one, start a
    # local Ray sized to this machine.
    # A local Ray runs its workers at the same priority as everything else (Ray's default is nice 15):
    # with the workers niced, every wake-up of Ray's own daemons (raylet, GCS, dashboard, log monitor,
    # the sweep's driver) preempts a Train worker, and its DDP peers wait for it at the next all-reduce.
    # On 2 CPUs (2026-11-25) bench/run.py's step ratio against bare DDP was 1.10-1.12 before, 1.06 and 1.17
    # after: within run-to-run spread, so not shown either way (see README, Benchmarks).
    # A cluster's Ray is started by `ray start` and keeps its own setting.
    # The dashboard stays on, though it takes ~2.6% of a core from training: Ray Train's
    # PlacementGroupCleaner asks its state API whether a trial's controller still lives, and without
    # it a trial stopped by ASHA kept its placement group, so the next trial waited forever (2026-11-25).
    kwargs: dict[str, Any] = {"address": address} if address else {"_system_config": {"worker_niceness": 0}}
    ray.init(log_to_driver=True, logging_level="WARNING", **kwargs)
    if address:
        print(f"ftray: joined the Ray cluster at {address}", flush=True)
    else:
        print("ftray: started a local Ray (set RAY_ADDRESS or --address to use a cluster)", flush=True)


def _fmt_resources(r: Mapping[str, float]) -> str:
    return ", ".join(f"{r[k]:g} {k}" for k in ("CPU", "GPU") if k in r) or "no resources"


def sweep_of_run(run_dir: str) -> Sweep:
    """The sweep a run folder was made by: its file where it still is, else the copy in the folder."""
    from ftray.sweep import load_sweep

    record = _read_run_file(run_dir)
    if record is None:
        raise FtrayInputError(f"{run_dir} is not an ftray run folder (no {RUN_FILE})")
    original = record.get("sweep_file")
    if original and os.path.isfile(original):
        # The file itself, so paths it computes from its own location still hold.
        return load_sweep(original)
    # Another machine: the copy kept in the run folder.
    with tempfile.TemporaryDirectory() as tmp:
        sweep_path = os.path.join(tmp, SWEEP_COPY)
        with open(sweep_path, "w") as f:
            f.write(st.read_text(st.join(run_dir, SWEEP_COPY)))
        return load_sweep(sweep_path)


def prune_checkpoints(run: dict) -> list[str]:
    """Delete the checkpoints of trials off the frontier (whole-sweep checkpoints fill disks)."""
    keep = set(run["frontier"])
    removed = []
    for t in run["trials"]:
        if t["id"] not in keep and t["status"] != "RUNNING":
            path = st.join(run["run_dir"], "checkpoints", t["id"])
            if st.exists(path):
                st.remove_tree(path)
                removed.append(t["id"])
    return removed


def resume(run_dir: str, ray_address: str | None = None, resume_errored: bool = False,
           restart_errored: bool = False) -> str:
    """Go on with a sweep run from its folder: finished trials stay, unfinished ones continue."""
    run_dir = st.normalize(run_dir)
    sweep = sweep_of_run(run_dir)
    return run(sweep, storage=st.dirname(run_dir), name=st.basename(run_dir), resume=True,
               sweep_file=_read_run_file(run_dir).get("sweep_file"), resume_errored=resume_errored,
               restart_errored=restart_errored, ray_address=ray_address)
