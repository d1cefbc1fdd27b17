"""Data versus model size: the gain per doubling of data and per step up the model ladder, each with
its interval, and a verdict that names a lever only when the intervals can tell."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ftray.results import digits, stats
from ftray.tasks.metrics import sign
from ftray.results.evidence import (Evidence, answer, cells, mean_objective, rows_need, seed_need,
                            trials_need)
from ftray.results.trialresult import TrialResult

NOT_ENOUGH = ("not enough trials to compare data with model size (need one model at 2+ data fractions and "
              "2+ model sizes at one data fraction; models of one size are compared on their own line)")


def ladder_pairs(point: Mapping[tuple, float], up: float) -> tuple[list[tuple], list[tuple], set[str]]:
    """The steps up the ladder, the same-size comparisons and the models off the ladder, from the
    cells' point values keyed (params, model, fraction). At each data fraction the ladder runs through
    the distinct sizes, each size represented by its best cell; another cell of a size already on the
    ladder (a randomly initialised control beside its pretrained model, say) is compared with that best,
    not counted as a step up. A model that is never its size's best is off the ladder, and out of the
    data lever too. Chosen once, from the point values, so the replicates are taken over the same pairs
    (picking each size's best from the values that are then compared leans the gains a little
    optimistic when a size has 3+ models)."""
    steps, same, bests = [], [], set()
    for frac in sorted({k[2] for k in point}):
        by_size: dict[float, list[tuple]] = {}
        for k in point:
            if k[2] == frac and k[0] > 0:  # a size of 0 is unknown: off the ladder
                by_size.setdefault(k[0], []).append(k)
        best = {}
        for size, keys in by_size.items():
            keys.sort(key=lambda k: (-up * point[k], k[1]))
            best[size] = keys[0]
            same += [(keys[0], k) for k in keys[1:]]
        sizes = sorted(best)
        steps += [(best[a], best[b]) for a, b in zip(sizes, sizes[1:])]
        bests |= {k[1] for k in best.values()}
    return steps, same, {k[1] for k in point if k[0] > 0} - bests


def lever_stats(values: Mapping[tuple, "float | stats.Draws"], counts: Mapping[tuple, int], up: float,
                ladder: list[tuple], same: list[tuple], off: set[str]) -> dict:
    """The levers from cell values keyed (params, model, fraction): each value a number or the cell's
    `stats.Draws`, so the one function gives the point estimates and their draws. Every lever is a
    weighted sum of cells, which keeps the draws' pairing. `ladder`, `same` and `off`: what
    `ladder_pairs` chose."""
    per_model = {}
    for _, model in sorted({(p, m) for p, m, _ in values if m not in off}):
        keys = sorted(k for k in values if k[1] == model)
        if len(keys) < 2:
            continue
        xs = np.log2([k[2] for k in keys])
        xc = xs - xs.mean()
        # The least-squares slope, sum(xc * y) / sum(xc^2): the xc sum to 0, so y needs no centring.
        weights = up * xc / (xc ** 2).sum()
        per_model[model] = {
            "slope": sum(float(c) * values[k] for c, k in zip(weights, keys)),
            "n": sum(counts[k] for k in keys), "fractions": [k[2] for k in keys],
            "steps": [(k0[2], k1[2], up * (values[k1] - values[k0])) for k0, k1 in zip(keys, keys[1:])]}
    steps = [{"frac": k0[2], "k0": k0, "k1": k1, "gain": up * (values[k1] - values[k0]), "n": counts[k0] + counts[k1]}
             for k0, k1 in ladder]
    n_data = sum(v["n"] for v in per_model.values())
    return {"per_model": per_model, "steps": steps,
            "same": [{"frac": k0[2], "k0": k0, "k1": k1, "gain": up * (values[k0] - values[k1]),
                      "n": counts[k0] + counts[k1]} for k0, k1 in same],
            "data": sum(v["slope"] * v["n"] for v in per_model.values()) / n_data if per_model else None,
            "model": sum(s["gain"] for s in steps) / len(steps) if steps else None,
            "params_ratio": float(np.exp(np.mean([np.log(s["k1"][0] / s["k0"][0]) for s in steps]))) if steps else None}


def leverage(trials: Sequence[TrialResult], mode: str, metric: str = "objective", evidence: Evidence | None = None) -> dict:
    """Data versus model: the gain per doubling of data (fixed model) and per step up the ladder (fixed
    data), from the best configuration of each (model, data fraction) cell, averaged over its seeds.
    Gains are signed so that positive means better. With per-row scores each gain has an interval
    over rows (and seeds where trials are repeated), all from one set of paired draws."""
    up = sign(mode)
    scored = [t for t in trials if t.scored]
    ev = evidence or Evidence(scored, metric)
    cell_map = cells(scored, mode)
    counts = {k: c["n"] for k, c in cell_map.items()}
    means = {k: np.float64(mean_objective(c["group"])) for k, c in cell_map.items()}
    pairs = ladder_pairs(means, up)
    point = lever_stats(means, counts, up, *pairs)
    reps = rows = None
    if cell_map and all(ev.covers(c["group"]) for c in cell_map.values()):
        reps = lever_stats({k: ev.reps(c["group"]) for k, c in cell_map.items()}, counts, up, *pairs)
        rows = lever_stats({k: ev.reps(c["group"], seeds=False) for k, c in cell_map.items()}, counts, up, *pairs)
    n_rows = ev.rows(scored)

    def iv(value, rep):
        return ev.interval(float(value), rep, n_rows)

    data = None
    if point["per_model"]:
        per_model = {}
        for model, v in point["per_model"].items():
            r = reps["per_model"][model] if reps else None
            slope = iv(v["slope"], r and r["slope"])
            per_model[model] = {
                "gain_per_doubling": float(v["slope"]), "n_trials": v["n"], "fractions": v["fractions"],
                "interval": slope, "answer": answer(slope),
                "steps": []}
            for i, (f0, f1, g) in enumerate(v["steps"]):
                step_iv = iv(g, r and r["steps"][i][2])
                per_model[model]["steps"].append({"from": f0, "to": f1, "gain": float(g), "interval": step_iv,
                                                  "answer": answer(step_iv)})
        data = {"gain_per_doubling": float(point["data"]), "n_trials": sum(v["n"] for v in point["per_model"].values()),
                "per_model": per_model, "interval": iv(point["data"], reps and reps["data"])}
    model = None
    if point["steps"]:
        steps = []
        for i, s in enumerate(point["steps"]):
            step_iv = iv(s["gain"], reps and reps["steps"][i]["gain"])
            pair = cell_map[s["k0"]]["group"] + cell_map[s["k1"]]["group"]
            need = rows_need(ev, float(s["gain"]), rows and rows["steps"][i]["gain"], pair,
                             reps and reps["steps"][i]["gain"])
            steps.append({"data_fraction": s["frac"], "from": s["k0"][1], "to": s["k1"][1], "gain": float(s["gain"]),
                          "params_ratio": s["k1"][0] / s["k0"][0], "n_trials": s["n"], "interval": step_iv,
                          "answer": answer(step_iv), "rows_needed": need and need["rows"]})
        model = {"gain_per_step": float(point["model"]), "params_ratio": point["params_ratio"],
                 "n_trials": sum(counts[k] for k in {k for s in point["steps"] for k in (s["k0"], s["k1"])}),
                 "steps": steps,
                 "interval": iv(point["model"], reps and reps["model"])}
    same_size = []
    for i, s in enumerate(point["same"]):
        same_iv = iv(s["gain"], reps and reps["same"][i]["gain"])
        same_size.append({"data_fraction": s["frac"], "best": s["k0"][1], "other": s["k1"][1], "params": s["k0"][0],
                          "gain": float(s["gain"]), "n_trials": s["n"], "interval": same_iv, "answer": answer(same_iv)})
    decision = _decide(data, model, reps, rows, ev, cell_map, metric, scored)
    return {"data": data, "model": model, "same_size": same_size, "comparison": decision.get("comparison"),
            "verdict": decision["text"], "decision": decision}


def _decide(data, model, reps, rows, ev: Evidence, cell_map, metric: str, scored) -> dict:
    """Names a lever only when its gain's interval lies above zero and the paired interval of the
    compute-weighted difference between the levers excludes zero in its favour; the difference is
    taken over the same resamples, so it is the paired form of "the other lever's interval does not
    reach it". Otherwise undecided, with what would decide it."""
    out = {"question": "leverage", "answer": "not enough trials", "comparison": None, "needs": []}
    if data is None or model is None:
        need = trials_need(cell_map)
        return {**out, "needs": [need] if need else [], "text": NOT_ENOUGH + (f"; {need['text']}" if need else "")}
    d, m, ratio = data["gain_per_doubling"], model["gain_per_step"], model["params_ratio"]
    # Doubling data costs ~2x training compute; a model step ~params_ratio x, for training and serving:
    # weigh the model step down to the same compute when it costs more than a doubling.
    k = min(1.0, 2.0 / ratio)
    d_iv, m_iv = data["interval"], model["interval"]
    c_iv = ev.interval(d - k * m, reps["data"] - k * reps["model"], ev.rows(scored)) if reps else None
    fmt = digits.format_interval
    head = (f"doubling the data gains {fmt(d_iv, True, d)} {metric} ({data['n_trials']} trials); the next model "
            f"size gains {fmt(m_iv, True, m)} at {ratio:.1f}x the parameters ({model['n_trials']} trials)")
    out["comparison"] = {"weight": k, "value": d - k * m, "interval": c_iv}
    if c_iv is None or c_iv["lo"] is None:
        name = ("neither" if d <= 0 and m <= 0 else "data" if d >= k * m else "model")
        text = {"neither": "neither lever helped in this sweep", "data": "more data is the cheaper lever",
                "model": "a bigger model is the stronger lever"}[name]
        return {**out, "answer": name, "text": f"{head}: {text} (point estimates only: the cells' trials have no "
                                               "per-row scores, so no intervals)"}
    compare = f"data minus {k:.2g} x model, per unit of compute: {fmt(c_iv, True)}"
    if d_iv["lo"] > 0 and c_iv["lo"] > 0:
        name, text = "data", "more data is the cheaper lever"
    elif m_iv["lo"] > 0 and c_iv["hi"] < 0:
        name, text = "model", "a bigger model is the stronger lever"
    elif d_iv["hi"] <= 0 and m_iv["hi"] <= 0:
        name, text = "neither", "neither lever helped in this sweep"
    else:
        needs = _needs(d, m, k, c_iv, d_iv, m_iv, reps, rows, ev, cell_map, scored)
        return {**out, "answer": "undecided", "needs": needs,
                "text": f"undecided between more data and a bigger model: {head}; {compare}; to decide: "
                        + "; or ".join(n["text"] for n in needs)}
    groups = [c["group"] for c in cell_map.values()]
    caveat = ""
    if all(len(g) < 2 for g in groups):
        caveat = " (intervals over rows only: one trial per cell cannot separate seed noise; repeats would)"
    return {**out, "answer": name, "text": f"{text}: {head}; {compare}{caveat}"}


def _needs(d, m, k, c_iv, d_iv, m_iv, reps, rows, ev, cell_map, scored) -> list[dict]:
    """What would decide the levers: rows by power (for the comparison and the leading lever's own
    gain), repeats, and the grid's empty cells."""
    c_reps, c_rows = reps["data"] - k * reps["model"], rows["data"] - k * rows["model"]
    candidates = []
    if c_iv["lo"] <= 0 <= c_iv["hi"]:
        candidates.append(rows_need(ev, d - k * m, c_rows, scored, c_reps))
    lead, lever = (d, "data") if d >= k * m else (m, "model")
    if lead > 0 and (d_iv if lever == "data" else m_iv)["lo"] <= 0:
        candidates.append(rows_need(ev, lead, rows[lever], scored, reps[lever]))
    found = [c for c in candidates if c]
    needs = [max(found, key=lambda c: c["rows"])] if found else []
    needs.append(seed_need([c["group"] for c in cell_map.values()], d - k * m, c_reps, c_rows))
    more = trials_need(cell_map)
    return needs + ([more] if more else [])
