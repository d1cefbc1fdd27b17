"""Scoring generated text: exact match, ROUGE-L, and ViGGO-style meaning representations.

A meaning representation (MR) looks like
    inform(name[Tom Clancy's The Division], genres[role-playing, shooter], rating[average])
a dialogue act with slots. List values are compared as sets, so "shooter, role-playing" is as right
as "role-playing, shooter".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

# What `mr_metrics` returns, in the order reports show it.
MR_METRIC_NAMES = ("exact_match", "act_accuracy", "slot_precision", "slot_recall", "slot_f1", "parse_failure_rate")

# Each metric's direction, declared beside its definition: "max" where a larger value is better. Every
# metric ftray computes is here (eval_loss is ftray/train/evaluate.py's); a task with metrics of its own
# declares theirs in Task.metric_mode. Nothing guesses a direction from a metric's name.
MODES = {"eval_loss": "min", "exact_match": "max", "act_accuracy": "max", "slot_precision": "max",
         "slot_recall": "max", "slot_f1": "max", "parse_failure_rate": "min", "rouge_l": "max"}


def sign(mode: str) -> float:
    """+1 where a larger value is better ("max"), -1 where a smaller one is ("min"): sign(mode) * value
    is larger for the better of two values, whatever the mode."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    return 1.0 if mode == "max" else -1.0


def normalize_text(s: str) -> str:
    return " ".join(s.lower().split())


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    # zip would silently score a prefix; a length mismatch is always a caller's bug.
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


Row = tuple[float, float]  # (numerator, denominator): a metric is sum(num) / sum(den) over rows


def ratio_of_sums(rows: Sequence[Row]) -> float:
    """sum(num) / sum(den); 0.0 when the denominators sum to 0 (no rows, or e.g. no predicted pairs)."""
    den = sum(d for _, d in rows)
    return sum(n for n, _ in rows) / den if den else 0.0


def aggregate(rows: dict[str, list[Row]]) -> dict[str, float]:
    """Each metric's value from its per-row (num, den) pairs."""
    return {k: ratio_of_sums(v) for k, v in rows.items()}


def exact_match_rows(predictions: Sequence[str], references: Sequence[str]) -> list[Row]:
    _check_lengths(predictions, references)
    return [(float(normalize_text(p) == normalize_text(r)), 1.0) for p, r in zip(predictions, references)]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference, ignoring case and whitespace."""
    return ratio_of_sums(exact_match_rows(predictions, references))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence, one row of the dynamic programme at a time (O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_rows(predictions: Sequence[str], references: Sequence[str]) -> list[Row]:
    """Per pair: (ROUGE-L F1 on normalized whitespace tokens, 1)."""
    _check_lengths(predictions, references)
    out = []
    for p, r in zip(predictions, references):
        pred, ref = normalize_text(p).split(), normalize_text(r).split()
        lcs = _lcs_length(pred, ref)
        f1 = 0.0
        if lcs:
            precision, recall = lcs / len(pred), lcs / len(ref)
            f1 = 2 * precision * recall / (precision + recall)
        out.append((f1, 1.0))
    return out


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over pairs, on normalized whitespace tokens."""
    return ratio_of_sums(rouge_l_rows(predictions, references))


@dataclass(frozen=True)
class ParsedMR:
    act: str
    slots: dict[str, frozenset[str]]  # slot -> normalized values; empty for a value-less slot like esrb[]

    def pairs(self) -> set[tuple[str, str]]:
        """(slot, value) pairs. A value-less slot is still a claim the MR makes, so it counts as (slot, "")."""
        return {(slot, value) for slot, values in self.slots.items() for value in (values or {""})}


_MR = re.compile(r"\s*(\w+)\s*\((.*)\)\s*", re.S)
# Values may hold commas and parentheses (ViGGO has "E 10+ (for Everyone 10 and Older)") but never brackets.
_SLOT = re.compile(r"\s*(\w+)\s*\[([^\[\]]*)\]\s*(?:,|$)")


def parse_mr(s: str) -> ParsedMR | None:
    """Parse an MR; None when the text is not one (a model's output may be anything)."""
    m = _MR.fullmatch(s or "")
    if not m:
        return None
    act, body = m.group(1).lower(), m.group(2).strip()
    slots: dict[str, frozenset[str]] = {}
    pos = 0
    while pos < len(body):
        sm = _SLOT.match(body, pos)
        if not sm:
            return None
        # Split on "," rather than ", " so that "genres[a,b]" from a model still counts as two genres.
        values = frozenset(v for v in (normalize_text(x) for x in sm.group(2).split(",")) if v)
        name = sm.group(1).lower()
        slots[name] = slots.get(name, frozenset()) | values
        pos = sm.end()
    return ParsedMR(act, slots)


def normalize_mr(s: str) -> str | None:
    """Canonical text of an MR (slots and list values sorted, lowercase); None if it does not parse."""
    mr = parse_mr(s)
    if mr is None:
        return None
    inner = ", ".join(f"{slot}[{', '.join(sorted(values))}]" for slot, values in sorted(mr.slots.items()))
    return f"{mr.act}({inner})"


def mr_rows(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[Row]]:
    """Per row, each MR metric as (num, den), so that sum(num) / sum(den) over rows is the metric.

    Micro slot precision is (true positives, predicted pairs), recall (true positives, reference
    pairs), and F1 (2 tp, predicted + reference pairs): 2PR / (P + R) reduces to 2tp / (np + nr),
    and both are 0 when there are no true positives. A prediction that does not parse has no pairs:
    it adds nothing to precision's denominator, and all of its reference's pairs count as missed.
    """
    _check_lengths(predictions, references)
    out: dict[str, list[Row]] = {k: [] for k in MR_METRIC_NAMES}
    for p, r in zip(predictions, references):
        ref, pred = parse_mr(r), parse_mr(p)
        ref_pairs = ref.pairs() if ref else set()
        pred_pairs = pred.pairs() if pred else set()
        tp, n_pred, n_ref = len(pred_pairs & ref_pairs), len(pred_pairs), len(ref_pairs)
        act_hit = pred is not None and ref is not None and pred.act == ref.act
        row = {"exact_match": (float(act_hit and pred.slots == ref.slots), 1.0),
               "act_accuracy": (float(act_hit), 1.0),
               "slot_precision": (float(tp), float(n_pred)),
               "slot_recall": (float(tp), float(n_ref)),
               "slot_f1": (2.0 * tp, float(n_pred + n_ref)),
               "parse_failure_rate": (float(pred is None), 1.0)}
        for k, v in row.items():
            out[k].append(v)
    return out


def mr_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Exact match of the normalized MR, dialogue-act accuracy, micro slot precision/recall/F1 over
    (slot, value) pairs, and the share of predictions that do not parse (see `mr_rows`)."""
    return aggregate(mr_rows(predictions, references))
