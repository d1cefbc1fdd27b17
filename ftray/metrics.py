"""Scoring generated text: exact match, ROUGE-L, and ViGGO-style meaning representations.

A meaning representation (MR) looks like
    inform(name[Tom Clancy's The Division], genres[role-playing, shooter], rating[average])
a dialogue act with slots; list values are compared as sets, so "shooter, role-playing" is as right
as "role-playing, shooter".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence


def normalize_text(s: str) -> str:
    return " ".join(s.lower().split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not references:
        return 0.0
    return sum(normalize_text(p) == normalize_text(r) for p, r in zip(predictions, references)) / len(references)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over pairs, on lowercased whitespace tokens."""
    if not references:
        return 0.0
    total = 0.0
    for p, r in zip(predictions, references):
        pt, rt = normalize_text(p).split(), normalize_text(r).split()
        lcs = _lcs(pt, rt)
        if lcs:
            prec, rec = lcs / len(pt), lcs / len(rt)
            total += 2 * prec * rec / (prec + rec)
    return total / len(references)


@dataclass(frozen=True)
class ParsedMR:
    act: str
    slots: dict  # slot name -> frozenset of normalised values (empty set for "esrb[]")

    def pairs(self) -> set[tuple[str, str]]:
        """(slot, value) pairs; a slot with no value counts as (slot, "")."""
        return {(k, v) for k, vals in self.slots.items() for v in (vals or {""})}


_MR = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.S)
_SLOT = re.compile(r"\s*([A-Za-z_]+)\s*\[([^\[\]]*)\]\s*(,|$)")


def parse_mr(s: str) -> ParsedMR | None:
    """Parse an MR; None when it is not one (the model's output may be anything)."""
    m = _MR.match(s or "")
    if not m:
        return None
    act, body = m.group(1).lower(), m.group(2).strip()
    slots: dict[str, frozenset] = {}
    pos = 0
    while pos < len(body):
        sm = _SLOT.match(body, pos)
        if not sm:
            return None
        values = [normalize_text(v) for v in sm.group(2).split(",")]
        slots[sm.group(1).lower()] = frozenset(v for v in values if v)
        pos = sm.end()
    return ParsedMR(act, slots)


def normalize_mr(s: str) -> str | None:
    mr = parse_mr(s)
    if mr is None:
        return None
    inner = ", ".join(f"{k}[{', '.join(sorted(v))}]" for k, v in sorted(mr.slots.items()))
    return f"{mr.act}({inner})"


def mr_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Exact match of the normalised MR, dialogue-act accuracy, micro slot precision/recall/F1 over
    (slot, value) pairs, and the share of predictions that do not parse.

    A prediction that does not parse has no pairs: all of its reference's pairs are missed.
    """
    n = len(references)
    if n == 0:
        return {k: 0.0 for k in ("exact_match", "act_accuracy", "slot_precision", "slot_recall", "slot_f1",
                                 "parse_failure_rate")}
    exact = act = failures = 0
    tp = n_pred = n_ref = 0
    for p, r in zip(predictions, references):
        ref = parse_mr(r)
        pred = parse_mr(p)
        ref_pairs = ref.pairs() if ref else set()
        n_ref += len(ref_pairs)
        if pred is None:
            failures += 1
            continue
        pred_pairs = pred.pairs()
        n_pred += len(pred_pairs)
        tp += len(pred_pairs & ref_pairs)
        act += ref is not None and pred.act == ref.act
        exact += ref is not None and pred.act == ref.act and pred.slots == ref.slots
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "exact_match": exact / n,
        "act_accuracy": act / n,
        "slot_precision": precision,
        "slot_recall": recall,
        "slot_f1": f1,
        "parse_failure_rate": failures / n,
    }
