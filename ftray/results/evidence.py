"""What the report's verdicts stand on: which scores (held-out test or validation), each cell's best
configuration with its repeats, one bootstrap shared by every statistic, and what would decide a
question the intervals leave open. Pure functions over `TrialResult`s (no Ray).
"""

from __future__ import annotations

import json
import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ftray.results import digits, powerlaw, stats
from ftray.results.trialresult import TrialResult
from ftray.tasks.metrics import sign


def source_view(trials: Sequence[TrialResult], metric: str) -> tuple[str, list[TrialResult], str | None]:
    """("test" or "validation", the trials with objective and rows taken from it, a note for the report).

    Test scores are used only when every scored trial has them: a front that mixed test and
    validation scores would compare numbers measured on different rows.
    """
    done = [t for t in trials if t.scored]
    tested = [t for t in done if t.test_score(metric) is not None]
    if done and len(tested) == len(done):
        view = [t.on_test(metric) for t in trials]
        sizes = sorted({(t.test.n, t.test.of) for t in tested}, key=str)
        n, of = sizes[0]
        rows = f"{n} held-out test rows" + (f" (of {of})" if of and of != n else "")
        return "test", view, (f"numbers are on {rows}; the validation rows chose each trial's checkpoint "
                              "and steered the search")
    note = None
    if tested:
        note = (f"test scores exist for {len(tested)} of {len(done)} scored trials; the analysis uses validation "
                "scores so that every trial is compared on the same rows")
    return "validation", list(trials), note


class Evidence:
    """One set of draws for every trial that has rows: the same row weights for all of them, so any two
    statistics built from it are paired, and each number costs one matrix product (`stats.Draws`)."""

    def __init__(self, trials: Iterable[TrialResult], metric: str, level: float = stats.LEVEL,
                 n_boot: int = stats.RESAMPLES, seed: int = stats.SEED):
        rows = {t.id: r for t in trials if (r := t.metric_rows(metric))}
        self.metric, self.level, self.n_boot, self.seed = metric, level, n_boot, seed
        self.col = {i: j for j, i in enumerate(rows)}
        self.n_rows = {i: len(r) for i, r in rows.items()}
        self.draws = stats.resample_ratios(list(rows.values()), n_boot, seed) if rows else None

    def covers(self, trials: Iterable[TrialResult]) -> bool:
        return all(t.id in self.col for t in trials)

    def rows(self, trials: Iterable[TrialResult]) -> int | None:
        counts = [self.n_rows[t.id] for t in trials if t.id in self.n_rows]
        return min(counts) if counts else None

    def reps(self, group: Sequence[TrialResult], seeds: bool = True) -> stats.Draws | None:
        """Draws of the group's mean score; `seeds`: draw its trials anew too (seed noise)."""
        if not group or not self.covers(group):
            return None
        # In the order of the trials' seeds, and keyed by the configuration and its seeds: the same
        # scores give the same interval in every run, though Tune names the trials anew each time.
        group = sorted(group, key=lambda t: (str(t.seed), t.id))
        cols = [self.col[t.id] for t in group]
        if seeds:
            key = config_key(group[0]) + repr([t.seed for t in group])
            return stats.seed_resampled_means(self.draws, [cols], self.seed, keys=[key]).column(0)
        one = self.draws.columns(cols)
        return stats.Draws(one.low.mean(axis=1), one.high.mean(axis=1))

    def interval(self, value: float, reps: stats.Draws | None, n: int | None = None) -> dict | None:
        return None if reps is None else stats.summarize(value, reps, self.level, n)


def mean_objective(group: Sequence[TrialResult]) -> float:
    return sum(t.objective for t in group) / len(group)


def config_key(t: TrialResult) -> str:
    """A configuration without its seed: trials that share it are repeats."""
    return json.dumps({k: v for k, v in t.config.items() if k != "seed"}, sort_keys=True, default=str)


def best_group(trials: Sequence[TrialResult], mode: str) -> list[TrialResult]:
    """The trials of the configuration with the best mean objective (over its seeds)."""
    groups: dict[str, list] = {}
    for t in trials:
        groups.setdefault(config_key(t), []).append(t)
    # Ties go to the configuration that sorts first, not to whichever trial id Tune drew.
    return max(sorted(groups.items()), key=lambda kv: (sign(mode) * mean_objective(kv[1]), len(kv[1])))[1]


def cells(trials: Sequence[TrialResult], mode: str) -> dict[tuple, dict]:
    """(params, model, data fraction) -> {"group": the best configuration's trials, "n": trials in the cell}."""
    by_cell: dict[tuple, list] = {}
    for t in trials:
        if t.scored:
            by_cell.setdefault((t.params, t.model, float(t.data_fraction)), []).append(t)
    return {k: {"group": best_group(v, mode), "n": len(v)} for k, v in sorted(by_cell.items())}


def answer(iv: dict | None, up: str = "better", down: str = "worse") -> str:
    """`up` when the interval lies above zero, `down` below, else undecided; no interval: say so."""
    if not iv or iv["lo"] is None:
        return "no interval"
    return up if iv["lo"] > 0 else down if iv["hi"] < 0 else "undecided"


def seed_se(reps: stats.Draws | None, rows_only: stats.Draws | None) -> float:
    """The part of a statistic's spread that comes from seeds: total variance less the rows' part."""
    if reps is None or rows_only is None:
        return 0.0
    return math.sqrt(max(0.0, float(np.var(reps.centre, ddof=1) - np.var(rows_only.centre, ddof=1))))


def rows_need(ev: Evidence, delta: float, rows_only: stats.Draws | None, trials: Sequence[TrialResult],
              reps: stats.Draws | None = None) -> dict | None:
    """More evaluation rows, by the power calculation on the row-only spread of this statistic (with
    the seeds' part, which rows do not shrink, held fixed); None when rows cannot decide it."""
    n = ev.rows(trials)
    if rows_only is None or not n:
        return None
    need = stats.rows_needed_from_se(stats.interval_se(rows_only, ev.level), n, delta, floor_se=seed_se(reps, rows_only))
    if need is None or need <= n:
        return None
    return {"kind": "rows", "rows": need, "now": n,
            "text": f"about {need:,} evaluation rows (now {n}): enough to detect {delta:+.2g} at 80% power and "
                    "alpha 0.05, from the observed paired variance (Miller 2024)"}


def seed_need(groups: Sequence[Sequence[TrialResult]], delta: float, reps: stats.Draws | None,
              rows_only: stats.Draws | None) -> dict:
    """Repeats: none yet (seed noise is not in the interval), or how many seeds per cell would let the
    seeds' part of the error fit under the difference (their mean's error shrinks as 1 / sqrt(seeds))."""
    if all(len(g) < 2 for g in groups):
        return {"kind": "repeats", "text": "repeats: one trial per cell cannot separate seed noise from the "
                                           "difference; 2+ seeds of each cell's best configuration would"}
    total = float(np.var(reps.centre, ddof=1)) if reps is not None else 0.0
    part = seed_se(reps, rows_only)
    now = min(len(g) for g in groups)
    need = stats.rows_needed(part * math.sqrt(now), delta)
    share = part ** 2 / total if total > 0 else 0.0
    many = f"about {need} seeds per cell (now {now})" if need and need > now else "more seeds per cell"
    return {"kind": "repeats", "share": share, "seeds": need, "now": now,
            "text": f"{many}: seed-to-seed spread is {share:.0%} of the variance"}


def missing_cells(cell_map: Mapping[tuple, dict]) -> list[tuple[str, float]]:
    """Model x fraction pairs of the sweep's grid with no scored trial, smallest model first."""
    models = sorted({(p, m) for p, m, _ in cell_map})
    fracs = sorted({f for _, _, f in cell_map})
    return [(m, f) for p, m in models for f in fracs if (p, m, f) not in cell_map]


def trials_need(cell_map: Mapping[tuple, dict]) -> dict | None:
    missing = missing_cells(cell_map)
    if not missing:
        return None
    named = ", ".join(f"{m} data {f:g}" for m, f in missing[:3]) + (" ..." if len(missing) > 3 else "")
    return {"kind": "trials", "cells": [list(c) for c in missing], "text": f"more trials at {named}"}


def target_check(trials: Sequence[TrialResult], target: float, mode: str, ev: Evidence, hit: Mapping | None) -> dict:
    """Whether the point-estimate answer meets the target with confidence (its bound past the target),
    and the smallest model that does."""
    up = sign(mode)
    scored = [t for t in trials if t.scored]

    def checked(group):
        iv = ev.interval(mean_objective(group), ev.reps(group), ev.rows(group))
        bound = None if not iv or iv["lo"] is None else iv["lo"] if mode == "max" else iv["hi"]
        return iv, bound is not None and up * (bound - target) >= 0

    out = {"confidence": None, "interval": None, "seeds": None, "with_confidence": None}
    if hit:
        trial = next(t for t in scored if t.id == hit["trial"])
        group = [t for t in scored if t.model == hit["model"] and config_key(t) == config_key(trial)]
        iv, sure = checked(group)
        out["interval"], out["seeds"] = iv, len(group)
        out["confidence"] = ("no interval" if iv is None or iv["lo"] is None
                             else "met with confidence" if sure else "met on the point estimate only")
    for params, model in sorted({(t.params, t.model) for t in scored}):
        groups: dict[str, list] = {}
        for t in scored:
            if t.model == model:
                groups.setdefault(config_key(t), []).append(t)
        sure = [(iv, g) for iv, ok, g in ((*checked(g), g) for g in groups.values()) if ok]
        if sure:
            iv, g = max(sure, key=lambda x: up * x[0]["value"])
            out["with_confidence"] = {"model": model, "params": params, "trials": [t.id for t in g],
                                      "interval": iv}
            break
    return out


def power_law(cell_map: Mapping[tuple, dict], ev: Evidence, mode: str, metric: str,
              target: float | None = None) -> dict:
    """Zhang et al.'s multiplicative law, L = A * N^alpha * D^beta, over the best configuration per cell.

    L is the metric itself when lower is better (a loss, a failure rate) and 1 - metric when higher is
    better and it lies in [0, 1] (an error rate, like a loss falling toward 0). D is the data
    fraction: the training rows differ from it by a constant factor, which only moves A. The form has
    no floor term, so on a loss with an irreducible part the exponents come out too small.
    """
    cell_map = {k: v for k, v in cell_map.items() if k[0] > 0}  # a size of 0 is unknown, not tiny
    sizes = {p for p, _, _ in cell_map}
    fracs = {f for _, _, f in cell_map}
    if len(sizes) < 3 or len(fracs) < 3:
        return {"fitted": False, "reason": f"needs 3+ model sizes and 3+ data fractions (this sweep has "
                                           f"{len(sizes)} and {len(fracs)})"}
    keys = list(cell_map)
    values = np.array([mean_objective(cell_map[k]["group"]) for k in keys])
    to_loss: Callable = (lambda v: 1.0 - v) if mode == "max" else (lambda v: v)
    if mode == "max" and (values.min() < 0 or values.max() > 1):
        return {"fitted": False, "reason": f"{metric} is not in [0, 1], so 1 - {metric} is no loss to fit"}
    n_params = np.array([k[0] for k in keys], dtype=float)
    data = np.array([k[2] for k in keys], dtype=float)
    loss = to_loss(values)
    fit = powerlaw.fit_power_law(n_params, data, loss)
    if fit is None:
        return {"fitted": False, "reason": "the cells cannot be fitted (a loss of 0, or sizes that do not vary)"}
    groups = [cell_map[k]["group"] for k in keys]
    reps = None
    if all(ev.covers(g) for g in groups):  # the cells' noise: their draws' centres
        reps = to_loss(np.stack([ev.reps(g).centre for g in groups], axis=1))
    samples = powerlaw.power_law_samples(n_params, data, loss, reps, ev.n_boot, ev.seed)
    out = {"fitted": True, "form": f"{'1 - ' if mode == 'max' else ''}{metric} = A * params^alpha * data^beta",
           "cells": len(keys), "log_A": fit["log_A"], "r2": fit["r2"], "rmse_log": fit["rmse_log"],
           "alpha": stats.summarize(fit["alpha"], samples[:, 1], ev.level),
           "beta": stats.summarize(fit["beta"], samples[:, 2], ev.level),
           "noise": "rows, seeds and cells" if reps is not None else "cells only (no per-row scores)",
           "extrapolation": None}
    if target is not None and 0 < to_loss(target):
        out["extrapolation"] = _size_for_target(fit, samples, to_loss(target), max(fracs), sizes, ev.level, target)
    out["text"] = _law_text(out, metric, mode)
    return out


def _size_for_target(fit: dict, samples: np.ndarray, loss: float, data: float, sizes, level: float,
                     target: float) -> dict:
    """The size at which the law reaches the target's loss, with its interval from the law's samples.

    Where the size exponent's interval reaches 0 the law does not say that size helps at all, so no
    size is read from it; draws where it does not help count as "no size" (an unbounded upper end).
    """
    out = {"target": target, "data_fraction": data, "params": None, "lo": None, "hi": None, "beyond_sweep": True}
    alpha = samples[:, 1][np.isfinite(samples[:, 1])]
    if fit["alpha"] >= 0 or not alpha.size or np.quantile(alpha, (1 + level) / 2) >= 0:
        out["reason"] = "the size exponent's interval reaches 0: the fit does not show that size helps"
        return out
    n_star = float(powerlaw.size_for_loss(fit["log_A"], fit["alpha"], fit["beta"], loss, data))
    ok = np.isfinite(samples).all(axis=1)
    draws = np.sort(powerlaw.size_for_loss(samples[ok, 0], samples[ok, 1], samples[ok, 2], loss, data))
    lo_i, hi_i = (int(round(q * (len(draws) - 1))) for q in ((1 - level) / 2, (1 + level) / 2))
    out.update(params=n_star, lo=float(draws[lo_i]) if np.isfinite(draws[lo_i]) else None,
               hi=float(draws[hi_i]) if np.isfinite(draws[hi_i]) else None,
               beyond_sweep=n_star > max(sizes) or n_star < min(sizes))
    return out


def _count(n: float | None) -> str:
    return "no size" if n is None or not math.isfinite(n) else digits.format_count(n, significant=2)


def _law_text(law: dict, metric: str, mode: str) -> str:
    fmt = digits.format_interval
    text = (f"finetuning power law over {law['cells']} cells, {law['form']}: alpha {fmt(law['alpha'], True)}, "
            f"beta {fmt(law['beta'], True)} (R^2 {law['r2']:.2f}; intervals over {law['noise']})")
    x = law["extrapolation"]
    if x:
        rel = ">=" if mode == "max" else "<="
        goal = f"{metric} {rel} {x['target']:g} at data fraction {x['data_fraction']:g}"
        if x["params"] is None:
            text += f"; no size for {goal}: {x['reason']}"
        else:
            span = f" [{_count(x['lo'])}, {_count(x['hi']) if x['hi'] else 'unbounded'}]"
            where = "; an extrapolation past the sizes swept" if x["beyond_sweep"] else ""
            text += f"; {goal} needs about {_count(x['params'])} parameters{span}{where}"
    return text
