"""What a trial needs, what the cluster has, and how many trials run at once; whether a trial fits its
share of a GPU's memory."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

from ftray.errors import FtrayInputError
from ftray.train.steps import LOGITS_PER_CHUNK

# The idle trial driver (it only waits on its Train workers) counts as this many CPUs, so a
# 2-worker trial fits on 2 cores instead of needing 3 and hanging.
TRIAL_DRIVER_CPU = 0.01
# Below this a worker shares its core with too many others to be worth starting.
MIN_CPUS_PER_WORKER = 0.25
GIB = 2**30


def trials_per_gpu(gpus_per_worker: float) -> int:
    """How many one-worker trials asking for this fraction Ray places on one GPU (1 for whole GPUs)."""
    return max(1, math.floor(1 / gpus_per_worker + 1e-9)) if 0 < gpus_per_worker < 1 else 1


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
    fits = []
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
        fit = math.floor(cpus / need_cpu + 1e-9)
        if g:
            # A fraction is placed on one GPU, never split across two: 0.4 puts 2 trials on each GPU,
            # so 3 GPUs hold 6 such trials, not 7.
            fit = min(fit, math.floor(gpus + 1e-9) * trials_per_gpu(g) if g < 1 else math.floor(gpus / (w * g) + 1e-9))
        fits.append(fit)
    # Trials in their Tune trials' processes reserve all they use through Tune, which holds back a trial
    # until its resources are free: as many at once as the smallest rung's trials fit (four quarter-GPU
    # trials beside a whole-GPU rung). A Train run reserves only its idle driver through Tune, so Tune
    # cannot hold it back: then only as many as the largest trials fit, or the rest wait on Train forever.
    fit = max(fits) if all(sweep.in_trial_process(m) for m in model_ids) else min(fits)
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


# ---- GPU memory: does a trial fit its share of a GPU? ---------------------------------------------------
# The constants below were fitted on an H200 (bench/gpu_memory.py, bench/results/gpu-memory-*.json): peak
# memory is linear in a micro-batch's tokens, 3.53 MB a token at Qwen2.5-0.5B's shape and 5.40 MB at
# 1.5B's; solved for the two per-token terms and rounded up, the estimate lands 3-6% above every
# measured peak (2k-16k tokens a micro-batch, with and without gradient checkpointing).
# Bytes kept per token, per hidden unit, per decoder layer, for backward under bf16 autocast (fitted:
# 87). Korthikanti et al. 2022 count 34 for a GPT layer with a 4x MLP and no kept attention scores
# (SDPA does not keep them); a Qwen/Llama layer's SwiGLU MLP is 5.4-5.8x wide and keeps gate, up and
# their product, and LoRA keeps each adapted layer's dropped-out input.
ACTIVATION_BYTES = 90
# Bytes per token per vocabulary entry (fitted: 10.9): the loss upcasts the bf16 logits to fp32 and keeps
# the log-softmax, and backward holds their fp32 gradients. Over a 152k vocabulary it is about as large
# as the activations at Qwen2.5-0.5B's shape.
LOGIT_BYTES = 12
# Outside PyTorch's allocator: each trial process's CUDA context and kernels.
CUDA_CONTEXT_BYTES = 0.5 * GIB


@dataclass(frozen=True)
class MemoryEstimate:
    """One worker's peak GPU memory while it trains, in bytes, by what holds it."""

    weights: float
    adapters: float
    activations: float
    logits: float
    rows: int
    length: int

    @property
    def total(self) -> float:
        return self.weights + self.adapters + self.activations + self.logits + CUDA_CONTEXT_BYTES

    def parts(self) -> str:
        return (f"weights {self.weights / GIB:.1f} + LoRA and optimizer {self.adapters / GIB:.1f} + activations "
                f"{self.activations / GIB:.1f} + logits {self.logits / GIB:.1f} + CUDA context "
                f"{CUDA_CONTEXT_BYTES / GIB:.1f} GiB at {self.rows} rows x {self.length} tokens")


def estimate_memory(*, params: int, trainable: int, hidden: int, layers: int, vocab: int, rows: int, length: int,
                    checkpointing: bool, fused_loss: bool = False) -> MemoryEstimate:
    """A GPU trial's peak memory, from the model's shape and its largest micro-batch (rows x length: every
    row at max_length, the worst batch the data can give).

    - weights: the frozen base in bf16, as the recipe loads it on a GPU (2 bytes a parameter);
    - adapters: LoRA (and trained embeddings) in fp32 with their gradient and AdamW's two moments
      (4 + 4 + 8 bytes a trainable parameter);
    - activations: what backward needs of every layer, ACTIVATION_BYTES per token and hidden unit; with
      gradient checkpointing only each layer's bf16 input is kept, and one layer's activations at a time;
    - logits: tokens x vocabulary, LOGIT_BYTES each (the fp32 loss and its gradient); with a fused loss
      (TrialConfig.fused_loss) one chunk of them at a time (ftray.train.steps.LOGITS_PER_CHUNK);
    - the process's CUDA context, CUDA_CONTEXT_BYTES.
    Not counted: the evaluation's generation, which holds less than a training step at ftray's
    evaluation sizes (a KV cache for eval rows, logits of one position at a time).
    """
    tokens = rows * length
    per_layer = tokens * hidden * ACTIVATION_BYTES
    activations = tokens * hidden * 2 * layers + per_layer if checkpointing else per_layer * layers
    return MemoryEstimate(weights=2.0 * params, adapters=16.0 * trainable, activations=float(activations),
                          logits=float(min(tokens * vocab, LOGITS_PER_CHUNK) if fused_loss else tokens * vocab) * LOGIT_BYTES,
                          rows=rows, length=length)


def gpu_memory(sweep) -> tuple[float | None, str]:
    """(bytes of one GPU, where that figure comes from), or (None, why it is not known).

    Ray 2.60 tells a cluster's GPU count and type, not their memory; so `Scaling.gpu_memory_gb` where
    the user gives it (a cluster whose driver has no GPU), else the driver's own first GPU."""
    if sweep.scaling.gpu_memory_gb is not None:
        return sweep.scaling.gpu_memory_gb * GIB, "gpu_memory_gb"
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return float(p.total_memory), f"this machine's {p.name}"
    except Exception:  # a broken CUDA install: the memory is not known, the sweep may still run
        pass
    return None, "this machine has no GPU to measure and Scaling.gpu_memory_gb is not set"


def check_gpu_fit(sweep, estimates: Mapping[str, MemoryEstimate]) -> list[str]:
    """Each GPU rung's plan ("4 trials per GPU, est. 18.0 GiB each of 139 GiB"), or FtrayInputError when a
    trial needs more than its share of a GPU: with gpus_per_worker=0.25 a quarter of its memory (Ray
    places four such trials on each GPU whatever they use)."""
    if not estimates:
        return []
    memory, source = gpu_memory(sweep)
    if memory is None:
        return [f"GPU memory: not checked ({source})"]
    lines = []
    for model_id, est in estimates.items():
        g = sweep.gpus_for(model_id)
        share = memory * min(g, 1.0)  # a worker with 2+ GPUs still trains on one of them
        per_gpu = trials_per_gpu(g)
        if est.total > share:
            k = math.floor(memory / est.total)  # trials of this size that would fit one GPU
            fix = f"give this rung gpus_per_worker={math.floor(10000 / k) / 10000:g} ({k} per GPU), or " if k >= 1 else ""
            raise FtrayInputError(
                f"model {model_id!r}: gpus_per_worker={g:g} puts {per_gpu} trial{'s' * (per_gpu > 1)} on each "
                f"{memory / GIB:.0f} GiB GPU ({source}), {share / GIB:.1f} GiB each, but a trial needs about "
                f"{est.total / GIB:.1f} GiB ({est.parts()}): {fix}lower batch_size (raise grad_accum) or max_length, "
                "or turn on gradient_checkpointing for this rung"
            )
        lines.append(f"{model_id}: {per_gpu} trial{'s' * (per_gpu > 1)} per GPU, est. {est.total / GIB:.1f} GiB each "
                     f"of {memory / GIB:.0f} GiB ({source})")
    return lines


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
