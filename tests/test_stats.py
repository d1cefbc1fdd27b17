"""Known-answer tests for the report's uncertainty: trial sets drawn from known per-row rates, so the
right verdict, the intervals' coverage and the power law's exponents are known in advance."""

import json
import math

import numpy as np
import pytest

from ftray import stats
from ftray.frontier import analyse, leverage

LADDER = [("s", 100_000), ("m", 400_000), ("l", 1_600_000)]
FRACTIONS = (0.25, 0.5, 1.0)


def make_trials(rate, n_rows=400, seeds=(0,), rho=0.5, seed=0, metric="acc", test_rows=0, seed_sd=0.0):
    """One trial per (model, fraction, seed); each row a hit with probability rate(model index, params,
    fraction). A share `rho` of each trial's rows follows a row difficulty shared by all trials (as
    real eval rows do: some are hard for every model), the rest are independent; either way a row is
    a hit with exactly the given rate. `seed_sd`: each seed's rate is off by a normal draw of this sd
    (training noise that no number of eval rows removes)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n_rows)
    test_difficulty = rng.random(test_rows)
    trials = []
    for i, (model, params) in enumerate(LADDER):
        for f in FRACTIONS:
            for s in seeds:
                p = float(np.clip(rate(i, params, f) + rng.normal(0, seed_sd) if seed_sd else rate(i, params, f), 0, 1))
                def draw(u):
                    return np.where(rng.random(len(u)) < rho, u < p, rng.random(len(u)) < p).astype(float)
                hits = draw(difficulty)
                t = {"id": f"{model}-{f:g}-{s}", "model": model, "params": params, "objective": float(hits.mean()),
                     "data_fraction": f, "lora_rank": 8, "lr": 1e-3, "status": "TERMINATED", "reason": None,
                     "wall_s": 10.0, "accelerators": 1, "tokens": 100, "base_objective": None,
                     "config": {"model": model, "data_fraction": f, "lr": 1e-3, "seed": s},
                     "rows": {metric: [[h, 1.0] for h in hits]}}
                if test_rows:
                    th = draw(test_difficulty)
                    t["test"] = {"metrics": {metric: float(th.mean())}, "rows": {metric: [[h, 1.0] for h in th]},
                                 "n": test_rows, "of": test_rows}
                trials.append(t)
    return trials


# ---- intervals ------------------------------------------------------------------------------------
def test_bootstrap_interval_covers_the_true_rate_at_its_nominal_level():
    # 200 draws of 100 Bernoulli(0.3) rows: a 95% interval should hold 0.3 in about 95% of them. With
    # 200 draws the count's own sd is ~3 points, so 90-99% is the band that says "nominal".
    rng = np.random.default_rng(1)
    hits = sum(
        (iv := stats.bootstrap_ci([[float(h), 1.0] for h in rng.random(100) < 0.3], seed=k))["lo"] <= 0.3 <= iv["hi"]
        for k in range(200))
    assert 0.90 <= hits / 200 <= 0.99, hits


def test_ratio_metric_and_paired_difference_cover_the_truth():
    # A micro-averaged ratio (den varies per row, like slot pairs) and a paired difference of two
    # trials on shared rows: true ratio 0.6, true difference +0.1. 500 resamples keep the 2 x 200
    # intervals under a second; the percentile ends move by ~0.003 from 2000, well inside the band.
    rng = np.random.default_rng(2)
    ratio_hits = diff_hits = 0
    for k in range(200):
        den = rng.integers(1, 6, 80).astype(float)
        num = rng.binomial(den.astype(int), 0.6).astype(float)
        iv = stats.bootstrap_ci(np.column_stack([num, den]), n_boot=500, seed=k)
        ratio_hits += iv["lo"] <= 0.6 <= iv["hi"]
        u = rng.random(150)
        a, b = (u < 0.5).astype(float), (u < 0.6).astype(float)  # b is a plus the rows in [0.5, 0.6)
        flip = rng.random(150) < 0.3  # some rows answered independently
        a[flip] = rng.random(flip.sum()) < 0.5
        b[flip] = rng.random(flip.sum()) < 0.6
        d = stats.paired_diff_ci([[x, 1] for x in a], [[x, 1] for x in b], n_boot=500, seed=k)
        diff_hits += d["lo"] <= 0.1 <= d["hi"]
    assert 0.90 <= ratio_hits / 200 <= 0.99, ratio_hits
    assert 0.90 <= diff_hits / 200 <= 0.99, diff_hits


def test_pairing_narrows_the_difference():
    rng = np.random.default_rng(3)
    u = rng.random(300)
    a, b = [[float(x < 0.5), 1] for x in u], [[float(x < 0.55), 1] for x in u]
    paired = stats.paired_diff_ci(a, b)
    alone = [stats.bootstrap_ci(r) for r in (a, b)]
    assert paired["lo"] > 0  # the same rows: every changed row moved up, the difference is clear
    assert alone[1]["lo"] < alone[0]["hi"]  # while the two separate intervals overlap


def test_resamples_are_shared_by_row_count_and_stable():
    a = [[1, 1], [0, 1], [1, 1], [0, 1]]
    alone = stats.resample_ratios([a], 300, seed=4)[:, 0]
    beside = stats.resample_ratios([[[0, 1]] * 7, a], 300, seed=4)[:, 1]
    assert np.array_equal(alone, beside)  # another trial (other row count) does not move this one
    with pytest.raises(ValueError):
        stats.paired_diff_ci(a, a[:3])


# ---- power and digits -----------------------------------------------------------------------------
def test_power_calculation_by_hand():
    # Per-row paired differences of a = 1,1,0,0 and b = 1,1,1,0 are 0,0,1,0: mean 0.25, sd 0.5
    # (variance 0.75 / 3). n = ((1.95996 + 0.84162) * 0.5 / 0.25)^2 = 31.39 -> 32 rows.
    a, b = [[1, 1], [1, 1], [0, 1], [0, 1]], [[1, 1], [1, 1], [1, 1], [0, 1]]
    assert stats.paired_sd(a, b) == pytest.approx(0.5)
    assert stats.rows_needed(0.5, 0.25) == 32
    assert stats.paired_diff_ci(a, b)["rows_needed"] == 32
    # From a standard error: se 0.1 on 25 rows is sd 0.5; the same 32.
    assert stats.rows_needed_from_se(0.1, 25, 0.25) == 32
    # Seed noise rows cannot shrink: the rows' share must fit under (0.25 / 2.8016)^2 - 0.05^2.
    budget = (0.25 / 2.80158) ** 2 - 0.05 ** 2
    assert stats.rows_needed_from_se(0.1, 25, 0.25, floor_se=0.05) == math.ceil(25 * 0.1 ** 2 / budget)
    assert stats.rows_needed_from_se(0.1, 25, 0.25, floor_se=0.1) is None
    assert stats.rows_needed(0.5, 0.0) is None


@pytest.mark.parametrize("args, text", [
    ((0.412, 0.352, 0.472), "0.41 [0.35, 0.47]"),
    ((0.412, 0.398, 0.426), "0.412 [0.398, 0.426]"),  # half-width 0.014: two digits of it
    ((0.05, -0.01, 0.11, True), "+0.05 [-0.01, +0.11]"),
    ((-0.0004, -0.03, 0.03, True), "+0.00 [-0.03, +0.03]"),  # no "-0.00"
    ((412.3, 352.0, 472.0), "412 [352, 472]"),
    ((0.4123, None, None), "0.412"),
])
def test_digits_follow_the_interval(args, text):
    assert stats.format_ci(*args) == text


# ---- verdicts on known truths ---------------------------------------------------------------------
def test_a_clear_data_lever_is_named():
    # +0.12 per doubling of data, nothing from size: data wins on every count.
    trials = make_trials(lambda i, p, f: 0.4 + 0.12 * math.log2(f / 0.25))
    d = leverage(trials, "max", "acc")["decision"]
    assert d["answer"] == "data", d["text"]
    assert "more data is the cheaper lever" in d["text"] and "seed noise" in d["text"]  # one seed: says so


def test_a_clear_model_lever_is_named():
    # +0.2 per 4x step, nothing from data: even weighed at half (2x compute against 4x) size wins.
    trials = make_trials(lambda i, p, f: 0.3 + 0.2 * i)
    d = leverage(trials, "max", "acc")["decision"]
    assert d["answer"] == "model", d["text"]


def test_a_same_size_control_gets_its_own_paired_line_and_leaves_the_levers_alone():
    # +0.2 per 4x step; beside m, a control of m's size that scores 0.1 at every fraction.
    trials = make_trials(lambda i, p, f: 0.3 + 0.2 * i)
    control = make_trials(lambda i, p, f: 0.1, seed=1)
    trials += [dict(t, id="ctl-" + t["id"], model="m-random", config=dict(t["config"], model="m-random"))
               for t in control if t["model"] == "m"]
    lev = leverage(trials, "max", "acc")
    assert lev["decision"]["answer"] == "model", lev["decision"]["text"]
    assert [(s["from"], s["to"]) for s in lev["model"]["steps"]] == [("s", "m"), ("m", "l")] * 3
    assert set(lev["data"]["per_model"]) == {"s", "m", "l"}
    for c in lev["same_size"]:  # m (0.5) over its control (0.1), on the same rows: an interval above zero
        assert (c["best"], c["other"]) == ("m", "m-random") and c["answer"] == "better"
        assert c["interval"]["lo"] <= c["gain"] <= c["interval"]["hi"] and abs(c["gain"] - 0.4) < 0.1


def test_a_difference_inside_the_noise_is_undecided_and_says_what_would_decide_it():
    # Both levers gain half a point on 64 rows: the intervals are several points wide.
    trials = make_trials(lambda i, p, f: 0.5 + 0.005 * i + 0.005 * math.log2(f / 0.25), n_rows=64)
    lev = leverage(trials, "max", "acc")
    d = lev["decision"]
    assert d["answer"] == "undecided" and d["text"].startswith("undecided")
    kinds = {n["kind"] for n in d["needs"]}
    assert "repeats" in kinds and ("rows" in kinds or d["comparison"]["value"] == 0)
    rows = next(n for n in d["needs"] if n["kind"] == "rows")
    assert rows["rows"] > 64 and rows["now"] == 64
    # Each step is its own 95% interval: a few of six may exclude the truth by chance, most do not.
    assert sum(s["answer"] == "undecided" for s in lev["model"]["steps"]) >= 4


def test_repeats_put_seed_noise_into_the_interval():
    from ftray.evidence import Evidence, cells

    # Seeds whose rates differ by ~0.08 (sd), 400 rows each: the rows pin each trial down to a few
    # points, so the seeds' spread is most of what is uncertain about a configuration's score.
    trials = make_trials(lambda i, p, f: 0.5 + 0.02 * i, seeds=(0, 1, 2, 3), seed_sd=0.08, seed=1)
    a = analyse(trials, "acc", "max")
    cell = next(c for c in a["intervals"]["cells"] if c["model"] == "m" and c["data_fraction"] == 1.0)
    assert cell["seeds"] == 4 and len(cell["trials"]) == 4
    ev = Evidence(trials, "acc")
    group = cells(trials, "max")[(400_000, "m", 1.0)]["group"]
    assert np.std(ev.reps(group)) > 1.5 * np.std(ev.reps(group, seeds=False))
    d = a["leverage"]["decision"]
    assert d["answer"] == "undecided"
    assert any(n["kind"] == "repeats" and "seeds per cell" in n["text"] for n in d["needs"]), d["needs"]
    assert not any(v.startswith("m: seed") for v in a["verdicts"])  # the seed makes repeats, not a setting


def test_target_met_with_confidence_or_on_the_point_estimate_only():
    trials = make_trials(lambda i, p, f: [0.5, 0.7, 0.9][i], n_rows=200)
    sure = analyse(trials, "acc", "max", target=0.6)["target"]
    assert sure["result"]["model"] == "m" and sure["confidence"] == "met with confidence"
    # A target just under m's score: m meets it on the point estimate; l is the first to be sure.
    m_best = max(t["objective"] for t in trials if t["model"] == "m")
    close = analyse(trials, "acc", "max", target=m_best - 0.005)["target"]
    assert close["result"]["model"] == "m" and close["confidence"] == "met on the point estimate only"
    assert close["with_confidence"]["model"] == "l"
    assert "met on the point estimate only" in close["text"] and "first by l" in close["text"]


def test_power_law_recovers_known_exponents():
    # Noiseless cells: the fit is exact.
    n = np.array([p for _, p in LADDER for _ in FRACTIONS], dtype=float)
    d = np.array([f for _ in LADDER for f in FRACTIONS])
    loss = 2.0 * n ** -0.3 * d ** -0.15
    fit = stats.fit_power_law(n, d, loss)
    assert fit["alpha"] == pytest.approx(-0.3) and fit["beta"] == pytest.approx(-0.15)
    assert fit["log_A"] == pytest.approx(math.log(2.0))
    # Rows drawn from 1 - quality = 0.5 (N / 1e5)^-0.3 f^-0.2: the intervals hold the truth, and the
    # size for a target (0.8 at the full data: N = 1e5 * 0.4^(-1/0.3) = 2.12M) lies in its interval.
    trials = make_trials(lambda i, p, f: 1 - 0.5 * (p / 1e5) ** -0.3 * f ** -0.2, n_rows=1000, rho=0.3, seed=7)
    law = analyse(trials, "acc", "max", target=0.8)["power_law"]
    assert law["fitted"] and law["cells"] == 9
    assert law["alpha"]["lo"] <= -0.3 <= law["alpha"]["hi"]
    assert law["beta"]["lo"] <= -0.2 <= law["beta"]["hi"]
    x = law["extrapolation"]
    assert x["lo"] <= 1e5 * 0.4 ** (-1 / 0.3) <= x["hi"] and x["beyond_sweep"]
    assert "power law" in law["text"]
    two = [t for t in trials if t["data_fraction"] != 0.5]
    assert not analyse(two, "acc", "max")["power_law"]["fitted"]  # 2 fractions: no fit


def test_held_out_test_scores_lead_and_the_output_is_strict_json():
    trials = make_trials(lambda i, p, f: 0.4 + 0.1 * i, n_rows=100, test_rows=150)
    a = analyse(trials, "acc", "max", target=0.5)
    assert a["source"] == "test" and a["intervals"]["rows"] == [150]
    t0 = trials[0]
    assert a["intervals"]["trials"][t0["id"]]["value"] == t0["test"]["metrics"]["acc"]
    assert a["intervals"]["validation"][t0["id"]]["value"] == t0["objective"]
    assert a["verdicts"][0].startswith("numbers are on 150 held-out test rows")
    json.dumps(a, allow_nan=False)
    trials[0]["test"] = None  # one trial without test scores: everything stays on validation
    assert analyse(trials, "acc", "max")["source"] == "validation"


def test_without_rows_there_are_no_intervals_and_the_report_says_so():
    trials = make_trials(lambda i, p, f: 0.3 + 0.2 * i)
    for t in trials:
        t.pop("rows")
    a = analyse(trials, "acc", "max", target=0.6)
    assert "point estimates only" in a["leverage"]["verdict"] and "bigger model" in a["leverage"]["verdict"]
    assert a["intervals"]["trials"] == {} and a["target"]["confidence"] == "no interval"
    assert any(v.startswith("no per-row scores") for v in a["verdicts"])
    assert a["power_law"]["fitted"] and a["power_law"]["noise"].startswith("cells only")
    json.dumps(a, allow_nan=False)
