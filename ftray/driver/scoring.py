"""Scoring saved adapters again: held-out test rows at a sweep's end (and `ftray report --rescore`),
`ftray eval RUN_DIR --data FILE` on new rows of the task.

A checkpoint carries what it needs to be evaluated anywhere: the adapter, the tokenizer and the
trial's settings (trial_config.json). The base model comes from the ladder rung (for a preset: built
from its config with the trial's seed, exactly as it was trained).

Each trial is scored by a Ray task holding one worker's resources of its rung (its GPU, or its share
of one, where the rung has one: resources.worker_resources), in the precision it trained in
(models.base_dtype), with batched generation (evaluate.generate); as many trials at once as the
cluster fits. The driver writes each trial's scores as its task completes, so a failure later loses
none of them. Outside a sweep, Ray is started for it (RAY_ADDRESS's cluster, else a local Ray).
`score_checkpoint` is the same scoring in this process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

from ftray import storage as st
from ftray.driver.raystart import init_ray
from ftray.spec.config import TrialConfig
from ftray.errors import FtrayInputError, ScoringFailed
from ftray.results.frontier import trial_front
from ftray.results.trialresult import TrialResult

if TYPE_CHECKING:
    from ftray.results.report import LoadedRun
    from ftray.train.evaluate import Scores
    from ftray.spec.ladder import ModelSpec
    from ftray.tasks.base import Example, Task

SCORE_BATCH = 16  # rows per forward pass and per generate() call
Log = Callable[[str], None]


def to_stdout(line: str) -> None:
    print(line, flush=True)


def to_stderr(line: str) -> None:
    """For commands whose stdout is their result (`--json`)."""
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ScoringJob:
    """One trial's adapter to score, as its Ray task gets it (the rows travel once, beside the jobs)."""

    trial_id: str
    model: ModelSpec  # the ladder rung it was trained on
    checkpoint: str  # a local folder or a URI without credentials (those stay in the environment)
    task: Task
    resources: Mapping[str, float]  # {"CPU": n[, "GPU": g]}: what the task holds
    batch_size: int = SCORE_BATCH


@dataclass(frozen=True)
class ScoredTrial:
    trial_id: str
    scores: Scores
    seconds: float  # loading the adapter and scoring it, in its task
    device: str  # "cpu" or "cuda"


def load_adapter(checkpoint: str, rung, device: str = "cpu"):
    """(model with its adapter, tokenizer, TrialConfig) from a local checkpoint folder, the base in the
    dtype the trial trained in on this device."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from ftray.train.lora import adapters_to_fp32, peft_quietly
    from ftray.train.models import base_dtype, build_model
    from ftray.train.recipe import TRIAL_CONFIG

    device = torch.device(device)
    with open(os.path.join(checkpoint, TRIAL_CONFIG)) as f:
        config = TrialConfig.from_dict(json.load(f))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    base = build_model(rung, tokenizer, seed=config.seed, dtype=base_dtype(device))
    with peft_quietly():
        model = PeftModel.from_pretrained(base, checkpoint)
    if device.type == "cuda":
        adapters_to_fp32(model)  # as the trial trained: fp32 adapter (trained embeddings too) over a bf16 base
    return model.to(device), tokenizer, config


def score_checkpoint(checkpoint: str, task, rung, examples, batch_size: int = SCORE_BATCH,
                     device: str = "cpu") -> Scores:
    """The task's metrics (and per-row parts) for the adapter in `checkpoint` (local or a URI) on
    `examples`, in this process on `device` (bf16 autocast on a GPU, as in training)."""
    import torch

    from ftray.train.evaluate import score
    from ftray.train.models import autocast

    device = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, config = load_adapter(st.local_copy(checkpoint, tmp), rung, device)
        return score(model=model, tokenizer=tokenizer, task=task, examples=examples, batch_size=batch_size,
                     max_length=config.max_length, max_new_tokens=config.max_new_tokens,
                     prompt_format=config.prompt_format, device=device, autocast=autocast(device))


def threads_for(resources: Mapping[str, float]) -> int:
    """Torch threads for a task holding these resources: its whole CPUs (at least one)."""
    return max(1, int(resources.get("CPU", 1)))


def run_job(job: ScoringJob, examples: Sequence[Example]) -> ScoredTrial:
    """The body of a scoring task: on the GPU Ray gave it, else its CPUs."""
    import gc

    import ray
    import torch

    from ftray.train.recipe import TRIAL_CONFIG

    if not st.exists(st.join(job.checkpoint, TRIAL_CONFIG)):
        raise FtrayInputError(f"trial {job.trial_id}: its checkpoint {st.redact(job.checkpoint)} is gone (no "
                              f"{TRIAL_CONFIG} there), so it cannot be scored")
    # Ray set CUDA_VISIBLE_DEVICES to its GPU; a logical GPU on a machine without CUDA scores on the CPU,
    # as a trial trains there (trial.py).
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    torch.set_num_threads(threads_for(job.resources))
    started = time.time()
    try:
        scores = score_checkpoint(job.checkpoint, job.task, job.model, examples, job.batch_size, device)
    finally:
        gc.collect()  # Ray may give this worker process the next task: the model goes now
        if device == "cuda":
            torch.cuda.empty_cache()
    return ScoredTrial(job.trial_id, scores, time.time() - started, device)


def score_on_ray(jobs: Sequence[ScoringJob], examples: Sequence[Example],
                 on_scored: Callable[[ScoredTrial], None] | None = None) -> list[ScoredTrial]:
    """Each job as a Ray task holding its resources, as many at once as the cluster fits (Ray must be
    running); `on_scored` is called on the driver as each completes, in the order they complete.

    A failed task does not stop the others: theirs are still handed to `on_scored`, then the first
    failure is raised: a missing checkpoint as FtrayInputError naming the trial, anything else as
    ScoringFailed (the task's traceback as its cause).
    """
    import ray

    # A task holding a GPU runs in a worker process of its own (max_calls=1, which only ray.remote sets):
    # a reused process keeps the CUDA state of the GPU it first saw, not the one Ray gives it next.
    cpu_task, gpu_task = ray.remote(run_job), ray.remote(max_calls=1)(run_job)
    rows = ray.put(list(examples))  # once into the object store, not once per task
    pending = {(gpu_task if job.resources.get("GPU") else cpu_task)
               .options(num_cpus=job.resources.get("CPU", 1), num_gpus=job.resources.get("GPU", 0),
                        name=f"ftray-score-{job.trial_id}").remote(job, rows): job for job in jobs}
    done: list[ScoredTrial] = []
    failures: list[Exception] = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayError as e:
            failures.append(_failure(job, e))
            continue
        done.append(result)
        if on_scored is not None:
            on_scored(result)
    if failures:
        raise failures[0]
    return done


def _failure(job: ScoringJob, error: Exception) -> Exception:
    """The user-facing error of a failed scoring task."""
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the task's own exception
    if isinstance(cause, FtrayInputError):
        return cause
    text = str(cause).strip().splitlines()
    failed = ScoringFailed(f"trial {job.trial_id} ({job.model.id}): scoring failed: {type(cause).__name__}"
                           + (f": {text[-1][:300]}" if text else ""))
    failed.__cause__ = error
    return failed


def scoring_resources(sweep, model_id: str, cluster: Mapping[str, float], log: Log | None) -> dict[str, float]:
    """What a trial's scoring task holds: one worker's resources of its rung, the CPUs a sweep gives a
    worker (`cpus_per_worker`, else one). A rung with a GPU on a cluster without one is scored on CPU
    (in fp32), with a note: today's behaviour, rather than a task no node can ever take."""
    from ftray.driver.resources import worker_resources

    cpus = float(cluster.get("CPU", 1))
    need = worker_resources(sweep, model_id, sweep.scaling.cpus_per_worker or min(1.0, cpus))
    if need.get("GPU", 0) > float(cluster.get("GPU", 0)):
        if log:
            log(f"ftray: note: the Ray cluster has no GPU for {model_id!r} (its rung asks for {need['GPU']:g}): "
                "scoring it on CPU in fp32, not in the bf16 it trained in (--address or RAY_ADDRESS: a cluster with GPUs)")
        need.pop("GPU")
    if need["CPU"] > cpus:  # a run made on a bigger cluster, scored here: a task no node could take waits forever
        if log:
            log(f"ftray: note: {model_id!r} trained with {need['CPU']:g} CPUs a worker; this Ray has {cpus:g}: scoring "
                f"with {cpus:g}")
        need["CPU"] = cpus
    return need


@contextlib.contextmanager
def ray_running(log: Log | None, address: str | None = None) -> Iterator[None]:
    """Ray for scoring: the one this process already runs (a sweep's), else the cluster at `address` (or
    RAY_ADDRESS) or a local Ray started as a sweep starts one (raystart.init_ray), without the dashboard
    (only Ray Train's trials need it); a Ray started here is shut down after."""
    import ray

    if ray.is_initialized():
        yield
        return
    said = io.StringIO()
    with contextlib.redirect_stdout(said):  # its "started a local Ray" line goes where this command logs
        init_ray(address, dashboard=False)
    if log and said.getvalue().strip():
        log(said.getvalue().strip())
    try:
        yield
    finally:
        ray.shutdown()


def _jobs(trials: Sequence[TrialResult], sweep, checkpoints: Mapping[str, str], log: Log | None,
          batch_size: int = SCORE_BATCH) -> list[ScoringJob]:
    import ray

    cluster = ray.cluster_resources()
    need = {m: scoring_resources(sweep, m, cluster, log) for m in dict.fromkeys(t.model for t in trials)}
    return [ScoringJob(trial_id=t.id, model=sweep.model(t.model), checkpoint=checkpoints[t.id],
                       task=sweep.task, resources=need[t.model], batch_size=batch_size) for t in trials]


def _shippable_checkpoints(trials: Sequence[TrialResult]) -> dict[str, str]:
    """Each trial's checkpoint URI with its credentials moved into this process's environment: called
    before Ray starts, so a local Ray's workers inherit them and no task argument carries them."""
    return {t.id: st.without_credentials(t.checkpoint) for t in trials}


def _progress(log: Log | None, trials: Sequence[TrialResult], metric: str, n: int) -> Callable[[ScoredTrial], None]:
    models = {t.id: t.model for t in trials}

    def say(result: ScoredTrial) -> None:
        if log:
            m = result.scores.metrics
            first = [metric] if metric in m else []
            values = ", ".join(f"{k} {m[k]:.4g}" for k in first + [k for k in m if k != metric])
            log(f"ftray: scored trial {result.trial_id} ({models[result.trial_id]}, {n} rows) in "
                f"{result.seconds:.1f} s on {result.device}: {values}")
    return say


def _score(trials: Sequence[TrialResult], sweep, examples: Sequence[Example], what: str, log: Log | None,
           ray_address: str | None, metric: str, on_scored: Callable[[ScoredTrial], None] | None = None,
           batch_size: int = SCORE_BATCH) -> list[ScoredTrial]:
    """The trials' adapters scored on `examples` as Ray tasks (Ray started for it where none runs), each
    handed to `on_scored` as it completes and its progress logged; `what` names the rows in the log."""
    shipped = _shippable_checkpoints(trials)
    progress = _progress(log, trials, metric, len(examples))

    def done(result: ScoredTrial) -> None:
        if on_scored is not None:
            on_scored(result)
        progress(result)

    with ray_running(log, ray_address):
        jobs = _jobs(trials, sweep, shipped, log, batch_size)
        if log:
            log(f"ftray: scoring {len(trials)} {what} as Ray tasks: {_shapes(jobs)}")
        return score_on_ray(jobs, examples, on_scored=done)


def score_held_out(run: LoadedRun, sweep, log: Log | None = to_stdout, ray_address: str | None = None) -> int:
    """Score every finished trial's adapter on the task's held-out test rows; returns how many were scored.

    The report's headline numbers then rest on rows that neither training nor selection saw (the
    validation rows chose the best trials, so their scores lean optimistic). A trial already scored
    on the same checkpoint and rows is not scored again. At most `test_samples` rows: a seeded subset of
    the split, the same for every trial, so their scores pair up row by row. Each trial's scores are
    written as its task completes.
    """
    from ftray.results import runfolder as rf
    from ftray.train.data import nested_subset
    from ftray.errors import HubUnavailable

    n = sweep.trial.test_samples
    try:
        split = sweep.task.examples("test") if n else []
    except HubUnavailable:
        split = []
    todo = [t for t in run.trials if t.objective is not None and t.checkpoint]
    if not split or not todo:
        return 0
    examples = [split[i] for i in nested_subset(len(split), min(1.0, n / len(split)), seed=0)]
    todo = [t for t in todo if (old := rf.read_test_scores(t.trial_dir)) is None
            or (old.checkpoint, old.n) != (t.checkpoint, len(examples))]
    if not todo:
        return 0
    by_id = {t.id: t for t in todo}

    def write(result: ScoredTrial) -> None:
        t = by_id[result.trial_id]
        rf.write_test_scores(t.trial_dir, rf.TestScores(result.scores.metrics, result.scores.rows, len(examples),
                                                        len(split), t.checkpoint))

    _score(todo, sweep, examples, f"trials on {len(examples)} held-out test rows (of {len(split)})", log,
           ray_address, sweep.objective, on_scored=write)
    return len(todo)


def _shapes(jobs: Sequence[ScoringJob]) -> str:
    """"1 CPU each" or, per distinct request, "1 CPU x 1 GPU (tiny-s)"."""
    from ftray.driver.resources import fmt_resources

    shapes: dict[str, list[str]] = {}
    for job in jobs:
        shapes.setdefault(fmt_resources(job.resources), []).append(job.model.id)
    if len(shapes) == 1:
        return f"{next(iter(shapes))} each"
    return "; ".join(f"{shape} ({', '.join(sorted(set(models)))})" for shape, models in shapes.items())


def rescore(run_dir: str, data_file: str, batch_size: int = SCORE_BATCH, log: Log | None = to_stderr,
            ray_address: str | None = None) -> dict:
    """The frontier trials of a run scored on the rows of `data_file`, and the front they make now."""
    from ftray.results.report import load_run
    from ftray.results.runfolder import sweep_of_run

    run = load_run(run_dir)
    sweep = sweep_of_run(run.run_dir)
    examples = sweep.task.examples_from_file(data_file)
    if not examples:
        raise FtrayInputError(f"{data_file} holds no rows")
    front = [t for t in run.trials if t.id in set(run.frontier)]
    if not front:
        raise FtrayInputError(f"{st.redact(run.run_dir)}: no trial is on the frontier, so there is nothing to score")
    for t in front:
        if not t.checkpoint:
            raise FtrayInputError(f"trial {t.id} has no checkpoint left to score")
    scored = {r.trial_id: r.scores.metrics
              for r in _score(front, sweep, examples, f"frontier trials on {len(examples)} rows of {data_file}", log,
                              ray_address, run.metric, batch_size=batch_size)}
    new_front = trial_front([replace(t, objective=scored[t.id][run.metric]) for t in front], run.mode)
    return {"run_dir": st.redact(run.run_dir), "data": os.path.abspath(data_file), "rows": len(examples),
            "objective": run.objective, "trials": [{"id": t.id, "model": t.model, "params": t.params, "old_objective": t.objective,
                                          "objective": scored[t.id][run.metric], "new_metrics": scored[t.id]}
                                         for t in front],
            "frontier_before": run.frontier, "frontier_after": new_front}


def format_rescore(result: dict) -> str:
    metric = result["objective"]["metric"]
    lines = [f"frontier trials of {result['run_dir']} scored on {result['data']} ({result['rows']} rows)",
             # The trial's validation score (what chose its checkpoint), then these rows'.
             f"{'trial':10} {'model':24} {'params':>10} {metric + ' (validation)':>20} {metric + ' (these rows)':>24}"]
    for t in result["trials"]:
        lines.append(f"{t['id']:10} {t['model']:24} {t['params']:>10,} {t['old_objective']:>20.4f} {t['objective']:>24.4f}"
                     + ("" if t["id"] in result["frontier_after"] else "   (off the front now)"))
    return "\n".join(lines)
