"""The Ray Train worker loop: the only code that runs on Train workers.

Reads top to bottom in the order it runs: set up (data, model, LoRA, DDP, optimizer), then the loop
(batch, forward, backward, step), evaluating and reporting a checkpoint every `eval_every` steps.
Every worker of a trial runs this with the same TrialSpec, sampled once on the driver.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.distributed as dist

from ftray.data import batches, collate, select, tokenize_examples
from ftray.models import LoraSettings, ModelSpec, apply_lora, build_model, load_tokenizer
from ftray.tasks.base import Task

TRAINER_STATE = "trainer_state.pt"


class DidNotFitError(RuntimeError):
    """The model and batch do not fit in the accelerator's (or the host's) memory: retrying cannot help."""


@dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs to train one trial: no Ray, no driver objects."""

    task: Task
    model: ModelSpec
    lora: LoraSettings
    lr: float
    steps: int | None
    epochs: float | None
    batch_size: int  # per worker, per micro-batch
    grad_accum: int
    max_length: int
    weight_decay: float
    warmup_ratio: float
    data_fraction: float
    data_filters: Mapping[str, str] | None
    seed: int
    eval_every: int
    eval_samples: int
    max_new_tokens: int
    objective: str
    eval_base: bool = True  # score the model before finetuning too (the gain finetuning buys)
    tokenizer_json: str | None = None
    threads: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)  # test hooks (e.g. inject a NaN)


def lr_lambda(warmup: int, total: int):
    """Linear warmup, then cosine decay to 10% of the peak (not to 0: the last steps still learn)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def train_loop(config: dict) -> None:
    try:
        _train(config)
    except torch.OutOfMemoryError as e:
        spec: TrialSpec = config["spec"]
        raise DidNotFitError(
            f"{spec.model.id} with batch {spec.batch_size} x up to {spec.max_length} tokens did not fit in memory "
            f"({str(e).splitlines()[0][:200]}); lower batch_size (raise grad_accum), max_length, or turn on "
            "gradient_checkpointing for this model"
        ) from None


def _train(config: dict) -> None:
    import ray.train
    import ray.train.torch

    t_start = time.time()
    # From the trial driver's launch of the Train run to here: the Train controller and the worker
    # processes starting, their imports, and the process group (one machine's clock locally; on a
    # cluster the nodes' clocks may differ by a little).
    worker_start_s = max(0.0, t_start - config.get("launched_at", t_start))
    spec: TrialSpec = config["spec"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    torch.set_num_threads(max(1, spec.threads))

    # ---- data: the same nested subset on every worker; each takes its own shard of batches ----
    tokenizer = load_tokenizer(spec.model, spec.tokenizer_json)
    train_examples = select(spec.task.examples("train"), spec.data_fraction, spec.seed, spec.data_filters)
    valid_examples = spec.task.examples("valid")[: spec.eval_samples]
    train_data = tokenize_examples(train_examples, tokenizer, spec.max_length)
    valid_data = tokenize_examples(valid_examples, tokenizer, spec.max_length)
    per_step = spec.batch_size * spec.grad_accum * world
    total_steps = spec.steps or max(1, math.ceil(spec.epochs * len(train_data) / per_step))

    # ---- model: base weights (bf16 on GPU), LoRA, DDP ----
    model = build_model(spec.model, tokenizer, seed=spec.seed, dtype=torch.bfloat16 if on_gpu else torch.float32)
    model = apply_lora(model, spec.model, spec.lora)
    total_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and "modules_to_save" not in n)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_params = sum(p.numel() for p in trainable)
    if on_gpu:
        for p in trainable:  # adapters train in fp32 master weights; the frozen base stays bf16
            p.data = p.data.float()
    model.to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if on_gpu else None) if world > 1 else model

    optimizer = torch.optim.AdamW(trainable, lr=spec.lr, weight_decay=spec.weight_decay)
    warmup = int(spec.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total_steps))

    step = 0
    base_metrics: dict = {}
    tokens_total = 0.0  # all workers, prompt and completion, no padding, since the trial began
    train_time = 0.0  # seconds in the training loop since the trial began (evaluation left out)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker group goes on from the latest checkpoint
        with checkpoint.as_directory() as d:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(os.path.join(d, "adapter_model.safetensors"), device=str(device)))
            state = torch.load(os.path.join(d, TRAINER_STATE), map_location=device, weights_only=False)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step = state["step"]
            base_metrics = state.get("base_metrics", {})
            tokens_total = state.get("tokens", 0.0)
            train_time = state.get("train_s", 0.0)
    restarts = int(config.get("restarts", 0))

    def batch_stream():
        epoch = step * per_step // max(1, len(train_data))
        while True:
            for idx in batches(train_data, spec.batch_size, spec.seed, epoch, rank, world, drop_last=True):
                yield collate([train_data[i] for i in idx], tokenizer.pad_token_id)
            epoch += 1

    stream = batch_stream()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()
    setup_s = time.time() - t_start
    eval_s = 0.0
    if spec.eval_base and step == 0:
        # LoRA's B matrices start at zero, so this is the base model's own score.
        t_eval = time.time()
        base = evaluate(model, tokenizer, spec.task, valid_examples, valid_data, spec, device, rank, world, autocast)
        base_metrics = {f"base_{k}": v for k, v in base.items()}
        eval_s += time.time() - t_eval
    # Sum of token losses and loss tokens since the last report, kept on the device: adding to it
    # needs no wait for the accelerator.
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    tokens_seen = 0  # this worker's, since the last report
    step_times: list[float] = []  # wall seconds of each optimizer step since the last report
    t_train = time.time()

    def report(nan_now: bool) -> bool:
        """Evaluate, save an adapter checkpoint (rank 0) and report; True when training must stop."""
        nonlocal eval_s, tokens_seen, t_train, train_time, tokens_total, step_times
        interval_s = time.time() - t_train
        train_time += interval_s
        totals = _all_reduce(torch.cat([loss_sum.cpu(), torch.tensor([tokens_seen], dtype=torch.float64)]), world)
        tokens_total += totals[2].item()
        train_loss = totals[0].item() / totals[1].item() if totals[1].item() > 0 else None
        diverged = nan_now or (train_loss is not None and not math.isfinite(train_loss))
        metrics = {
            "step": step,
            "total_steps": total_steps,
            **({"train_loss": train_loss} if train_loss is not None else {}),
            "lr": scheduler.get_last_lr()[0],
            "tokens": tokens_total,  # all workers, prompt and completion, no padding, since the start
            "train_tokens_per_s": totals[2].item() / max(interval_s, 1e-9),  # since the last report
            "train_s": train_time,
            **({"step_s": statistics.median(step_times)} if step_times else {}),  # median, since the last report
            "setup_s": setup_s,
            "worker_start_s": worker_start_s,
            "params": total_params,
            "trainable_params": trainable_params,
            "train_examples": len(train_data),
            "restarts": restarts,
            "world_size": world,
            "diverged": int(diverged),
            **base_metrics,
        }
        if on_gpu:  # rank 0's peak, weights, activations and optimizer state together
            metrics["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if not diverged:
            t_eval = time.time()
            metrics.update(evaluate(model, tokenizer, spec.task, valid_examples, valid_data, spec, device, rank, world, autocast))
            eval_s += time.time() - t_eval
            metrics["eval_s"] = eval_s
        ckpt = None
        if rank == 0 and not diverged:
            ckpt_dir = tempfile.mkdtemp(prefix="ftray-ckpt-")
            model.save_pretrained(ckpt_dir)  # adapter (and trained embeddings) only, safetensors
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                        "base_metrics": base_metrics, "tokens": tokens_total, "train_s": train_time},
                       os.path.join(ckpt_dir, TRAINER_STATE))
            ckpt = ray.train.Checkpoint.from_directory(ckpt_dir)
        ray.train.report(metrics, checkpoint=ckpt)
        if diverged:
            return True  # a NaN loss cannot recover: stop at once, the report marks the trial diverged
        loss_sum.zero_()
        tokens_seen = 0
        step_times = []
        t_train = time.time()
        model.train()
        return False

    step_at_start = step
    # ---- the loop ----
    model.train()
    while step < total_steps:
        t_step = time.perf_counter()
        for micro in range(spec.grad_accum):
            cpu_batch = next(stream)
            n_tokens = int((cpu_batch["labels"][:, 1:] != -100).sum())  # counted on the host: no wait
            tokens_seen += int(cpu_batch["attention_mask"].sum())
            batch = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
            sync = micro == spec.grad_accum - 1 or world == 1
            with (contextlib.nullcontext() if sync else ddp.no_sync()), autocast:
                loss = ddp(**batch).loss
                if spec.extra.get("nan_at_step") == step + 1:
                    loss = loss * float("nan")
                (loss / spec.grad_accum).backward()
            loss_sum[0] += loss.detach().double() * n_tokens
            loss_sum[1] += n_tokens
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        # Every worker must agree to stop, or the others would wait for it forever. The norm is of the
        # gradients DDP has already averaged, so it is the same on every worker, and a NaN loss on any
        # worker (in any micro-batch) makes it NaN: no collective of its own, one wait per step.
        nan_now = not math.isfinite(grad_norm.item())
        step_times.append(time.perf_counter() - t_step)

        if step % spec.eval_every == 0 or step == total_steps or nan_now:
            if report(nan_now):
                return
    if step_at_start >= total_steps:
        # Restored from the final checkpoint (the sweep's driver was lost after training ended):
        # report the result again rather than train again.
        report(False)


def evaluate(model, tokenizer, task, examples, data, spec, device, rank, world, autocast) -> dict:
    """Eval loss (teacher forced) and the task's metrics on greedily generated text.

    Each worker takes every world-th example; losses are summed and generations gathered across
    workers, so every worker returns the same numbers.
    """
    model.eval()
    mine = list(range(rank, len(data), world))
    loss_tokens = torch.zeros(2, dtype=torch.float64)
    predictions: dict[int, str] = {}
    with torch.no_grad(), autocast:
        for start in range(0, len(mine), spec.batch_size):
            idx = mine[start : start + spec.batch_size]
            batch = {k: v.to(device) for k, v in collate([data[i] for i in idx], tokenizer.pad_token_id).items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss_tokens += torch.tensor([model(**batch).loss.item() * n, n], dtype=torch.float64)
        predictions = _generate(model, tokenizer, examples, mine, spec, device)
    totals = _all_reduce(loss_tokens, world)
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, predictions)
        predictions = {k: v for part in gathered for k, v in part.items()}
    ordered = [predictions[i] for i in range(len(examples))]
    metrics = {"eval_loss": totals[0].item() / max(1.0, totals[1].item())}
    metrics.update(task.score(ordered, examples))
    return metrics


def _generate(model, tokenizer, examples, indices, spec, device) -> dict[int, str]:
    """Batched greedy decoding with left padding, prompts of similar length batched together."""
    out: dict[int, str] = {}
    prompts = {i: tokenizer(examples[i].prompt, add_special_tokens=False)["input_ids"][-spec.max_length :] for i in indices}
    longest_answer = max((len(tokenizer(e.completion, add_special_tokens=False)["input_ids"]) for e in examples), default=1)
    max_new = min(spec.max_new_tokens, longest_answer + 8)
    order = sorted(indices, key=lambda i: len(prompts[i]))
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), spec.batch_size):
        idx = order[start : start + spec.batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=device)
        generated = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
            pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
        )
        for i, row in zip(idx, generated[:, width:].tolist()):
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return out


def _all_reduce(t: torch.Tensor, world: int) -> torch.Tensor:
    """Sum a small CPU tensor over workers (on the accelerator when NCCL is the backend)."""
    if world > 1:
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = t.to(backend_device)
        dist.all_reduce(t)
        t = t.cpu()
    return t
