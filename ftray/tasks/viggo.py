"""ViGGO: video game sentences and their meaning representations (Juraska et al., INLG 2019).

Read from a local folder of train.csv / valid.csv / test.csv (columns mr, ref) or from the Hugging
Face dataset GEM/viggo. The default direction is text -> meaning representation.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Sequence

from ftray.errors import FtrayInputError, HubUnavailable
from ftray.tasks.metrics import MR_METRIC_NAMES, aggregate, exact_match_rows, mr_rows, parse_mr, rouge_l_rows
from ftray.tasks._files import read_rows
from ftray.tasks.base import Example, ScoreRows, Task

DIRECTIONS = ("text_to_mr", "mr_to_text")
SPLIT_FILES = {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}
HF_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
HF_COLUMNS = ("meaning_representation", "target")


@dataclass(frozen=True)
class ViggoTask(Task):
    path: str | None = None  # a folder with train.csv, valid.csv, test.csv; None: the hub dataset
    hf_dataset: str = "GEM/viggo"
    direction: str = "text_to_mr"  # or "mr_to_text"

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise FtrayInputError(f"ViggoTask.direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.path is not None:
            if not isinstance(self.path, (str, os.PathLike)):
                raise FtrayInputError(f"ViggoTask.path must be a folder path, got {self.path!r}")
            # Pin a relative path to the driver's working directory now: Ray workers that load the
            # data later may run in another directory (Tune's trial folders).
            object.__setattr__(self, "path", os.path.abspath(os.path.expanduser(os.fspath(self.path))))
            if not os.path.isdir(self.path):
                raise FtrayInputError(f"ViggoTask.path {self.path!r} is not a folder "
                                      f"(expected one with {', '.join(SPLIT_FILES.values())})")

    @property
    def name(self) -> str:
        return "viggo"

    @property
    def metric_names(self) -> tuple[str, ...]:
        return MR_METRIC_NAMES if self.direction == "text_to_mr" else ("exact_match", "rouge_l")

    def examples(self, split: str) -> list[Example]:
        return self._examples(_load(self.path, self.hf_dataset, split))

    def examples_from_file(self, path: str) -> list[Example]:
        """Examples from one more CSV file with columns mr, ref (new rows for `ftray eval`)."""
        path = os.path.abspath(os.path.expanduser(path))
        return self._examples(_checked([(r["mr"], r["ref"]) for r in read_rows(path, required=("mr", "ref"))], path))

    def _examples(self, triples) -> list[Example]:
        out = []
        for mr, ref, act in triples:
            if self.direction == "text_to_mr":
                out.append(Example(f"Sentence: {ref}\nMeaning representation:", " " + mr, {"dialogue_act": act}))
            else:
                out.append(Example(f"Meaning representation: {mr}\nSentence:", " " + ref, {"dialogue_act": act}))
        return out

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        return aggregate(self.score_rows(predictions, examples))

    def score_rows(self, predictions: Sequence[str], examples: Sequence[Example]) -> ScoreRows:
        refs = [e.completion.strip() for e in examples]
        if self.direction == "text_to_mr":
            return mr_rows(predictions, refs)
        return {"exact_match": exact_match_rows(predictions, refs), "rouge_l": rouge_l_rows(predictions, refs)}


@functools.lru_cache(maxsize=16)
def _load(path: str | None, hf_dataset: str, split: str) -> tuple[tuple[str, str, str], ...]:
    """(mr, ref, dialogue act) triples of a split, every row checked.

    Cached per process: a sweep's trials on one worker process share one read of the files.
    Row numbers in errors count data rows from 1 (a CSV's header line is not a row).
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_FILES)}")
    if path is not None:
        source = os.path.join(path, SPLIT_FILES[split])
        pairs = [(row["mr"], row["ref"]) for row in read_rows(source, required=("mr", "ref"))]
    else:
        source = f"{hf_dataset}[{HF_SPLITS[split]}]"
        pairs = _hub_pairs(hf_dataset, split, source)
    return _checked(pairs, source)


def _checked(pairs, source: str) -> tuple[tuple[str, str, str], ...]:
    out = []
    for i, (mr, ref) in enumerate(pairs, 1):
        mr, ref = (mr or "").strip(), " ".join((ref or "").split())
        parsed = parse_mr(mr)
        if parsed is None:
            raise FtrayInputError(f"{source}: row {i}: the mr {mr[:80]!r} is not a meaning representation "
                                  "like inform(name[...], genres[...])")
        if not ref:
            raise FtrayInputError(f"{source}: row {i}: the ref is empty")
        out.append((mr, ref, parsed.act))
    return tuple(out)


def _hub_pairs(hf_dataset: str, split: str, source: str) -> list[tuple[str, str]]:
    try:
        import datasets

        ds = datasets.load_dataset(hf_dataset, split=HF_SPLITS[split])
    except Exception as e:  # no hub, no such dataset, no such split: say which and why
        first_line = (str(e).splitlines() or [""])[0][:200]
        raise HubUnavailable(
            f"ViggoTask: cannot load {source} from the Hugging Face hub ({type(e).__name__}: {first_line}); "
            "pass path= a local folder with train.csv, valid.csv, test.csv instead"
        ) from None
    missing = [c for c in HF_COLUMNS if c not in ds.column_names]
    if missing:
        raise FtrayInputError(f"{source} has no column {missing[0]!r}; its columns are: {', '.join(ds.column_names)}")
    if len(ds) == 0:
        raise FtrayInputError(f"{source} is empty (no rows)")
    return list(zip(ds[HF_COLUMNS[0]], ds[HF_COLUMNS[1]]))
