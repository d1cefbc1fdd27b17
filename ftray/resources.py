"""What a trial needs, what the cluster has, and how many trials run at once."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

from ftray.errors import FtrayInputError

# The idle trial driver (it only waits on its Train workers) counts as this many CPUs, so a
# 2-worker trial fits on 2 cores instead of needing 3 and hanging.
TRIAL_DRIVER_CPU = 0.01
# Below this a worker shares its core with too many others to be worth starting.
MIN_CPUS_PER_WORKER = 0.25


@dataclass(frozen=True)
class Resources:
    cpus_per_worker: float
    max_concurrent_trials: int
    cluster: Mapping[str, float]


def plan_resources(sweep, cluster: Mapping[str, float]) -> Resources:
    """Size each trial from what the cluster has; refuse a trial that can never be placed."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    model_ids = sweep.models_in_space()
    biggest = max(sweep.workers_for(m) for m in model_ids)
    # One CPU per worker when the cluster has them, else share: a 2-worker trial on a 1-core laptop.
    cpw = sweep.scaling.cpus_per_worker or min(1.0, (cpus - TRIAL_DRIVER_CPU) / biggest)
    if cpw < MIN_CPUS_PER_WORKER:
        raise FtrayInputError(
            f"workers: a trial of {biggest} workers needs at least {biggest * MIN_CPUS_PER_WORKER:g} CPUs "
            f"({MIN_CPUS_PER_WORKER} per worker), but the cluster has {cpus:g}: lower `workers`"
        )
    per_trial_cpu = []
    per_trial_gpu = []
    for m in model_ids:
        w, g = sweep.workers_for(m), sweep.gpus_for(m)
        driver = 0.0 if sweep.in_trial_process(m) else TRIAL_DRIVER_CPU
        need_cpu = w * cpw + driver
        if need_cpu > cpus + 1e-9:
            raise FtrayInputError(
                f"a trial of {m!r} needs {w} workers x {cpw:g} CPUs" + (f" (+{driver} for its driver)" if driver else "")
                + f" = {need_cpu:g} CPUs, but the cluster has {cpus:g}: lower `workers` or `cpus_per_worker`"
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
    concurrent = max(1, min(fit, sweep.search.num_trials))
    if sweep.scaling.max_concurrent_trials:
        concurrent = min(concurrent, sweep.scaling.max_concurrent_trials)
    return Resources(cpw, concurrent, dict(cluster))


def worker_resources(sweep, model_id: str, cpus_per_worker: float) -> dict[str, float]:
    """What one worker of a trial of this model holds."""
    g = sweep.gpus_for(model_id)
    return {"CPU": cpus_per_worker, **({"GPU": g} if g else {})}


def trial_request(sweep, model_id: str, cpus_per_worker: float) -> dict[str, float]:
    """What Tune reserves for a trial of this model: its one worker when it trains in the Tune trial's
    own process, else its idle driver only (Ray Train reserves the workers)."""
    if not sweep.in_trial_process(model_id):
        return {"CPU": TRIAL_DRIVER_CPU}
    return worker_resources(sweep, model_id, cpus_per_worker)


def trial_shapes(sweep, resources: Resources) -> str:
    """"2 Train workers x 1 CPU", or one such per distinct shape when model rungs override it."""
    shapes = sorted({(sweep.workers_for(m), sweep.gpus_for(m), sweep.in_trial_process(m)) for m in sweep.models_in_space()})
    return " or ".join(("1 worker in its Tune trial" if here else f"{w} Train worker{'s' * (w > 1)}")
                       + f" x {resources.cpus_per_worker:g} CPU" + (f" x {g:g} GPU" if g else "")
                       for w, g, here in shapes)


def local_resources() -> dict[str, float]:
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # a broken CUDA install still runs on CPU
        pass
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


def fmt_resources(r: Mapping[str, float]) -> str:
    return ", ".join(f"{r[k]:g} {k}" for k in ("CPU", "GPU") if k in r) or "no resources"
