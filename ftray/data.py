"""Data for one trial: nested subsets, filters, completion-only labels, length-grouped batches.

Subsets are nested: for one seed the 10% subset lies inside the 25% subset, so "more data" in a sweep
adds rows and never swaps them. Batches pad to their own longest example (no fixed-length padding; or up
to a multiple of `pad_to_multiple`), and examples of similar length are batched together so little compute
goes into padding. Packed batches (`collate_packed`) hold no padding at all.
"""

from __future__ import annotations

import math
import random
from typing import Mapping, Sequence

import torch

from ftray.errors import FtrayInputError
from ftray.prompts import cut_prompt, encode_completions, encode_prompts, resolve_format
from ftray.tasks.base import Example

IGNORE = -100  # the label value that the loss skips
SORT_WINDOW_BATCHES = 50  # batches per window sorted by length: bigger pads less, but orders the data more


def nested_subset(n: int, fraction: float, seed: int) -> list[int]:
    """Indices (ascending) of `fraction` of range(n): a prefix of one seeded permutation, so subsets nest."""
    if n <= 0:
        return []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    # The epsilon keeps float noise (0.07 * 100 = 7.000000000000001) from taking one row too many.
    k = min(n, max(1, math.ceil(fraction * n - 1e-9)))
    return sorted(order[:k])


def filter_examples(examples: Sequence[Example], filters: Mapping[str, str] | None) -> list[Example]:
    """The examples whose meta matches every column=value of `filters` (all of them when none)."""
    if not filters:
        return list(examples)
    return [e for e in examples if all(e.meta.get(k) == v for k, v in filters.items())]


def select(examples: Sequence[Example], fraction: float, seed: int,
           filters: Mapping[str, str] | None = None) -> list[Example]:
    """Filter on meta columns, then take the nested subset of what is left."""
    kept = filter_examples(examples, filters)
    if not kept and filters:
        # Name the first filter that empties the set, with the values it could have taken there.
        remaining = list(examples)
        for column, value in filters.items():
            narrowed = [e for e in remaining if e.meta.get(column) == value]
            if not narrowed:
                seen = sorted({str(e.meta.get(column, "<missing>")) for e in remaining})
                shown = ", ".join(seen[:20]) + (f", ... ({len(seen)} in all)" if len(seen) > 20 else "")
                raise FtrayInputError(f"data filter {column}={value!r} keeps no training example; "
                                      f"values of {column!r} seen: {shown or '(no examples)'}")
            remaining = narrowed
    return [kept[i] for i in nested_subset(len(kept), fraction, seed)]


def tokenize_examples(examples: Sequence[Example], tokenizer, max_length: int, fmt: str = "auto") -> list[dict]:
    """Each example as {"input_ids": prompt + completion + end, "labels": the same with the prompt -100},
    cut to `max_length` tokens (`truncate`).

    `fmt` is the prompt format ("auto", "chat" or "plain", ftray/prompts.py): the same one generation
    must use. Loss falls on the completion and the token that ends it (EOS, or a chat template's
    end-of-turn) only.
    """
    out = []
    for prompt, head, answer in encode_examples(examples, tokenizer, fmt):
        prompt, answer = truncate(prompt, head, answer, max_length)
        out.append({"input_ids": prompt + answer, "labels": [IGNORE] * len(prompt) + answer})
    return out


def encode_examples(examples: Sequence[Example], tokenizer, fmt: str = "auto") -> list[tuple[list[int], int, list[int]]]:
    """Each example whole, as (prompt ids, the prompt's head that truncation keeps, completion ids + end)."""
    if not examples:
        return []
    fmt = resolve_format(tokenizer, fmt)
    prompts = encode_prompts(tokenizer, [e.prompt for e in examples], fmt)
    answers = encode_completions(tokenizer, [e.completion for e in examples], fmt)
    return [(prompt, head, answer) for (prompt, head), answer in zip(prompts, answers)]


def truncate(prompt: list[int], head: int, answer: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """An example's prompt and answer ids, at most `max_length` of them together.

    Too long: the prompt loses tokens first, from just after its head (a BOS, a chat template's system
    turn and user header), so its end, which says what to answer and holds the template's generation
    prompt, stays; then the completion loses its end. At least one prompt token stays whenever the
    prompt has one, so the first completion token is still predicted from something.
    """
    if len(prompt) + len(answer) > max_length:
        prompt = cut_prompt(prompt, head, max(min(len(prompt), 1), max_length - len(answer)))
        answer = answer[: max_length - len(prompt)]
    return prompt, answer


def batches(tokenized: Sequence[dict], batch_size: int, seed: int, epoch: int, rank: int, world_size: int,
            drop_last: bool = True) -> list[list[int]]:
    """This rank's batches (lists of indices into `tokenized`) for one epoch.

    Every rank computes the same grouping (seeded by seed and epoch); all ranks get the same number
    of batches, since DDP steps in lockstep.
    Shuffle, sort by length within windows, cut into batches, deal them out in steps of world_size
    neighbouring batches, shuffle the steps: a random order with little padding, and at each step
    every rank gets a batch of about the same length. (Dealt at random, each step waits for the rank
    with the longest batch: measurably slower steps, README, Benchmarks.)
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad batching: batch_size={batch_size}, rank={rank}, world_size={world_size}")
    n = len(tokenized)
    if n == 0:
        raise ValueError("no examples to batch")
    rng = random.Random(f"batches-{seed}-{epoch}")
    order = list(range(n))
    rng.shuffle(order)
    need = batch_size * world_size
    if n < need:
        # A tiny subset: repeat it so that every rank still gets one full batch. No length sorting
        # here, which would put the copies of one example side by side.
        order = (order * math.ceil(need / n))[:need]
        return [order[rank * batch_size : (rank + 1) * batch_size]]
    # Whole steps per window, so that no step takes batches from two windows (two length ranges).
    window = math.ceil(SORT_WINDOW_BATCHES / world_size) * world_size * batch_size
    grouped: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(tokenized[i]["input_ids"]))
        grouped += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    if drop_last:
        grouped = [b for b in grouped if len(b) == batch_size]
    steps = [grouped[i : i + world_size] for i in range(0, len(grouped) - world_size + 1, world_size)]
    rng.shuffle(steps)
    return [step[rank] for step in steps]


def _round_up(width: int, multiple: int) -> int:
    if multiple < 1:
        raise ValueError(f"pad_to_multiple must be >= 1, got {multiple}")
    return -(-width // multiple) * multiple


def collate(samples: Sequence[dict], pad_id: int, pad_to_multiple: int = 1,
            pack: bool = False) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample of this batch: input_ids (pad_id), labels (-100), attention_mask.

    `pad_to_multiple` rounds the width up to a multiple of it: fewer distinct shapes, for kernels that are
    built (or autotuned) per input shape; the extra positions are masked, so the loss does not change.
    `pack`: all samples in one row instead (`collate_packed`).
    """
    if pack:
        return collate_packed(samples, pad_id, pad_to_multiple)
    width = _round_up(max(len(s["input_ids"]) for s in samples), pad_to_multiple)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        k = len(s["input_ids"])
        input_ids[row, :k] = torch.tensor(s["input_ids"], dtype=torch.long)
        labels[row, :k] = torch.tensor(s["labels"], dtype=torch.long)
        attention_mask[row, :k] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def collate_packed(samples: Sequence[dict], pad_id: int, pad_to_multiple: int = 1) -> dict[str, torch.Tensor]:
    """The samples end to end in one row (batch dimension 1): input_ids, labels, position_ids; no padding
    between them, and deliberately no attention_mask.

    position_ids restart at 0 at each sample. Given position_ids and no attention_mask, transformers reads
    the restarts as sequence boundaries (masking_utils.find_packed_sequence_indices) and builds a
    block-diagonal causal mask for the sdpa, eager and flex paths; the flash-attention paths take the same
    boundaries from the position_ids for their varlen kernels. An attention_mask, or a KV cache (call the
    model with use_cache=False), switches that detection off, and the rows would attend to each other.
    Each sample's first label is -100: the token before it ends another sample, so nothing is predicted
    across a boundary. Padding up to `pad_to_multiple` is one more sequence of its own, all labels -100.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for s in samples:
        k = len(s["input_ids"])
        input_ids += s["input_ids"]
        labels += [IGNORE] * min(k, 1) + list(s["labels"][1:])
        position_ids += range(k)
    pad = _round_up(len(input_ids), pad_to_multiple) - len(input_ids)
    input_ids += [pad_id] * pad
    labels += [IGNORE] * pad
    position_ids += range(pad)
    as_row = lambda values: torch.tensor(values, dtype=torch.long).unsqueeze(0)  # noqa: E731
    return {"input_ids": as_row(input_ids), "labels": as_row(labels), "position_ids": as_row(position_ids)}


def padding_efficiency(batches_of_samples: Sequence[Sequence[dict]]) -> float:
    """Real tokens over all tokens the padded batches hold (1.0: no padding at all)."""
    real = total = 0
    for batch in batches_of_samples:
        lengths = [len(s["input_ids"]) for s in batch]
        if lengths:
            real += sum(lengths)
            total += max(lengths) * len(lengths)
    return real / total if total else 1.0
