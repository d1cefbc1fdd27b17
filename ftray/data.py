"""Data for one trial: nested subsets, filters, completion-only labels, length-grouped batches.

Subsets are nested: for one seed the 10% subset lies inside the 25% subset, so "more data" in a sweep
adds rows and never swaps them. Batches pad to their own longest example (no fixed-length padding),
and examples of similar length are batched together so little compute goes into padding.
"""

from __future__ import annotations

import math
import random
from typing import Mapping, Sequence

import torch

from ftray.errors import FtrayInputError
from ftray.tasks.base import Example

IGNORE = -100  # label value the loss skips


def nested_subset(n: int, fraction: float, seed: int) -> list[int]:
    """Indices of a `fraction` of range(n): a prefix of one seeded permutation, so subsets nest."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = max(1, math.ceil(fraction * n)) if n else 0
    return sorted(order[:k])


def filter_examples(examples: Sequence[Example], filters: Mapping[str, str] | None) -> list[Example]:
    if not filters:
        return list(examples)
    return [e for e in examples if all(e.meta.get(k) == v for k, v in filters.items())]


def select(examples: Sequence[Example], fraction: float, seed: int,
           filters: Mapping[str, str] | None = None) -> list[Example]:
    """Filter on meta columns, then take the nested subset of what is left."""
    kept = filter_examples(examples, filters)
    if not kept:
        column, value = next(iter(filters.items()))
        seen = sorted({e.meta.get(column, "<missing>") for e in examples})
        raise FtrayInputError(f"data_filter {column}={value!r} keeps no training example; values seen: {', '.join(seen[:20])}")
    return [kept[i] for i in nested_subset(len(kept), fraction, seed)]


def tokenize_examples(examples: Sequence[Example], tokenizer, max_length: int) -> list[dict]:
    """input_ids = prompt + completion + eos; labels mask the prompt (-100): loss on the completion only.

    Too long: the prompt loses tokens from its start first (the end of a prompt says what to answer),
    then the completion its end.
    """
    eos = tokenizer.eos_token_id
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    answers = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
    out = []
    for p, a in zip(prompts, answers):
        a = a + [eos]
        room = max_length - len(a)
        if room < 1:  # keep at least one prompt token; cut the answer
            p, a = p[-1:], a[: max_length - 1]
        elif len(p) > room:
            p = p[-room:]
        out.append({"input_ids": p + a, "labels": [IGNORE] * len(p) + a})
    return out


def batches(tokenized: Sequence[dict], batch_size: int, seed: int, epoch: int, rank: int, world_size: int,
            drop_last: bool = True) -> list[list[int]]:
    """This rank's batches (lists of indices) for one epoch; every rank gets the same number.

    Shuffle (seeded by seed and epoch), sort by length within windows of 50 batches, cut into batches,
    shuffle the batches: random order, little padding.
    """
    n = len(tokenized)
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(n))
    rng.shuffle(order)
    need = batch_size * world_size
    if n < need:  # a tiny subset still gives every worker a full batch
        order = (order * math.ceil(need / max(1, n)))[:need]
    window = 50 * batch_size
    grouped = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(tokenized[i]["input_ids"]))
        grouped += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    if drop_last:
        grouped = [b for b in grouped if len(b) == batch_size] or grouped[:1]
    rng.shuffle(grouped)
    per_rank = len(grouped) // world_size
    if per_rank == 0:
        return [grouped[0]]
    return grouped[rank : per_rank * world_size : world_size]


def collate(samples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample of this batch."""
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        k = len(s["input_ids"])
        ids[row, :k] = torch.tensor(s["input_ids"])
        labels[row, :k] = torch.tensor(s["labels"])
        mask[row, :k] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def padding_efficiency(tokenized: Sequence[dict], index_batches: Sequence[Sequence[int]]) -> float:
    """Non-padding tokens over all tokens the batches hold."""
    real = total = 0
    for b in index_batches:
        lengths = [len(tokenized[i]["input_ids"]) for i in b]
        real += sum(lengths)
        total += max(lengths) * len(lengths)
    return real / total if total else 1.0
