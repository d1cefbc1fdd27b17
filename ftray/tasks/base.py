"""What every task provides: examples as prompt/completion pairs, and a scorer for generated text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ftray.errors import FtrayInputError
from ftray.tasks.metrics import MODES


# Per metric, one (num, den) per row: the metric over any rows is sum(num) / sum(den).
ScoreRows = dict[str, list[tuple[float, float]]]


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str
    # Columns a sweep may filter on (e.g. ViGGO's dialogue act); values are strings.
    meta: Mapping[str, str] = field(default_factory=dict)


class Task:
    """A task: where the data comes from, how a row becomes an Example, how an answer is scored.

    Subclasses are small picklable dataclasses: they travel from the driver to every Train worker.
    """

    name: str = "task"
    # Metric names that `score` returns; each one's direction is `metric_mode`'s.
    metric_names: tuple[str, ...] = ()

    def metric_mode(self, name: str) -> str:
        """"max" where a larger value of metric `name` is better, else "min". ftray's own metrics declare
        theirs in ftray.tasks.metrics.MODES; a task that scores metrics of its own overrides this."""
        if name not in MODES:
            raise FtrayInputError(f"task {self.name!r} does not say whether a larger {name} is better: give the "
                                  "sweep mode='max' or 'min', or define the task's metric_mode")
        return MODES[name]

    def examples(self, split: str) -> list[Example]:
        """All examples of a split ("train", "valid" or "test"), in a fixed order."""
        raise NotImplementedError

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        """Score generated completions against the examples' reference completions."""
        raise NotImplementedError

    def score_rows(self, predictions: Sequence[str], examples: Sequence[Example]) -> ScoreRows:
        """Per row, each metric as (num, den): the metric over any subset of rows is sum(num) / sum(den).

        These let the report put intervals on scores and pair two trials row by row. This default
        scores each row alone and takes den 1 (a mean over rows); it equals `score` for metrics that
        are means over rows. A metric pooled over rows (a micro F1) should override this.
        """
        if len(predictions) != len(examples):
            raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
        out: ScoreRows = {}
        for p, e in zip(predictions, examples):
            for k, v in self.score([p], [e]).items():
                out.setdefault(k, []).append((float(v), 1.0))
        return out

    def examples_from_file(self, path: str) -> list[Example]:
        """Examples from a data file in the task's own format (for scoring saved adapters on new rows)."""
        raise FtrayInputError(f"task {self.name!r} reads no data files; `ftray eval --data` needs a ViggoTask or TextTask")

    def check(self) -> None:
        """Load the train and valid splits so that bad data fails before any Ray work."""
        for split in ("train", "valid"):
            if not self.examples(split):
                raise FtrayInputError(f"task {self.name!r}: the {split!r} split has no examples")
