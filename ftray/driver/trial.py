"""One Tune trial: one TrialConfig trained, its retries, and its outcome.

A one-worker trial runs the recipe (ftray/train/recipe.py) in the Tune trial's own process. A larger one
drives a Ray Train run: a `TorchTrainer` whose workers run the recipe, with `TuneReportCallback`
forwarding rank 0's reports (and checkpoint path) to Tune; hyperparameters were sampled once on the
sweep's driver, so every worker trains the same configuration. How the trial ended is written into
its folder as a typed `TrialOutcome`: a lost Train worker is restarted from the latest checkpoint,
while a NaN loss, an out-of-memory or a bug in user code is recorded with its reason and not retried.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Mapping

from ftray.results import runfolder as rf
from ftray import storage as st
from ftray.errors import DidNotFitError, DivergedError
from ftray.spec.config import TrialConfig
from ftray.driver.resources import worker_resources


@dataclass(frozen=True)
class TrialSetup:
    """What the sweep's driver hands every trial (besides its sampled values)."""

    sweep: object  # ftray.spec.sweep.Sweep
    run_dir: str
    experiment_dir: str  # Tune's experiment folder: the run folder, or its confirm/ phase
    tokenizer_json: str | None
    cpus_per_worker: float
    env: Mapping[str, str]


def run_trial(sampled: dict, setup: TrialSetup) -> None:
    """The Tune trial function: train `sampled` (the sweep's defaults with these values replaced)."""
    from ray import tune

    sweep = setup.sweep
    config = sweep.trial_config(sampled)
    trial_id = tune.get_context().get_trial_id()
    trial_dir = st.join(setup.experiment_dir, os.path.basename(tune.get_context().get_trial_dir()))
    rf.write_trial(trial_dir, rf.TrialRecord(config))
    job = _job(config, setup, trial_id)
    if sweep.in_trial_process(config.model):
        outcome, error = _train_here(job, setup, trial_id, trial_dir)
    else:
        outcome, error = _train_on_workers(job, setup, trial_id, trial_dir)
    rf.write_trial(trial_dir, rf.TrialRecord(config, outcome))
    # Did-not-fit and diverged are not errors of the sweep: this model and batch do not fit this
    # hardware, or these settings diverge. The outcome says so, the report lists it, and the sweep goes on.
    if error is not None:
        raise error


def _train_here(job, setup: TrialSetup, trial_id: str, trial_dir: str) -> tuple[rf.TrialOutcome, Exception | None]:
    """A one-worker trial in this process (Sweep.in_trial_process): no Train worker group to start."""
    import gc

    import ray
    import torch

    from ftray.train.context import TuneTrialContext
    from ftray.train.recipe import run_recipe

    sweep, launched = setup.sweep, time.time()
    # Ray set CUDA_VISIBLE_DEVICES to the GPU it gave the trial. A logical GPU (`ray.init(num_gpus=1)` on a
    # machine without CUDA, as ftray's tests place trials) has none behind it: the trial trains on the CPU.
    on_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    ctx = TuneTrialContext(setup.run_dir, trial_id, keep=sweep.failure.keep_checkpoints, objective=sweep.objective,
                           mode=sweep.mode, device=device, recorded=rf.recorded_steps(trial_dir))
    try:
        run_recipe(job, ctx, launched_at=launched)
    except Exception as e:
        return _failed(e, restarts=0)
    finally:
        gc.collect()  # Tune may run the next trial in this process: the model goes now
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rf.TrialOutcome("ok"), None


def _train_on_workers(job, setup: TrialSetup, trial_id: str, trial_dir: str) -> tuple[rf.TrialOutcome, Exception | None]:
    """A Ray Train run of the trial's workers, restarted from the latest checkpoint after a lost worker."""
    import ray.train
    from ray import tune

    from ftray import raypatches

    max_restarts = setup.sweep.failure.max_restarts
    os.environ.update(setup.env)
    # A resumed trial goes on from Train's latest checkpoint: its report first, where Tune never had it.
    latest = raypatches.train_latest_checkpoint(rf.trial_checkpoints(setup.run_dir, trial_id))
    again = rf.unrecorded(latest and latest[0], rf.recorded_steps(trial_dir))
    if again is not None:
        tune.report(dict(again, checkpoint_path=st.fs_path(latest[1])))  # as Train's own reports name it
    restarts = 0
    while True:
        try:
            _trainer(job, setup, trial_id, restarts).fit()
            return rf.TrialOutcome("ok", None, restarts), None
        except ray.train.TrainingFailedError as e:
            kind, message = classify_failure(e)
            if kind != "lost-worker" or restarts == max_restarts:
                return _failed(e, restarts)
        restarts += 1
        print(f"ftray: trial {trial_id}: {message}; restarting its workers from the latest checkpoint "
              f"({restarts}/{max_restarts})", flush=True)


def _failed(error: Exception, restarts: int) -> tuple[rf.TrialOutcome, Exception | None]:
    """The outcome of a try that failed for good, and the error to raise after it is written (a bug's:
    Tune marks the trial ERROR with its traceback). A lost worker not restarted is an error too."""
    kind, message = classify_failure(error)
    kind = "error" if kind == "lost-worker" else kind
    return rf.TrialOutcome(kind, message, restarts), (error if kind == "error" else None)


def _job(config: TrialConfig, setup: TrialSetup, trial_id: str):
    from ftray.train.recipe import TrialJob

    sweep = setup.sweep
    rung = sweep.model(config.model)
    return TrialJob(config=config, task=sweep.task, model=rung, lora=sweep.lora(config),
                    tokenizer_json=setup.tokenizer_json if rung.is_preset else None,
                    threads=max(1, int(setup.cpus_per_worker)), faults=injected_faults(config.model),
                    objective=sweep.objective, trial_id=trial_id)


def _trainer(job, setup: TrialSetup, trial_id: str, restarts: int):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from ftray.train.recipe import train_loop

    sweep = setup.sweep
    workers, gpus = sweep.workers_for(job.model.id), sweep.gpus_for(job.model.id)
    per_worker = worker_resources(sweep, job.model.id, setup.cpus_per_worker)
    # The same run name and storage each time: Train finds the trial's checkpoints and the workers go
    # on from the latest one.
    return TorchTrainer(
        train_loop,
        train_loop_config={"job": job, "restarts": restarts, "launched_at": time.time()},
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=bool(gpus), resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=st.join(setup.run_dir, rf.CHECKPOINTS),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=sweep.failure.keep_checkpoints,
                checkpoint_score_attribute=sweep.objective,
                checkpoint_score_order=sweep.mode,
            ),
            # ftray decides about retries itself: a lost worker is worth a restart, a bug or an
            # out-of-memory is not.
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    )


def injected_faults(model_id: str) -> dict:
    """Fault injection for ftray's own tests: FTRAY_INJECT='{"nan_at_step": 3, "model": "tiny-s"}'."""
    raw = os.environ.get("FTRAY_INJECT")
    if not raw:
        return {}
    faults = json.loads(raw)
    for f in faults if isinstance(faults, list) else [faults]:
        if f.get("model", model_id) == model_id:
            return f
    return {}


def is_out_of_memory(error: BaseException) -> bool:
    """The one test for "did not fit": ftray's own error, torch's, the host's."""
    import torch

    return isinstance(error, (DidNotFitError, torch.OutOfMemoryError, MemoryError))


def classify_failure(error: Exception) -> tuple[str, str]:
    """("lost-worker" | "did-not-fit" | "diverged" | "error", message) for a failed Train run, or for the
    exception of a trial trained in its own process.

    When one Train worker dies the others fail too, with collateral collective errors; one dead actor
    among the failures makes it a lost worker, which a restart from the checkpoint can fix.
    """
    from ray.exceptions import RayActorError

    failures = list(getattr(error, "worker_failures", {}).values())
    # A Train run's failure text holds each worker's traceback; a trial trained in its own process
    # has the exception itself.
    text = "\n".join(str(f) for f in failures) if failures else f"{type(error).__name__}: {error}"
    causes = [c for f in failures or [error] for c in _causes(f)]
    if any(is_out_of_memory(c) for c in causes):
        return "did-not-fit", _reason(causes, text)
    if any(isinstance(c, DivergedError) for c in causes):
        return "diverged", _reason(causes, text)
    if any(isinstance(c, RayActorError) for c in causes):
        return "lost-worker", "a worker was lost"
    return "error", _last_line(text)


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what it wraps: Ray Train wraps a worker's exception (UserExceptionWithTraceback)
    and a dead worker (WorkerHealthCheckFailedError around a RayActorError) in its own types."""
    out, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        out.append(error)
        error = (getattr(error, "_base_exc", None) or getattr(error, "health_check_failure", None)
                 or getattr(error, "cause", None) or error.__cause__)
    return out


def _reason(causes: list[BaseException], text: str) -> str:
    """The message of ftray's own error among the causes, else the last line of the failure."""
    own = [c for c in causes if isinstance(c, (DidNotFitError, DivergedError))]
    return str(own[0])[:500] if own else _last_line(text)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "unknown error"
