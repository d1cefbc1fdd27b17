"""Evaluation of a (LoRA) causal LM on a task: teacher-forced loss, then greedy generations scored.

Used by the training recipe at every report, by `ftray eval` on saved adapters and by the bench. The
same call works outside ftray's loop: an adapter checkpoint loaded with `PeftModel.from_pretrained`,
the tokenizer saved beside it, and the task give back the numbers the trial reported.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from ftray.train.data import collate, tokenize_examples
from ftray.train.prompts import encode_prompt, encode_completions, resolve_format, stop_token_ids
from ftray.tasks.base import Example, Task


@dataclass(frozen=True)
class Scores:
    metrics: dict[str, float]  # eval_loss and the task's metrics
    # Each task metric row by row, as (numerator, denominator) in the order of the examples: the metric
    # is sum(num) / sum(den), so the report can resample rows for intervals and pair trials row by row.
    rows: dict[str, list[tuple[float, float]]]
    predictions: list[str]


def evaluate(**kwargs) -> dict[str, float]:
    """{"eval_loss": ..., **the task's metrics} for `examples` (see `score`)."""
    return score(**kwargs).metrics


def score(*, model, tokenizer, task: Task, examples: Sequence[Example], data: Sequence[dict] | None = None,
          batch_size: int, max_length: int, max_new_tokens: int, prompt_format: str = "auto",
          device: torch.device | str = "cpu", rank: int = 0, world: int = 1, autocast=None) -> Scores:
    """Eval loss, the task's metrics and their per-row parts for `examples`.

    `data` is `examples` tokenized (tokenize_examples, in `prompt_format`, the format the model was
    trained in); left None, it is tokenized here. Each worker
    takes every world-th example; losses are summed and generations gathered across workers, so every
    worker returns the same numbers. `autocast`: a context manager to run the model under (bf16 on GPU).
    """
    device = torch.device(device)
    if data is None:
        data = tokenize_examples(examples, tokenizer, max_length, fmt=prompt_format)
    model.eval()
    mine = list(range(rank, len(data), world))
    loss_tokens = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad(), (autocast or contextlib.nullcontext()):
        for start in range(0, len(mine), batch_size):
            idx = mine[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([data[i] for i in idx], tokenizer.pad_token_id).items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss_tokens += torch.tensor([model(**batch, use_cache=False).loss.item() * n, n], dtype=torch.float64)
        predictions = generate(model, tokenizer, examples, mine, batch_size=batch_size, max_length=max_length,
                               max_new_tokens=max_new_tokens, prompt_format=prompt_format, device=device)
    totals = sum_over_workers(loss_tokens, world)
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, predictions)
        predictions = {k: v for part in gathered for k, v in part.items()}
    ordered = [predictions[i] for i in range(len(examples))]
    rows = task.score_rows(ordered, examples)
    metrics = {"eval_loss": totals[0].item() / max(1.0, totals[1].item())}
    metrics.update(task.score(ordered, examples))
    return Scores(metrics, {k: [tuple(r) for r in v] for k, v in rows.items()}, ordered)


def generate(model, tokenizer, examples: Sequence[Example], indices: Sequence[int], *, batch_size: int,
             max_length: int, max_new_tokens: int, prompt_format: str = "auto", device: torch.device) -> dict[int, str]:
    """Greedy completions of examples[i] for i in `indices`, batched with left padding.

    Prompts are encoded as in training (the chat template, BOS: ftray/train/prompts.py). Prompts of similar
    length go in one batch (less padding). Generation stops at the end of an answer or a few tokens past
    the longest reference answer: a model that has not learnt to stop would otherwise spend
    max_new_tokens on every row.
    """
    out: dict[int, str] = {}
    fmt = resolve_format(tokenizer, prompt_format)
    prompts = {i: encode_prompt(tokenizer, examples[i].prompt, fmt, max_length=max_length) for i in indices}
    answers = encode_completions(tokenizer, [e.completion for e in examples], fmt)
    max_new = min(max_new_tokens, max((len(a) for a in answers), default=1) + 8)
    stops = stop_token_ids(tokenizer, fmt)
    order = sorted(indices, key=lambda i: len(prompts[i]))
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=device)
        generated = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
            pad_token_id=pad, eos_token_id=stops, use_cache=True,
        )
        for i, row in zip(idx, generated[:, width:].tolist()):
            ends = [row.index(s) for s in stops if s in row]
            out[i] = tokenizer.decode(row[: min(ends)] if ends else row, skip_special_tokens=True).strip()
    return out


def sum_over_workers(t: torch.Tensor, world: int) -> torch.Tensor:
    """Sum a small CPU tensor over the workers (on the accelerator when NCCL is the backend)."""
    if world > 1:
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = t.to(backend_device)
        dist.all_reduce(t)
        t = t.cpu()
    return t
