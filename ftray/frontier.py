"""Frontier analysis: pure functions over trial records (no Ray)."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence


def pareto_front(points: Sequence[tuple[str, float, float]], mode: str) -> list[str]:
    """Ids of the points not dominated in (objective, size): better objective and no larger size.

    `points` are (id, objective, size); `mode` says whether a larger objective is better ("max").
    A point is dominated when another is at least as good on both axes and strictly better on one.
    Exact ties are all kept: neither dominates the other.
    """
    sign = 1.0 if mode == "max" else -1.0
    front = []
    for pid, obj, size in points:
        dominated = any(
            sign * o >= sign * obj and s <= size and (sign * o > sign * obj or s < size)
            for qid, o, s in points
            if qid != pid
        )
        if not dominated:
            front.append(pid)
    return front


def trial_front(trials: Iterable[Mapping], mode: str, size_key: str = "params") -> list[str]:
    """The frontier over finished trials with an objective, by parameter count (or another size)."""
    points = [(t["id"], t["objective"], t[size_key]) for t in trials if is_scored(t)]
    points.sort(key=lambda p: (p[2], p[0]))
    return pareto_front(points, mode)


def is_scored(trial: Mapping) -> bool:
    return trial.get("objective") is not None and trial.get("status") == "TERMINATED" and not trial.get("reason")
