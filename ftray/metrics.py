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


def normalize_text(s: str) -> str:
    return " ".join(s.lower().split())


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    # zip would silently score a prefix; a length mismatch is always a caller's bug.
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference, ignoring case and whitespace."""
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    hits = sum(normalize_text(p) == normalize_text(r) for p, r in zip(predictions, references))
    return hits / len(references)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence, one row of the dynamic programme at a time (O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over pairs, on normalized whitespace tokens."""
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    total = 0.0
    for p, r in zip(predictions, references):
        pred, ref = normalize_text(p).split(), normalize_text(r).split()
        lcs = _lcs_length(pred, ref)
        if lcs:
            precision, recall = lcs / len(pred), lcs / len(ref)
            total += 2 * precision * recall / (precision + recall)
    return total / len(references)


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


def mr_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Exact match of the normalized MR, dialogue-act accuracy, micro slot precision/recall/F1 over
    (slot, value) pairs, and the share of predictions that do not parse.

    A prediction that does not parse has no pairs: it adds nothing to precision's denominator, and all
    of its reference's pairs count as missed.
    """
    _check_lengths(predictions, references)
    n = len(references)
    if n == 0:
        return {k: 0.0 for k in MR_METRIC_NAMES}
    exact = act_hits = failures = 0
    true_pos = n_pred = n_ref = 0
    for p, r in zip(predictions, references):
        ref, pred = parse_mr(r), parse_mr(p)
        ref_pairs = ref.pairs() if ref else set()
        n_ref += len(ref_pairs)
        if pred is None:
            failures += 1
            continue
        pred_pairs = pred.pairs()
        n_pred += len(pred_pairs)
        true_pos += len(pred_pairs & ref_pairs)
        if ref is not None and pred.act == ref.act:
            act_hits += 1
            exact += pred.slots == ref.slots
    precision = true_pos / n_pred if n_pred else 0.0
    recall = true_pos / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "exact_match": exact / n,
        "act_accuracy": act_hits / n,
        "slot_precision": precision,
        "slot_recall": recall,
        "slot_f1": f1,
        "parse_failure_rate": failures / n,
    }
