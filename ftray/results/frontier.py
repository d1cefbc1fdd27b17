"""Frontier analysis: pure functions over `TrialResult`s (no Ray)."""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

from ftray.results import digits, stats
from ftray.tasks.metrics import sign
from ftray.results.evidence import (Evidence, answer, cells, mean_objective, power_law, rows_need, source_view,
                                    target_check)
from ftray.results.levers import leverage
from ftray.results.trialresult import TrialResult


def pareto_front(points: Sequence[tuple[str, float, float]], mode: str) -> list[str]:
    """Ids of the points not dominated in (objective, size): better objective and no larger size.

    `points` are (id, objective, size); `mode` says whether a larger objective is better ("max").
    A point is dominated when another is at least as good on both axes and strictly better on one.
    Exact ties are all kept: neither dominates the other.
    """
    up = sign(mode)
    front = []
    for pid, obj, size in points:
        dominated = any(
            up * o >= up * obj and s <= size and (up * o > up * obj or s < size)
            for qid, o, s in points
            if qid != pid
        )
        if not dominated:
            front.append(pid)
    return front


def trial_front(trials: Iterable[TrialResult], mode: str) -> list[str]:
    """The frontier over finished trials with an objective, by parameter count."""
    points = [(t.id, t.objective, t.params) for t in trials if t.scored]
    points.sort(key=lambda p: (p[2], p[0]))
    return pareto_front(points, mode)


def decide_front(trials: Sequence[TrialResult], metric: str, mode: str) -> list[str]:
    """The run's front, decided here once: by parameters, on held-out test scores where every scored
    trial has them, else on validation scores (`source_view`), as the report's verdicts read them.

    The end-of-sweep pruning keeps this front's adapters, frontier.csv marks it, the table and plots
    show it and W&B records it: two fronts (validation for pruning, test for the verdicts) could
    delete the adapter a verdict rests on.
    """
    return trial_front(source_view(trials, metric)[1], mode)


# ---- hypervolume -------------------------------------------------------------------------------
def hypervolume_2d(points: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Exact area dominated by `points` and bounded by `ref`, both coordinates minimised.

    Points that do not strictly beat the reference on both coordinates add nothing. One sweep over
    the points sorted by the first coordinate: each adds the strip it improves on the second.
    """
    pts = sorted((x, y) for x, y in points if x < ref[0] and y < ref[1])
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def _minimised(t: TrialResult, mode: str, log_size: bool) -> tuple[float, float]:
    size = float(t.params)
    return (-sign(mode) * t.objective,
            math.log10(size) if log_size else size)


def front_hypervolume(trials: Iterable[TrialResult], mode: str, ref: tuple[float, float],
                      log_size: bool = True) -> float:
    """Hypervolume of the scored trials in (objective, size) against `ref` = (objective, size) in the
    original units: an objective no better than ref[0] and a size no smaller than ref[1] add nothing.
    Size is taken as log10, so each 10x in parameters weighs the same."""
    ref_min = (-sign(mode) * ref[0], math.log10(ref[1]) if log_size else ref[1])
    pts = [_minimised(t, mode, log_size) for t in trials if t.scored and t.params]
    return hypervolume_2d(pts, ref_min)


def default_reference(runs: Sequence[Sequence[TrialResult]], mode: str,
                      margin: float = 0.1) -> tuple[float, float]:
    """A reference point common to several runs: twice the largest size, and the worst objective seen
    made worse by `margin` of the objectives' range (of the value itself when all are equal), so
    that the worst trial on a front, or a front of one trial, still counts."""
    scored = [t for trials in runs for t in trials if t.scored and t.params]
    if not scored:
        return (0.0, 1.0)
    values = [t.objective for t in scored]
    worst = min(values, key=lambda v: sign(mode) * v)
    span = (max(values) - min(values)) or abs(worst) or 1.0
    return (worst - sign(mode) * margin * span,
            2.0 * max(t.params for t in scored))


def cost_front(trials: Iterable[TrialResult], mode: str, cost: str = "accelerator_s") -> list[str]:
    """Pareto set over (objective, cost): accelerator seconds (wall x accelerators) or tokens."""
    points = []
    for t in trials:
        if not t.scored:
            continue
        c = _cost(t, cost)
        if c is not None:
            points.append((t.id, t.objective, c))
    points.sort(key=lambda p: (p[2], p[0]))
    return pareto_front(points, mode)


def _cost(t: TrialResult, cost: str) -> float | None:
    return t.tokens if cost == "tokens" else t.accelerator_s


# ---- the questions a team asks -------------------------------------------------------------------
def _better(a: float, b: float, mode: str) -> bool:
    return sign(mode) * (a - b) > 0


def _best(trials: Iterable[TrialResult], mode: str) -> TrialResult | None:
    best = None
    for t in trials:
        if t.scored and (best is None or _better(t.objective, best.objective, mode)):
            best = t
    return best


def smallest_meeting_target(trials: Iterable[TrialResult], target: float, mode: str) -> dict | None:
    """The smallest model whose best trial reaches `target`, with the margin (positive: past it)."""
    meeting = [t for t in trials if t.scored and sign(mode) * (t.objective - target) >= 0]
    if not meeting:
        return None
    smallest = min(t.params for t in meeting)
    best = _best([t for t in meeting if t.params == smallest], mode)
    return {"model": best.model, "params": best.params, "trial": best.id, "objective": best.objective,
            "margin": sign(mode) * (best.objective - target)}


def setting_effects(trials: Sequence[TrialResult], mode: str, settings: Sequence[str] | None = None,
                    continuous: Iterable[str] | None = None, metric: str = "objective",
                    evidence: Evidence | None = None) -> dict:
    """Within each model, how each swept setting moves the objective (what makes it better or worse).

    Few distinct values: the mean objective per value. Many (e.g. the learning rate): low and high
    halves split at the median, and Spearman's rank correlation. The effect is the best group mean
    minus the worst, so settings can be ranked by how much they matter. With per-row scores the
    effect has an interval that resamples rows and, within each group, its trials.
    """
    scored = [t for t in trials if t.scored]
    ev = evidence or Evidence(scored, metric)
    out: dict = {}
    for model in sorted({t.model for t in scored}):
        group = [t for t in scored if t.model == model]
        keys = settings or sorted({k for t in group for k in t.config} - {"model", "model_params", "seed"})
        effects = {key: e for key in keys if (e := _effect(group, key, mode, continuous, ev))}
        lines = []
        top = max(effects, key=lambda k: effects[k]["effect"]) if effects else None
        if top is not None and math.isclose(effects[top]["effect"], 0, abs_tol=1e-12):  # means of equal scores
            lines.append(f"{model}: no swept setting made a difference: every value of "
                         f"{', '.join(effects)} scored the same, {len(group)} trials")
        elif top is not None:
            e = effects[top]
            shown = digits.format_interval(e["interval"], True, e["effect"])
            where = f"{shown} from {e['worst']} to {e['best']}, {len(group)} trials"
            if e["answer"] in ("better", "no interval"):
                lines.append(f"{model}: {top} matters most ({where})")
            else:
                need = f"about {e['rows_needed']:,} evaluation rows, or " if e["rows_needed"] else ""
                lines.append(f"{model}: undecided which setting matters: the largest effect, {top} ({where}), "
                             f"has an interval that reaches 0; to decide: {need}more trials at each value")
        out[model] = {"settings": effects, "lines": lines}
    return out


def _effect(group: Sequence[TrialResult], key: str, mode: str, continuous, ev: Evidence) -> dict | None:
    up = sign(mode)
    pairs = [(t.config[key], t) for t in group
             if isinstance(t.config.get(key), (int, float)) and not isinstance(t.config[key], bool)]
    values = sorted({v for v, _ in pairs})
    if len(values) < 2:
        return None
    # Discrete: a choice of a few values (rank 4 / 16). Continuous: drawn from a range (lr).
    if continuous is not None:
        discrete = key not in continuous and len(values) <= 8
    else:
        discrete = len(values) <= 6 and (len(values) < len(pairs) or all(isinstance(v, int) for v in values))
    if discrete:
        groups = {f"{v:g}": [t for x, t in pairs if x == v] for v in values}
    else:
        median = sorted(v for v, _ in pairs)[len(pairs) // 2]
        groups = {f"below {median:.3g}": [t for x, t in pairs if x < median],
                  f"{median:.3g} and above": [t for x, t in pairs if x >= median]}
    groups = {k: v for k, v in groups.items() if v}
    means = {k: sum(t.objective for t in v) / len(v) for k, v in groups.items()}
    # Worst to best; where every group scores the same, still two different groups (lowest and highest
    # value: a stable sort keeps ties in order), so the report says "no difference", not "from 4 to 4".
    order = sorted(means, key=lambda k: up * means[k])
    worst, best = order[0], order[-1]
    effect = up * (means[best] - means[worst])
    both = groups[best] + groups[worst]
    reps, rows = ev.reps(groups[best]), ev.reps(groups[best], seeds=False)
    if reps is not None and ev.covers(groups[worst]):
        reps = up * (reps - ev.reps(groups[worst]))
        rows = up * (rows - ev.reps(groups[worst], seeds=False))
    else:
        reps = rows = None
    iv = ev.interval(effect, reps, ev.rows(both))
    need = rows_need(ev, effect, rows, both, reps) if iv and answer(iv) != "better" else None
    return {"means": means, "counts": {k: len(v) for k, v in groups.items()}, "best": best, "worst": worst,
            "effect": effect, "spearman": _spearman([v for v, _ in pairs], [t.objective for _, t in pairs]),
            "interval": iv, "answer": answer(iv, "better", "worse"), "rows_needed": need and need["rows"]}


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):  # ties share their mean rank
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    if len(xs) < 3:
        return None
    rx, ry = ranks(list(xs)), ranks(list(ys))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return sxy / (sx * sy) if sx and sy else None


def iteration_time(trials: Sequence[TrialResult]) -> dict:
    """Wall time per trial for each model size, and what the whole sweep cost (failed trials too; not the
    trials that have not ended, whose time so far is part of theirs)."""
    timed = [t for t in trials if t.wall_s is not None and t.ended]
    per_model = {}
    for model in sorted({t.model for t in timed}, key=lambda m: min(t.params for t in timed if t.model == m)):
        walls = sorted(t.wall_s for t in timed if t.model == model)
        acc = sorted(_cost(t, "accelerator_s") for t in timed if t.model == model)
        steps = [t.step_s for t in timed if t.model == model and t.step_s is not None]
        per_model[model] = {"n": len(walls), "median_s": _median(walls), "min_s": walls[0], "max_s": walls[-1],
                            "median_accelerator_s": _median(acc), "median_step_s": _median(steps) if steps else None}
    total_wall = sum(t.wall_s for t in timed)
    total_acc = sum(_cost(t, "accelerator_s") for t in timed)
    return {"per_model": per_model, "total_trial_s": total_wall, "total_accelerator_s": total_acc, "n_trials": len(timed)}


def _median(v: Sequence[float]) -> float:
    v = sorted(v)
    n = len(v)
    return (v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2) if n else float("nan")


def finetune_gain(trials: Sequence[TrialResult], mode: str) -> dict:
    """Per model: the base model's own score, the best finetuned score, and the gain between them."""
    out = {}
    for model in sorted({t.model for t in trials if t.scored}):
        group = [t for t in trials if t.model == model]
        best = _best(group, mode)
        base = next((t.base_objective for t in group if t.base_objective is not None), None)
        out[model] = {"params": best.params, "base": base, "best": best.objective,
                      "gain": None if base is None else sign(mode) * (best.objective - base)}
    return out


def failed_trials(trials: Sequence[TrialResult]) -> list[dict]:
    return [{"id": t.id, "status": t.status, "reason": t.reason or f"status {t.status}"}
            for t in trials if t.status != "TERMINATED" or t.reason or t.objective is None]


def analyse(trials: Sequence[TrialResult], metric: str, mode: str, target: float | None = None,
            reference: tuple[float, float] | None = None, continuous: Iterable[str] | None = None,
            settings: Sequence[str] | None = None, level: float = stats.LEVEL,
            resamples: int = stats.RESAMPLES) -> dict:
    """Everything the report shows, as one JSON-able dict; `settings`: the swept ones (default: any
    that varies).

    Held-out test scores, where every scored trial has them, replace validation scores in the front,
    the target answer and the levers (`source_view`); validation scores stay in "intervals".
    """
    source, view, source_note = source_view(trials, metric)
    scored = [t for t in view if t.scored]
    ev = Evidence(scored, metric, level, resamples)
    reference = reference or default_reference([view], mode)
    target_part = _target_part(view, metric, mode, target, ev) if target is not None else None
    lev = leverage(view, mode, metric, evidence=ev)
    effects = setting_effects(view, mode, settings=settings, continuous=continuous, metric=metric, evidence=ev)
    cell_map = cells(view, mode)
    law = power_law(cell_map, ev, mode, metric, target)
    timing = iteration_time(trials)
    verdicts = []
    if not scored:
        verdicts.append(f"no trial finished with a {metric}: see the failed trials below")
    else:
        verdicts += [source_note] if source_note else []
        verdicts.append(lev["verdict"])
        if target_part:
            verdicts.append(target_part["text"])
        verdicts += [line for m in effects.values() for line in m["lines"]]
        verdicts += [law["text"]] if law.get("fitted") else []
        verdicts += _caveats(source, ev, scored, cell_map)
    if timing["n_trials"]:
        per = "; ".join(f"{m} {v['median_s']:.0f}s" + (f" ({v['median_step_s']:.2g}s a step)" if v["median_step_s"] else "")
                        for m, v in timing["per_model"].items())
        verdicts.append(f"median wall time per trial: {per}; the sweep used {timing['total_accelerator_s'] / 3600:.2f} "
                        f"accelerator-hours over {timing['n_trials']} trials")
    decisions = [lev["decision"]] + ([target_part["decision"]] if target_part else [])
    for model, e in effects.items():
        if e["settings"]:
            top = max(e["settings"], key=lambda k: e["settings"][k]["effect"])
            decisions.append({"question": f"setting: {model}", "setting": top, "answer": e["settings"][top]["answer"],
                              "interval": e["settings"][top]["interval"], "text": e["lines"][0]})
    return {
        "frontier_params": decide_front(trials, metric, mode),
        "frontier_cost": cost_front(view, mode, "accelerator_s"),
        "frontier_tokens": cost_front(view, mode, "tokens"),
        "hypervolume": {"value": front_hypervolume(view, mode, reference), "reference": list(reference),
                        "size_axis": "log10(params)"},
        "target": target_part,
        "leverage": lev,
        "setting_effects": effects,
        "iteration_time": timing,
        "finetune_gain": finetune_gain(trials, mode),
        "failed": failed_trials(trials),
        "verdicts": verdicts,
        "source": source,
        "intervals": _intervals(trials, view, source, ev, cell_map, metric),
        "decisions": decisions,
        "power_law": law,
    }


def _target_part(view: Sequence[TrialResult], metric: str, mode: str, target: float, ev: Evidence) -> dict:
    hit = smallest_meeting_target(view, target, mode)
    check = target_check(view, target, mode, ev, hit)
    text = f"smallest model reaching {metric} {'>=' if mode == 'max' else '<='} {target:g}: "
    if hit:
        shown = digits.format_interval(check["interval"], value=hit["objective"])
        if check["seeds"] and check["seeds"] > 1:
            shown = f"its {check['seeds']} seeds {shown}"
        text += (f"{hit['model']} ({hit['params']:,} params, trial {hit['trial']}, {shown}, margin "
                 f"{hit['margin']:+.3g}): ")
        if check["confidence"] == "no interval":
            text += "on the point estimate (no per-row scores, so no interval)"
        else:
            text += check["confidence"]
        sure = check["with_confidence"]
        if check["confidence"] == "met on the point estimate only":
            text += (f"; met with confidence first by {sure['model']} ({sure['params']:,} params, "
                     f"{digits.format_interval(sure['interval'])})" if sure else "; no model meets it with confidence")
    else:
        text += "none does"
    decision = {"question": "target", "answer": check["confidence"] or "not met", "interval": check["interval"],
                "text": text}
    return {"target": target, "result": hit, "text": text, "confidence": check["confidence"],
            "interval": check["interval"], "with_confidence": check["with_confidence"], "decision": decision}


def _caveats(source: str, ev: Evidence, scored: Sequence[TrialResult], cell_map: Mapping) -> list[str]:
    if ev.draws is None:
        others = sorted({m for t in scored for m in (t.rows or {})})
        why = (f"{ev.metric} is not scored row by row (the task's metrics are: {', '.join(others)})" if others
               else "no per-row scores in this run (an older run folder, or evaluations that kept none)")
        return [f"{why}: no intervals, so every verdict above stands on point estimates"]
    out = []
    if len(ev.col) < len(scored):
        out.append(f"{len(scored) - len(ev.col)} of {len(scored)} scored trials have no per-row scores: statistics "
                   "that need them have no interval")
    if source == "validation" and any(c["n"] > len(c["group"]) for c in cell_map.values()):
        out.append("each cell's best configuration was chosen on the same validation rows that score it, so its "
                   "numbers lean optimistic; held-out test scores would not")
    return out


def _intervals(trials, view, source: str, ev: Evidence, cell_map: Mapping, metric: str) -> dict:
    """Every scored trial's interval (rows only) and every cell's (its best configuration: rows and seeds)."""
    def per_trial(e: Evidence, ts) -> dict:
        return {t.id: e.interval(t.objective, e.reps([t], seeds=False), e.n_rows[t.id])
                for t in ts if t.scored and t.id in e.col}

    out = {"level": ev.level, "resamples": ev.n_boot, "seed": ev.seed, "source": source, "method": stats.METHOD,
           "rows": sorted(set(ev.n_rows.values())), "trials": per_trial(ev, view),
           "cells": [{"model": m, "params": p, "data_fraction": f, "trials": [t.id for t in c["group"]],
                      "seeds": len(c["group"]), "n_trials": c["n"],
                      "interval": ev.interval(mean_objective(c["group"]), ev.reps(c["group"]), ev.rows(c["group"]))}
                     for (p, m, f), c in cell_map.items()]}
    if source == "test":
        validation = Evidence([t for t in trials if t.scored], metric, ev.level, ev.n_boot, ev.seed)
        out["validation"] = per_trial(validation, trials)
    elif tested := [t.on_test(metric) for t in trials if t.scored and t.test_score(metric) is not None]:
        # Some trials have test scores, not all: the analysis stays on validation rows, and the test
        # scores there are still shown with their intervals (frontier.csv).
        out["test"] = per_trial(Evidence(tested, metric, ev.level, ev.n_boot, ev.seed), tested)
    return out


def trial_intervals(intervals: Mapping, rows: str) -> dict:
    """Each trial's interval over its "test" or "validation" rows, from the analysis' "intervals"."""
    return intervals.get("trials", {}) if intervals.get("source") == rows else intervals.get(rows, {})
