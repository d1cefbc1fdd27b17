"""Your own data: CSV or JSONL files (or a Hugging Face dataset), a prompt template, chosen metrics."""

from __future__ import annotations

import functools
import os
import random
import string
from dataclasses import dataclass
from typing import Sequence

from ftray.errors import FtrayInputError, HubUnavailable
from ftray.metrics import exact_match, mr_metrics, rouge_l
from ftray.tasks._files import read_rows
from ftray.tasks.base import Example, Task
from ftray.tasks.viggo import MR_METRICS

KNOWN_METRICS = ("exact_match", "rouge_l", "mr")


@dataclass(frozen=True)
class TextTask(Task):
    """Rows become prompt + completion through `str.format` templates over the row's columns.

    `metrics`: "exact_match", "rouge_l", and "mr" (ViGGO-style meaning representations: exact match,
    act accuracy, slot precision/recall/F1, parse failures). Without a `valid` file, a seeded
    `valid_fraction` of the training rows is held out.
    """

    train: str | None = None
    valid: str | None = None
    test: str | None = None
    prompt: str = "{input}\n"
    completion: str = " {output}"
    metrics: tuple[str, ...] = ("exact_match", "rouge_l")
    meta_columns: tuple[str, ...] = ()
    name: str = "text"
    hf_dataset: str | None = None
    hf_splits: tuple[str, str, str] = ("train", "validation", "test")
    valid_fraction: float = 0.1

    def __post_init__(self):
        fix = object.__setattr__  # frozen: normalise the fields once, here
        for key in ("train", "valid", "test"):
            path = getattr(self, key)
            if path is not None:
                fix(self, key, os.path.abspath(os.path.expanduser(str(path))))
        fix(self, "metrics", (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics))
        fix(self, "meta_columns", tuple(self.meta_columns))
        fix(self, "hf_splits", tuple(self.hf_splits))
        self._validate()

    def _validate(self):
        if (self.train is None) == (self.hf_dataset is None):
            raise FtrayInputError("TextTask needs exactly one of train= (a .csv/.jsonl file) and hf_dataset=")
        unknown = [m for m in self.metrics if m not in KNOWN_METRICS]
        if unknown or not self.metrics:
            raise FtrayInputError(f"TextTask.metrics: unknown {unknown or 'empty'}; choose from {', '.join(KNOWN_METRICS)}")
        for field in ("prompt", "completion"):
            template = getattr(self, field)
            try:
                cols = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            except ValueError as e:
                raise FtrayInputError(f"TextTask.{field} is not a valid template: {e}") from None
            if not cols and field == "completion":
                raise FtrayInputError(f"TextTask.completion must name a column, e.g. ' {{output}}'; got {template!r}")
        if not (isinstance(self.valid_fraction, float) and 0 < self.valid_fraction < 1):
            raise FtrayInputError(f"TextTask.valid_fraction must be in (0, 1), got {self.valid_fraction!r}")
        if not isinstance(self.name, str) or not self.name:
            raise FtrayInputError("TextTask.name must be a non-empty string")

    @property
    def metric_names(self) -> tuple[str, ...]:
        out: list[str] = []
        for m in self.metrics:
            for k in (MR_METRICS if m == "mr" else (m,)):
                if k not in out:
                    out.append(k)
        return tuple(out)

    def examples(self, split: str) -> list[Example]:
        return list(_examples(self, split))

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        refs = [e.completion.strip() for e in examples]
        out: dict[str, float] = {}
        if "mr" in self.metrics:
            out.update(mr_metrics(predictions, refs))
        if "exact_match" in self.metrics:
            out["exact_match"] = exact_match(predictions, refs)
        if "rouge_l" in self.metrics:
            out["rouge_l"] = rouge_l(predictions, refs)
        return out


@functools.lru_cache(maxsize=16)
def _examples(task: TextTask, split: str) -> tuple[Example, ...]:
    if task.hf_dataset is not None:
        return _to_examples(task, *_hf_rows(task, split))
    holdout = split in ("train", "valid") and task.valid is None
    path = task.train if holdout else {"train": task.train, "valid": task.valid, "test": task.test}[split]
    if path is None:
        return ()
    examples = _to_examples(task, read_rows(path), path)  # every row checked, held out or not
    if not holdout:
        return examples
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    held = set(order[: max(1, int(len(examples) * task.valid_fraction))])
    return tuple(e for i, e in enumerate(examples) if (i in held) == (split == "valid"))


def _to_examples(task: TextTask, rows: list[dict], where: str) -> tuple[Example, ...]:
    out = []
    for i, row in enumerate(rows, 1):
        try:
            prompt, completion = task.prompt.format(**row), task.completion.format(**row)
        except KeyError as e:
            raise FtrayInputError(f"{where}: row {i} has no column {e.args[0]!r} that the template names; "
                                  f"its columns are: {', '.join(row)}") from None
        if not completion.strip():
            raise FtrayInputError(f"{where}: row {i}: the completion is empty")
        meta = {}
        for col in task.meta_columns:
            if col not in row:
                raise FtrayInputError(f"{where}: row {i} has no meta column {col!r}")
            meta[col] = str(row[col])
        out.append(Example(prompt, completion, meta))
    return tuple(out)


def _hf_rows(task: TextTask, split: str):
    name = dict(zip(("train", "valid", "test"), task.hf_splits))[split]
    try:
        import datasets

        ds = datasets.load_dataset(task.hf_dataset, split=name)
    except Exception as e:
        raise HubUnavailable(f"TextTask: cannot load {task.hf_dataset!r} split {name!r} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return [{k: "" if v is None else str(v) for k, v in r.items()} for r in ds], f"{task.hf_dataset}[{name}]"
