"""ViGGO: video game sentences and their meaning representations (Juraska et al., INLG 2019).

Read from a local folder of train.csv / valid.csv / test.csv (columns mr, ref) or from the Hugging
Face dataset GEM/viggo on a cluster. The default direction is text -> meaning representation.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Sequence

from ftray.errors import FtrayInputError, HubUnavailable
from ftray.metrics import mr_metrics, parse_mr, rouge_l, exact_match
from ftray.tasks._files import read_rows
from ftray.tasks.base import Example, Task

MR_METRICS = ("exact_match", "act_accuracy", "slot_precision", "slot_recall", "slot_f1", "parse_failure_rate")
SPLIT_FILES = {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}
HF_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


@dataclass(frozen=True)
class ViggoTask(Task):
    path: str | None = None  # a folder with train.csv, valid.csv, test.csv; None: the hub dataset
    hf_dataset: str = "GEM/viggo"
    direction: str = "text_to_mr"  # or "mr_to_text"

    def __post_init__(self):
        if self.direction not in ("text_to_mr", "mr_to_text"):
            raise FtrayInputError(f"ViggoTask.direction must be 'text_to_mr' or 'mr_to_text', got {self.direction!r}")
        if self.path is not None:
            object.__setattr__(self, "path", os.path.abspath(os.path.expanduser(self.path)))
            if not os.path.isdir(self.path):
                raise FtrayInputError(f"ViggoTask.path {self.path!r} is not a folder")

    @property
    def name(self) -> str:
        return "viggo"

    @property
    def metric_names(self) -> tuple[str, ...]:
        return MR_METRICS if self.direction == "text_to_mr" else ("exact_match", "rouge_l")

    def examples(self, split: str) -> list[Example]:
        pairs = _load(self.path, self.hf_dataset, split)
        out = []
        for mr, ref, act in pairs:
            if self.direction == "text_to_mr":
                out.append(Example(f"Sentence: {ref}\nMeaning representation:", " " + mr, {"dialogue_act": act}))
            else:
                out.append(Example(f"Meaning representation: {mr}\nSentence:", " " + ref, {"dialogue_act": act}))
        return out

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        refs = [e.completion.strip() for e in examples]
        if self.direction == "text_to_mr":
            return mr_metrics(predictions, refs)
        return {"exact_match": exact_match(predictions, refs), "rouge_l": rouge_l(predictions, refs)}


@functools.lru_cache(maxsize=16)
def _load(path: str | None, hf_dataset: str, split: str) -> tuple[tuple[str, str, str], ...]:
    """(mr, ref, dialogue act) triples of a split, checked row by row."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}")
    if path is not None:
        file = os.path.join(path, SPLIT_FILES[split])
        rows = read_rows(file, required=("mr", "ref"))
        raw = [(r["mr"], r["ref"]) for r in rows]
    else:
        try:
            import datasets

            ds = datasets.load_dataset(hf_dataset, split=HF_SPLITS[split])
        except Exception as e:  # no hub, no such dataset: say which and why
            raise HubUnavailable(
                f"ViggoTask: cannot load {hf_dataset!r} split {HF_SPLITS[split]!r} from the Hugging Face hub "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); pass path= a local folder instead"
            ) from None
        file = f"{hf_dataset}[{HF_SPLITS[split]}]"
        raw = list(zip(ds["meaning_representation"], ds["target"]))
    out = []
    for i, (mr, ref) in enumerate(raw, 1):
        parsed = parse_mr(mr or "")
        if parsed is None:
            raise FtrayInputError(f"{file}: row {i}: the mr {(mr or '')[:80]!r} is not a meaning representation "
                                  "like inform(name[...], ...)")
        if not (ref or "").strip():
            raise FtrayInputError(f"{file}: row {i}: the ref is empty")
        out.append((mr.strip(), " ".join(ref.split()), parsed.act))
    return tuple(out)
