"""Your own data: CSV or JSONL files (or a Hugging Face dataset), prompt templates, chosen metrics."""

from __future__ import annotations

import functools
import os
import random
import string
from dataclasses import dataclass
from typing import Sequence

from ftray.checks import is_number
from ftray.errors import FtrayInputError, HubUnavailable
from ftray.tasks.metrics import MR_METRIC_NAMES, aggregate, exact_match_rows, mr_rows, rouge_l_rows
from ftray.tasks._files import read_rows
from ftray.tasks.base import Example, ScoreRows, Task

KNOWN_METRICS = ("exact_match", "rouge_l", "mr")
SPLITS = ("train", "valid", "test")
HOLDOUT_SEED = 0  # fixed, not the trial's seed: every trial of a sweep must validate on the same rows


@dataclass(frozen=True)
class TextTask(Task):
    """Rows become prompt + completion through templates over the row's columns.

    `prompt` and `completion` take plain `{column}` fields (and `{{`, `}}` for literal braces);
    a format spec, conversion, index or attribute (`{text:>9}`, `{text!r}`, `{row[0]}`,
    `{text.upper}`) is refused when the task is built.

    `metrics`: "exact_match", "rouge_l", and "mr" (ViGGO-style meaning representations: exact match of
    the normalized MR, act accuracy, slot precision/recall/F1, parse failures). With both "mr" and
    "exact_match", exact_match is the plain-text one. Without a `valid` file, a fixed
    `valid_fraction` of the training rows is held out for validation.
    """

    train: str | None = None
    valid: str | None = None
    test: str | None = None
    prompt: str = "{input}\n"
    completion: str = " {output}"
    metrics: tuple[str, ...] = ("exact_match", "rouge_l")
    meta_columns: tuple[str, ...] = ()  # copied into Example.meta, for data filters
    name: str = "text"
    hf_dataset: str | None = None
    hf_splits: tuple[str, str, str] = ("train", "validation", "test")
    valid_fraction: float = 0.1

    def __post_init__(self):
        fix = functools.partial(object.__setattr__, self)  # frozen: normalize the fields once, here
        for key in SPLITS:
            path = getattr(self, key)
            if path is not None:
                if not isinstance(path, (str, os.PathLike)):
                    raise FtrayInputError(f"TextTask.{key} must be a .csv or .jsonl path, got {path!r}")
                # Resolved on the driver: Ray workers may run in another working directory.
                fix(key, os.path.abspath(os.path.expanduser(os.fspath(path))))
        # A single string or a list (unhashable, which the example cache needs) both become tuples.
        for key in ("metrics", "meta_columns", "hf_splits"):
            value = getattr(self, key)
            if not isinstance(value, (str, list, tuple)):
                raise FtrayInputError(f"TextTask.{key} must be a tuple or list of names, got {value!r}")
            fix(key, (value,) if isinstance(value, str) else tuple(value))
        self._validate()

    def _validate(self):
        if (self.train is None) == (self.hf_dataset is None):
            raise FtrayInputError("TextTask needs exactly one of train= (a .csv or .jsonl file) and hf_dataset=")
        unknown = [m for m in self.metrics if m not in KNOWN_METRICS]
        if unknown or not self.metrics:
            what = f"unknown metric {unknown[0]!r}" if unknown else "no metric given"
            raise FtrayInputError(f"TextTask.metrics: {what}; choose from {', '.join(KNOWN_METRICS)}")
        for key in ("prompt", "completion"):
            columns = _template_columns(getattr(self, key), f"TextTask.{key}")
            if key == "completion" and not columns:
                raise FtrayInputError(f"TextTask.completion must name a column, e.g. ' {{output}}'; "
                                      f"got {self.completion!r}")
        if not all(isinstance(c, str) and c for c in self.meta_columns):
            raise FtrayInputError(f"TextTask.meta_columns must be column names, got {self.meta_columns!r}")
        if len(self.hf_splits) != 3 or not all(isinstance(s, str) for s in self.hf_splits):
            raise FtrayInputError(f"TextTask.hf_splits must be 3 split names (train, valid, test), "
                                  f"got {self.hf_splits!r}")
        fraction = self.valid_fraction
        if not (is_number(fraction, plain=True) and 0 < fraction < 1):
            raise FtrayInputError(f"TextTask.valid_fraction must be a number in (0, 1), got {fraction!r}")
        if not isinstance(self.name, str) or not self.name:
            raise FtrayInputError(f"TextTask.name must be a non-empty string, got {self.name!r}")

    @property
    def metric_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for m in self.metrics:
            names += [k for k in (MR_METRIC_NAMES if m == "mr" else (m,)) if k not in names]
        return tuple(names)

    def examples(self, split: str) -> list[Example]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return list(_examples(self, split))

    def examples_from_file(self, path: str) -> list[Example]:
        """Examples from one more CSV/JSONL file in the task's format (new rows for `ftray eval`)."""
        path = os.path.abspath(os.path.expanduser(path))
        return list(_to_examples(self, read_rows(path), path))

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        return aggregate(self.score_rows(predictions, examples))

    def score_rows(self, predictions: Sequence[str], examples: Sequence[Example]) -> ScoreRows:
        refs = [e.completion.strip() for e in examples]
        rows: ScoreRows = {}
        if "mr" in self.metrics:
            rows.update(mr_rows(predictions, refs))
        if "exact_match" in self.metrics:  # with "mr" too, exact_match is the plain-text one
            rows["exact_match"] = exact_match_rows(predictions, refs)
        if "rouge_l" in self.metrics:
            rows["rouge_l"] = rouge_l_rows(predictions, refs)
        return rows


def _template_parts(template: str, where: str) -> tuple[tuple[str, str | None], ...]:
    """A template as (literal text, column or None) pairs; only plain `{column}` fields pass.

    Rows are filled by substituting these names (`_fill`), never by str.format on the template:
    a format spec like `{text:>100000}` could blow up every example, and `{text.__class__}` or
    `{row[0]}` would run lookups on the data. `{{` and `}}` stay literal braces.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except (ValueError, TypeError) as e:
        raise FtrayInputError(f"{where} is not a valid template ({e}): {template!r}") from None
    parts = []
    for literal, field, spec, conversion in parsed:
        if field is None:
            parts.append((literal, None))
            continue
        placeholder = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if not field or field.isdigit():
            raise FtrayInputError(f"{where} must name columns, e.g. '{{question}}', not use {placeholder!r}: "
                                  f"{template!r}")
        lookup = next((c for c in field if c in ".["), None)
        if lookup:
            reason = "indexing" if lookup == "[" else "attribute access"
        elif conversion:
            reason = f"a conversion (!{conversion})"
        elif spec:
            reason = f"a format spec (:{spec})"
        else:
            parts.append((literal, field))
            continue
        raise FtrayInputError(f"{where}: {placeholder!r} uses {reason}; templates take plain {{column}} fields "
                              f"only (write {{{{ and }}}} for literal braces): {template!r}")
    return tuple(parts)


def _template_columns(template: str, where: str) -> list[str]:
    """The columns a template names, in order ("{question} {answer}" -> question, answer)."""
    return [column for _, column in _template_parts(template, where) if column is not None]


def _fill(parts: tuple[tuple[str, str | None], ...], row: dict) -> str:
    """The template with each column's value put in; a KeyError names a column the row lacks."""
    return "".join(literal + (row[column] if column is not None else "") for literal, column in parts)


@functools.lru_cache(maxsize=16)
def _examples(task: TextTask, split: str) -> tuple[Example, ...]:
    """A split's examples, cached per process (workers of one trial process read the files once)."""
    if task.hf_dataset is not None:
        return _to_examples(task, *_hub_rows(task, split))
    holdout = split in ("train", "valid") and task.valid is None
    path = task.train if holdout else getattr(task, split)
    if path is None:
        return ()
    examples = _to_examples(task, read_rows(path), path)  # every row is checked, held out or not
    if not holdout:
        return examples
    order = list(range(len(examples)))
    random.Random(HOLDOUT_SEED).shuffle(order)
    held = set(order[: max(1, int(len(examples) * task.valid_fraction))])
    return tuple(e for i, e in enumerate(examples) if (i in held) == (split == "valid"))


def _to_examples(task: TextTask, rows: list[dict], source: str) -> tuple[Example, ...]:
    """Rows (dicts of strings) to Examples; row numbers in errors count data rows from 1."""
    prompt_parts = _template_parts(task.prompt, "TextTask.prompt")
    completion_parts = _template_parts(task.completion, "TextTask.completion")
    out = []
    for i, row in enumerate(rows, 1):
        try:
            prompt, completion = _fill(prompt_parts, row), _fill(completion_parts, row)
        except KeyError as e:
            raise FtrayInputError(
                f"{source}: row {i} has no column {e.args[0]!r}, which the templates name; "
                f"its columns are: {', '.join(row) or '(none)'}"
            ) from None
        if not completion.strip():
            raise FtrayInputError(f"{source}: row {i}: the completion is empty")
        meta = {}
        for column in task.meta_columns:
            if column not in row:
                raise FtrayInputError(f"{source}: row {i} has no column {column!r}, which meta_columns names")
            meta[column] = row[column]
        out.append(Example(prompt, completion, meta))
    return tuple(out)


def _hub_rows(task: TextTask, split: str) -> tuple[list[dict], str]:
    hf_split = dict(zip(SPLITS, task.hf_splits))[split]
    source = f"{task.hf_dataset}[{hf_split}]"
    try:
        import datasets

        ds = datasets.load_dataset(task.hf_dataset, split=hf_split)
    except Exception as e:  # no hub, no such dataset, no such split: say which and why
        first_line = (str(e).splitlines() or [""])[0][:200]
        raise HubUnavailable(f"TextTask: cannot load {source} ({type(e).__name__}: {first_line})") from None
    rows = [{k: "" if v is None else str(v) for k, v in r.items()} for r in ds]
    if not rows:
        raise FtrayInputError(f"{source} is empty (no rows)")
    return rows, source
