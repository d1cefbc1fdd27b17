"""Data for one trial: nested subsets, filters, completion-only labels, length-grouped batches.

Subsets are nested: for one seed the 10% subset lies inside the 25% subset, so "more data" in a sweep
adds rows and never swaps them. Batches pad to their own longest example (no fixed-length padding; or up
to a multiple of `pad_to_multiple`), and examples of similar length are batched together so little compute
goes into padding. Packed batches (`collate_packed`) hold examples end to end in rows of a fixed width,
padded at each row's end only. A micro-batch holds `batch_size` examples, or as many as fit a budget of
tokens (`batches(batch_tokens=...)`), padding included, as `Layout` lays them out.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ftray.errors import FtrayInputError
from ftray.spec.config import round_up
from ftray.train.prompts import cut_prompt, encode_completions, encode_prompts, resolve_format
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

    `fmt` is the prompt format ("auto", "chat" or "plain", ftray/train/prompts.py): the same one generation
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


@dataclass(frozen=True)
class Layout:
    """How a micro-batch's examples become tensors, and so how many tokens (padding included) they take.

    Unpacked (`pack_length` None): a row per example, right-padded to the batch's longest, rounded up to a
    multiple of `pad_to_multiple` (fewer distinct shapes, for kernels that are built or autotuned per input
    shape; the extra positions are masked, so the loss does not change). Packed: examples end to end in
    rows `pack_length` tokens wide (rounded up the same way), each placed in the first row it fits
    (`RowFiller`). A packed row's attention costs its width per token, so packing is linear in the tokens.
    """

    pad_to_multiple: int = 1
    pack_length: int | None = None

    def __post_init__(self):
        if self.pad_to_multiple < 1:
            raise ValueError(f"pad_to_multiple must be >= 1, got {self.pad_to_multiple}")
        if self.pack_length is not None and self.pack_length < 1:
            raise ValueError(f"pack_length must be >= 1, got {self.pack_length}")

    @classmethod
    def of(cls, cfg) -> Layout:
        """How a trial's (TrialConfig's) micro-batches become rows."""
        return cls(cfg.pad_to_multiple, (cfg.pack_length or cfg.max_length) if cfg.pack else None)

    @property
    def packed(self) -> bool:
        return self.pack_length is not None

    def width(self, longest: int) -> int:
        """The batch's width given its longest example (packed: the row width, whatever the examples)."""
        return round_up(self.pack_length if self.packed else longest, self.pad_to_multiple)

    def collate(self, samples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_packed(samples, pad_id, self) if self.packed else _collate_padded(samples, pad_id, self)


class RowFiller:
    """Examples placed into a micro-batch's rows one at a time, as `Layout.collate` lays them out: the one
    place that decides which examples share a row, for the collation and for the token budget."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.rows: list[list[int]] = []  # each row's examples, by the order they were added
        self.used: list[int] = []  # tokens taken in each row
        self.longest = 0
        self.count = 0

    def _row_for(self, length: int) -> int | None:
        """Packed: the first row with room for `length` tokens; None: a new row."""
        if self.layout.packed:
            room = self.layout.width(0)
            return next((r for r, used in enumerate(self.used) if used + length <= room), None)
        return None

    def tokens_with(self, length: int) -> int:
        """The batch's size in tokens, padding included, were an example of `length` tokens added."""
        rows = len(self.rows) + (self._row_for(length) is None)
        return rows * self.layout.width(max(self.longest, length))

    def add(self, length: int) -> None:
        if self.layout.packed and length > self.layout.width(0):
            raise ValueError(f"an example of {length} tokens does not fit a packed row of {self.layout.width(0)}")
        r = self._row_for(length)
        if r is None:
            r = len(self.rows)
            self.rows.append([])
            self.used.append(0)
        self.rows[r].append(self.count)
        self.used[r] += length
        self.longest = max(self.longest, length)
        self.count += 1


def batches(tokenized: Sequence[dict], batch_size: int, seed: int, epoch: int, rank: int, world_size: int,
            drop_last: bool = True, *, batch_tokens: int | None = None, layout: Layout = Layout()) -> list[list[int]]:
    """This rank's batches (lists of indices into `tokenized`) for one epoch.

    Every rank computes the same grouping (seeded by seed and epoch); all ranks get the same number
    of batches, since DDP steps in lockstep.
    Shuffle, sort by length within windows, cut into batches, deal them out in steps of world_size
    neighbouring batches, shuffle the steps: a random order with little padding, and at each step
    every rank gets a batch of about the same length. (Dealt at random, each step waits for the rank
    with the longest batch: measurably slower steps, README, Benchmarks.)
    With `batch_tokens`, a batch is cut where the next example would take it past that many tokens as
    `layout` lays it out, padding included (at least one example a batch), instead of at `batch_size`
    examples (`drop_last` is for fixed-size batches). Every rank gets the same number of batches, so with
    several workers the fewer than world_size batches left over at an epoch's end are left out of it.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad batching: batch_size={batch_size}, rank={rank}, world_size={world_size}")
    if batch_tokens is not None and batch_tokens < 1:
        raise ValueError(f"bad batching: batch_tokens={batch_tokens}")
    n = len(tokenized)
    if n == 0:
        raise ValueError("no examples to batch")
    rng = random.Random(f"batches-{seed}-{epoch}")
    order = list(range(n))
    rng.shuffle(order)
    if batch_tokens is not None:
        steps = _budget_steps(order, [len(t["input_ids"]) for t in tokenized], batch_tokens, layout, world_size)
        rng.shuffle(steps)
        return [step[rank] for step in steps]
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


def _cut_by_tokens(indices: Sequence[int], lengths: Sequence[int], budget: int, layout: Layout) -> list[list[int]]:
    """`indices` in order, cut into batches that each fit `budget` tokens as `layout` lays them out."""
    out: list[list[int]] = []
    current: list[int] = []
    filler = RowFiller(layout)
    for i in indices:
        if current and filler.tokens_with(lengths[i]) > budget:
            out.append(current)
            current, filler = [], RowFiller(layout)
        current.append(i)
        filler.add(lengths[i])
    return out + [current] if current else out


def _budget_steps(order: list[int], lengths: Sequence[int], budget: int, layout: Layout,
                  world_size: int) -> list[list[list[int]]]:
    """Token-budget batches, dealt into steps of world_size (unshuffled): windows of about
    SORT_WINDOW_BATCHES steps' worth of tokens sorted by length, so a step's batches are of about one
    length; the few batches a window leaves over form steps of their own at the end."""
    window_tokens = SORT_WINDOW_BATCHES * world_size * budget
    steps: list[list[list[int]]] = []
    spare: list[list[int]] = []
    start = 0
    while start < len(order):
        end, tokens = start, 0
        while end < len(order) and tokens < window_tokens:
            tokens += lengths[order[end]]
            end += 1
        chunk = sorted(order[start:end], key=lambda i: lengths[i])
        cut = _cut_by_tokens(chunk, lengths, budget, layout)
        whole = len(cut) - len(cut) % world_size
        steps += [cut[j : j + world_size] for j in range(0, whole, world_size)]
        spare += cut[whole:]
        start = end
    steps += [spare[j : j + world_size] for j in range(0, len(spare) - world_size + 1, world_size)]
    if not steps:
        # A tiny subset: fewer batches than workers. Repeat it (unsorted, as for fixed-size batches) until
        # every rank has one.
        repeated = list(order)
        while len(cut := _cut_by_tokens(repeated, lengths, budget, layout)) < world_size:
            repeated += order
        steps = [cut[:world_size]]
    return steps


def collate(samples: Sequence[dict], pad_id: int, pad_to_multiple: int = 1,
            pack_length: int | None = None) -> dict[str, torch.Tensor]:
    """The samples as tensors, laid out by `Layout(pad_to_multiple, pack_length)`: right-padded rows
    (input_ids, labels -100 and attention_mask 0 where padded), or, with `pack_length`, packed rows
    (`collate_packed`)."""
    return Layout(pad_to_multiple, pack_length).collate(samples, pad_id)


def _collate_padded(samples: Sequence[dict], pad_id: int, layout: Layout) -> dict[str, torch.Tensor]:
    width = layout.width(max(len(s["input_ids"]) for s in samples))
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        k = len(s["input_ids"])
        input_ids[row, :k] = torch.tensor(s["input_ids"], dtype=torch.long)
        labels[row, :k] = torch.tensor(s["labels"], dtype=torch.long)
        attention_mask[row, :k] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def collate_packed(samples: Sequence[dict], pad_id: int, layout: Layout) -> dict[str, torch.Tensor]:
    """The samples end to end in rows of `layout.width(0)` tokens (which samples share a row: `RowFiller`):
    input_ids, labels, position_ids; no padding between samples, and deliberately no attention_mask.

    position_ids restart at 0 at each sample. Given position_ids and no attention_mask, transformers reads
    the restarts as sequence boundaries, row by row (masking_utils.find_packed_sequence_indices), and builds
    a block-diagonal causal mask for the sdpa, eager and flex paths; the flash-attention paths take the same
    boundaries from the position_ids for their varlen kernels. An attention_mask, or a KV cache (call the
    model with use_cache=False), switches that detection off, and the samples would attend to each other.
    Each sample's first label is -100: the token before it ends another sample, so nothing is predicted
    across a boundary. A row's padding at its end is one more sequence of its own, all labels -100.
    """
    filler = RowFiller(layout)
    for s in samples:
        filler.add(len(s["input_ids"]))
    width = layout.width(0)
    input_ids = torch.full((len(filler.rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(filler.rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(filler.rows), width), dtype=torch.long)
    for r, members in enumerate(filler.rows):
        at = 0
        for i in members:
            s = samples[i]
            k = len(s["input_ids"])
            input_ids[r, at : at + k] = torch.tensor(s["input_ids"], dtype=torch.long)
            labels[r, at + 1 : at + k] = torch.tensor(s["labels"][1:], dtype=torch.long)
            position_ids[r, at : at + k] = torch.arange(k)
            at += k
        position_ids[r, at:] = torch.arange(width - at)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def padding_efficiency(batches_of_samples: Sequence[Sequence[dict]]) -> float:
    """Real tokens over all tokens the padded batches hold (1.0: no padding at all)."""
    real = total = 0
    for batch in batches_of_samples:
        lengths = [len(s["input_ids"]) for s in batch]
        if lengths:
            real += sum(lengths)
            total += max(lengths) * len(lengths)
    return real / total if total else 1.0
