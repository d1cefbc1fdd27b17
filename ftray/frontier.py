"""Frontier analysis: pure functions over trial records (no Ray)."""

from __future__ import annotations

import math
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


def _minimised(t: Mapping, mode: str, size_key: str, log_size: bool) -> tuple[float, float]:
    size = float(t[size_key])
    return (-t["objective"] if mode == "max" else t["objective"],
            math.log10(size) if log_size else size)


def front_hypervolume(trials: Iterable[Mapping], mode: str, ref: tuple[float, float], size_key: str = "params",
                      log_size: bool = True) -> float:
    """Hypervolume of the scored trials in (objective, size) against `ref` = (objective, size) in the
    original units: an objective no better than ref[0] and a size no smaller than ref[1] add nothing.
    Size is taken as log10, so each 10x in parameters weighs the same."""
    ref_min = (-ref[0] if mode == "max" else ref[0], math.log10(ref[1]) if log_size else ref[1])
    pts = [_minimised(t, mode, size_key, log_size) for t in trials if is_scored(t) and t.get(size_key)]
    return hypervolume_2d(pts, ref_min)


def default_reference(runs: Sequence[Sequence[Mapping]], mode: str, size_key: str = "params",
                      margin: float = 0.1) -> tuple[float, float]:
    """A reference point common to several runs: twice the largest size, and the worst objective seen
    made worse by `margin` of the objectives' range (of the value itself when all are equal), so
    that the worst trial on a front, or a front of one trial, still counts."""
    scored = [t for trials in runs for t in trials if is_scored(t) and t.get(size_key)]
    if not scored:
        return (0.0, 1.0)
    values = [t["objective"] for t in scored]
    worst = min(values) if mode == "max" else max(values)
    span = (max(values) - min(values)) or abs(worst) or 1.0
    return (worst - margin * span if mode == "max" else worst + margin * span,
            2.0 * max(t[size_key] for t in scored))


def cost_front(trials: Iterable[Mapping], mode: str, cost: str = "accelerator_s") -> list[str]:
    """Pareto set over (objective, cost): accelerator seconds (wall x accelerators) or tokens."""
    points = []
    for t in trials:
        if not is_scored(t):
            continue
        c = _cost(t, cost)
        if c is not None:
            points.append((t["id"], t["objective"], c))
    points.sort(key=lambda p: (p[2], p[0]))
    return pareto_front(points, mode)


def _cost(t: Mapping, cost: str) -> float | None:
    if cost == "tokens":
        return t.get("tokens")
    if t.get("wall_s") is None:
        return None
    return t["wall_s"] * (t.get("accelerators") or 1)


# ---- the questions a team asks -------------------------------------------------------------------
def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def _best(trials: Iterable[Mapping], mode: str) -> Mapping | None:
    best = None
    for t in trials:
        if is_scored(t) and (best is None or _better(t["objective"], best["objective"], mode)):
            best = t
    return best


def smallest_meeting_target(trials: Iterable[Mapping], target: float, mode: str) -> dict | None:
    """The smallest model whose best trial reaches `target`, with the margin (positive: past it)."""
    sign = 1.0 if mode == "max" else -1.0
    meeting = [t for t in trials if is_scored(t) and sign * (t["objective"] - target) >= 0]
    if not meeting:
        return None
    smallest = min(t["params"] for t in meeting)
    best = _best([t for t in meeting if t["params"] == smallest], mode)
    return {"model": best["model"], "params": best["params"], "trial": best["id"], "objective": best["objective"],
            "margin": sign * (best["objective"] - target)}


def _best_by(trials: Iterable[Mapping], mode: str, key) -> dict:
    """Best objective per group, with the number of trials behind it."""
    groups: dict = {}
    for t in trials:
        if is_scored(t):
            groups.setdefault(key(t), []).append(t)
    return {k: (_best(v, mode)["objective"], len(v)) for k, v in groups.items()}


def leverage(trials: Sequence[Mapping], mode: str, metric: str = "objective") -> dict:
    """Data versus model: the gain per doubling of data (fixed model) and per step up the ladder (fixed
    data), from the best trial of each cell. Gains are signed so that positive means better."""
    sign = 1.0 if mode == "max" else -1.0
    scored = [t for t in trials if is_scored(t)]
    models = sorted({(t["params"], t["model"]) for t in scored})

    per_model = {}
    for params, model in models:
        cells = _best_by([t for t in scored if t["model"] == model], mode, lambda t: float(t["data_fraction"]))
        if len(cells) < 2:
            continue
        xs = [math.log2(f) for f in cells]
        ys = [sign * v for v, _ in cells.values()]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
        per_model[model] = {"gain_per_doubling": slope, "n_trials": sum(n for _, n in cells.values()),
                            "fractions": sorted(cells)}
    data = None
    if per_model:
        n = sum(v["n_trials"] for v in per_model.values())
        data = {"gain_per_doubling": sum(v["gain_per_doubling"] * v["n_trials"] for v in per_model.values()) / n,
                "n_trials": n, "per_model": per_model}

    steps = []
    for frac in sorted({float(t["data_fraction"]) for t in scored}):
        cells = _best_by([t for t in scored if float(t["data_fraction"]) == frac], mode, lambda t: (t["params"], t["model"]))
        ladder = sorted(cells)
        for (p0, m0), (p1, m1) in zip(ladder, ladder[1:]):
            (v0, n0), (v1, n1) = cells[(p0, m0)], cells[(p1, m1)]
            steps.append({"data_fraction": frac, "from": m0, "to": m1, "gain": sign * (v1 - v0),
                          "params_ratio": p1 / p0, "n_trials": n0 + n1})
    model = None
    if steps:
        model = {"gain_per_step": sum(s["gain"] for s in steps) / len(steps),
                 "params_ratio": math.exp(sum(math.log(s["params_ratio"]) for s in steps) / len(steps)),
                 "n_trials": len({t["id"] for t in scored}), "steps": steps}
    return {"data": data, "model": model, "verdict": _leverage_verdict(data, model, metric)}


def _leverage_verdict(data, model, metric) -> str:
    if data is None or model is None:
        return ("not enough trials to compare data with model size (need one model at 2+ data fractions and "
                "2+ models at one data fraction)")
    d, m = data["gain_per_doubling"], model["gain_per_step"]
    text = (f"doubling the data gains {d:+.3g} {metric} ({data['n_trials']} trials); the next model size gains "
            f"{m:+.3g} at {model['params_ratio']:.1f}x the parameters ({model['n_trials']} trials)")
    if d <= 0 and m <= 0:
        return text + ": neither lever helped in this sweep"
    # Doubling data costs ~2x training compute; a model step costs ~params_ratio x for training and serving.
    if d >= m or (d > 0 and d / 2 >= m / model["params_ratio"]):
        return text + ": more data is the cheaper lever"
    return text + ": a bigger model is the stronger lever"


def setting_effects(trials: Sequence[Mapping], mode: str, settings: Sequence[str] | None = None,
                    continuous: Iterable[str] | None = None) -> dict:
    """Within each model, how each swept setting moves the objective (what makes it better or worse).

    Few distinct values: the mean objective per value. Many (e.g. the learning rate): low and high
    halves split at the median, and Spearman's rank correlation. The effect is the best group mean
    minus the worst, so settings can be ranked by how much they matter.
    """
    sign = 1.0 if mode == "max" else -1.0
    out: dict = {}
    for model in sorted({t["model"] for t in trials if is_scored(t)}):
        group = [t for t in trials if is_scored(t) and t["model"] == model]
        keys = settings or sorted({k for t in group for k in t.get("config", {})} - {"model", "model_params"})
        effects = {}
        for key in keys:
            pairs = [(t["config"][key], t["objective"]) for t in group
                     if isinstance(t.get("config", {}).get(key), (int, float)) and not isinstance(t["config"][key], bool)]
            values = sorted({v for v, _ in pairs})
            if len(values) < 2:
                continue
            # Discrete: a choice of a few values (rank 4 / 16). Continuous: drawn from a range (lr).
            if continuous is not None:
                discrete = key not in continuous and len(values) <= 8
            else:
                discrete = len(values) <= 6 and (len(values) < len(pairs) or all(isinstance(v, int) for v in values))
            if discrete:
                groups = {f"{v:g}": [o for x, o in pairs if x == v] for v in values}
            else:
                median = sorted(v for v, _ in pairs)[len(pairs) // 2]
                groups = {f"below {median:.3g}": [o for x, o in pairs if x < median],
                          f"{median:.3g} and above": [o for x, o in pairs if x >= median]}
            means = {str(k): sum(v) / len(v) for k, v in groups.items() if v}
            best_key = max(means, key=lambda k: sign * means[k])
            worst_key = min(means, key=lambda k: sign * means[k])
            effects[key] = {"means": means, "counts": {str(k): len(v) for k, v in groups.items()},
                            "best": best_key, "worst": worst_key,
                            "effect": sign * (means[best_key] - means[worst_key]),
                            "spearman": _spearman([v for v, _ in pairs], [o for _, o in pairs])}
        lines = []
        if effects:
            top = max(effects, key=lambda k: effects[k]["effect"])
            e = effects[top]
            lines.append(f"{model}: {top} matters most ({e['effect']:+.3g} from {e['worst']} to {e['best']}, "
                         f"{len(group)} trials)")
        out[model] = {"settings": effects, "lines": lines}
    return out


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


def iteration_time(trials: Sequence[Mapping]) -> dict:
    """Wall time per trial for each model size, and what the whole sweep cost (failed trials too)."""
    timed = [t for t in trials if t.get("wall_s") is not None]
    per_model = {}
    for model in sorted({t["model"] for t in timed}, key=lambda m: min(t["params"] for t in timed if t["model"] == m)):
        walls = sorted(t["wall_s"] for t in timed if t["model"] == model)
        acc = sorted(_cost(t, "accelerator_s") for t in timed if t["model"] == model)
        steps = [t["step_s"] for t in timed if t["model"] == model and t.get("step_s") is not None]
        per_model[model] = {"n": len(walls), "median_s": _median(walls), "min_s": walls[0], "max_s": walls[-1],
                            "median_accelerator_s": _median(acc), "median_step_s": _median(steps) if steps else None}
    total_wall = sum(t["wall_s"] for t in timed)
    total_acc = sum(_cost(t, "accelerator_s") for t in timed)
    return {"per_model": per_model, "total_trial_s": total_wall, "total_accelerator_s": total_acc, "n_trials": len(timed)}


def _median(v: Sequence[float]) -> float:
    v = sorted(v)
    n = len(v)
    return (v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2) if n else float("nan")


def finetune_gain(trials: Sequence[Mapping], mode: str) -> dict:
    """Per model: the base model's own score, the best finetuned score, and the gain between them."""
    sign = 1.0 if mode == "max" else -1.0
    out = {}
    for model in sorted({t["model"] for t in trials if is_scored(t)}):
        group = [t for t in trials if t["model"] == model]
        best = _best(group, mode)
        base = next((t["base_objective"] for t in group if t.get("base_objective") is not None), None)
        out[model] = {"params": best["params"], "base": base, "best": best["objective"],
                      "gain": None if base is None else sign * (best["objective"] - base)}
    return out


def failed_trials(trials: Sequence[Mapping]) -> list[dict]:
    return [{"id": t["id"], "status": t["status"], "reason": t.get("reason") or f"status {t['status']}"}
            for t in trials if t.get("status") != "TERMINATED" or t.get("reason") or t.get("objective") is None]


def analyse(trials: Sequence[Mapping], metric: str, mode: str, target: float | None = None,
            reference: tuple[float, float] | None = None, continuous: Iterable[str] | None = None) -> dict:
    """Everything the report shows, as one JSON-able dict."""
    reference = reference or default_reference([trials], mode)
    target_part = None
    if target is not None:
        hit = smallest_meeting_target(trials, target, mode)
        text = (f"smallest model reaching {metric} {'>=' if mode == 'max' else '<='} {target:g}: "
                + (f"{hit['model']} ({hit['params']:,} params, trial {hit['trial']}, {hit['objective']:.4g}, "
                   f"margin {hit['margin']:+.3g})" if hit else "none does"))
        target_part = {"target": target, "result": hit, "text": text}
    lev = leverage(trials, mode, metric)
    effects = setting_effects(trials, mode, continuous=continuous)
    timing = iteration_time(trials)
    failed = failed_trials(trials)
    verdicts = []
    scored = [t for t in trials if is_scored(t)]
    if not scored:
        verdicts.append(f"no trial finished with a {metric}: see the failed trials below")
    else:
        verdicts.append(lev["verdict"])
        if target_part:
            verdicts.append(target_part["text"])
        verdicts += [line for m in effects.values() for line in m["lines"]]
    if timing["n_trials"]:
        per = "; ".join(f"{m} {v['median_s']:.0f}s" + (f" ({v['median_step_s']:.2g}s a step)" if v["median_step_s"] else "")
                        for m, v in timing["per_model"].items())
        verdicts.append(f"median wall time per trial: {per}; the sweep used {timing['total_accelerator_s'] / 3600:.2f} "
                        f"accelerator-hours over {timing['n_trials']} trials")
    return {
        "frontier_params": trial_front(trials, mode),
        "frontier_cost": cost_front(trials, mode, "accelerator_s"),
        "frontier_tokens": cost_front(trials, mode, "tokens"),
        "hypervolume": {"value": front_hypervolume(trials, mode, reference), "reference": list(reference),
                        "size_axis": "log10(params)"},
        "target": target_part,
        "leverage": lev,
        "setting_effects": effects,
        "iteration_time": timing,
        "finetune_gain": finetune_gain(trials, mode),
        "failed": failed,
        "verdicts": verdicts,
    }
