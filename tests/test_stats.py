"""Known-answer tests for the report's uncertainty: trial sets drawn from known per-row rates, so the
right verdict, the intervals' coverage and the power law's exponents are known in advance."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from ftray.results import digits, powerlaw, stats
from ftray.results.frontier import analyse
from ftray.results.levers import leverage
from ftray.results import runfolder as rf
from ftray.results.trialresult import TrialResult

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
                test = None
                if test_rows:
                    th = draw(test_difficulty)
                    test = rf.TestScores({metric: float(th.mean())}, {metric: [[h, 1.0] for h in th]}, test_rows,
                                      test_rows, checkpoint="")
                trials.append(TrialResult(
                    id=f"{model}-{f:g}-{s}", status="TERMINATED", model=model, params=params,
                    objective=float(hits.mean()), wall_s=10.0, accelerators=1, tokens=100,
                    config={"model": model, "data_fraction": f, "lr": 1e-3, "seed": s},
                    rows={metric: [[h, 1.0] for h in hits]}, test=test))
    return trials


# ---- intervals ------------------------------------------------------------------------------------
# The grid: a nominal 95% interval must hold the truth in >= 93% of draws in every cell and in no
# more than 98.5% on average (a binomial's coverage is discrete, so an exact method overshoots in some
# cells; it must not overshoot everywhere).
ROWS, RATES = (16, 32, 100, 200), (0.01, 0.05, 0.1, 0.3, 0.5)
FLOOR, MEAN_CEILING = 0.93, 0.985
DRAWS = 2000  # per cell: a coverage of 0.95 is then known to +-0.01 (two sds), inside the band


def proportion_coverage(n: int, p: float) -> float:
    """Exact coverage for n Bernoulli(p) rows: the interval of every possible count of hits (all drawn at
    once, as the report draws a sweep's trials), weighted by the count's binomial probability. No draws
    of rows, so no Monte Carlo error in the coverage."""
    sets = [[[1.0, 1.0]] * s + [[0.0, 1.0]] * (n - s) for s in range(n + 1)]
    lo, hi = stats.bounds(stats.resample_ratios(sets), np.arange(n + 1) / n)
    pmf = np.array([math.comb(n, s) * p ** s * (1 - p) ** (n - s) for s in range(n + 1)])
    return float(pmf[(lo <= p) & (p <= hi)].sum())


def ratio_rows(rng, n: int, p: float, draws: int) -> tuple[np.ndarray, np.ndarray]:
    """A micro-averaged metric like slot F1: each row 1-5 units (den), each row's units right with its own
    rate drawn around p (rows differ in difficulty), so the true ratio is p and rows are clustered."""
    den = rng.integers(1, 6, (draws, n)).astype(float)
    num = rng.binomial(den.astype(int), rng.beta(4 * p, 4 * (1 - p), (draws, n))).astype(float)
    return num, den


def paired_rows(rng, n: int, p: float, draws: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Two trials on the same rows: a right at rate p, b at q = p + min(p, (1 - p) / 2); half the rows
    share one difficulty for both (as real rows do), the rest are answered independently. Truth q - p."""
    q = p + min(p, (1 - p) / 2)
    u = rng.random((draws, n))
    v = np.where(rng.random((draws, n)) < 0.5, u, rng.random((draws, n)))
    return (u < p).astype(float), (v < q).astype(float), q - p


def covered(num_sets: np.ndarray, den_sets: np.ndarray, truth: float, pair: bool = False) -> float:
    """Share of draws whose interval holds the truth, by the report's own code path (all draws' trials
    under one set of weights, as the report draws a sweep's trials): one trial's ratio, or b - a for
    `pair` (the first half of the sets a, the second b)."""
    draws = stats.resample_ratios([np.column_stack(r) for r in zip(num_sets, den_sets)])
    values = num_sets.sum(axis=1) / den_sets.sum(axis=1)
    if pair:
        half = len(values) // 2
        draws = draws.columns(range(half, 2 * half)) - draws.columns(range(half))
        values = values[half:] - values[:half]
    lo, hi = stats.bounds(draws, values)
    return float(((lo <= truth) & (truth <= hi)).mean())


def ratio_coverage(n: int, p: float, seed: int = 0) -> float:
    num, den = ratio_rows(np.random.default_rng([seed, n, int(p * 100)]), n, p, DRAWS)
    return covered(num, den, p)


def paired_coverage(n: int, p: float, seed: int = 0) -> float:
    # In blocks of draws: 2 x DRAWS trials at once would hold a few hundred MB of draws.
    rng = np.random.default_rng([seed, n, int(p * 100)])
    held = []
    for _ in range(4):
        a, b, truth = paired_rows(rng, n, p, DRAWS // 4)
        held.append(covered(np.concatenate([a, b]), np.ones((2 * len(a), n)), truth, pair=True))
    return float(np.mean(held))


def test_one_trials_proportion_interval_holds_its_level_over_the_whole_grid():
    cells = {(n, p): proportion_coverage(n, p) for n in ROWS for p in RATES}
    assert min(cells.values()) >= FLOOR, cells
    assert np.mean(list(cells.values())) <= MEAN_CEILING, cells


@pytest.mark.parametrize("n", [16, 32])
def test_all_zero_rows_get_clopper_pearsons_upper_end(n):
    # 0 hits of n: [0, 1 - 0.025^(1/n)] exactly (Clopper-Pearson), about 3.7 / n; Monte Carlo moves it a little.
    iv = stats.bootstrap_ci([[0.0, 1.0]] * n)
    assert iv["lo"] == 0.0 and iv["kind"] == "proportion"
    assert iv["hi"] == pytest.approx(1 - 0.025 ** (1 / n), rel=0.08)
    top = stats.bootstrap_ci([[1.0, 1.0]] * n)  # and all ones, mirrored
    assert top["hi"] == 1.0 and top["lo"] == pytest.approx(0.025 ** (1 / n), abs=0.02)


# The default run keeps the small-row corner, where the old bootstrap failed, at both ends of the rates;
# the whole grid runs with `pytest -m slow`.
SUBSET = [(16, 0.01), (32, 0.3)]


@pytest.mark.parametrize("n, p", SUBSET)
def test_ratio_metric_and_paired_difference_cover_at_few_rows(n, p):
    assert ratio_coverage(n, p) >= FLOOR
    assert paired_coverage(n, p) >= FLOOR


@pytest.mark.slow
def test_ratio_metric_and_paired_difference_hold_their_level_over_the_whole_grid():
    for name, coverage in (("ratio", ratio_coverage), ("paired", paired_coverage)):
        cells = {(n, p): coverage(n, p) for n in ROWS for p in RATES}
        assert min(cells.values()) >= FLOOR, (name, cells)
        assert np.mean(list(cells.values())) <= MEAN_CEILING, (name, cells)


def test_the_reports_interval_for_a_trial_is_bootstrap_ci_of_its_rows():
    trials = make_trials(lambda i, p, f: [0.02, 0.3, 0.6][i], n_rows=16)
    a = analyse(trials, "acc", "max")
    for t in trials[::4]:
        alone = stats.bootstrap_ci(t.rows["acc"])
        shown = a["intervals"]["trials"][t.id]
        assert shown["lo"] == pytest.approx(alone["lo"], abs=1e-12) and shown["hi"] == pytest.approx(alone["hi"], abs=1e-12)


def test_row_kind_is_read_from_the_rows():
    assert stats.row_kind([[1, 1], [0, 1], [1, 1]]) == stats.RowKind.PROPORTION
    assert stats.row_kind([[4, 6], [0, 0], [2, 4]]) == stats.RowKind.RATIO  # slot F1; a den-0 row says nothing
    assert stats.row_kind([[0.5, 1], [1, 1], [0, 1]]) == stats.RowKind.SCORE  # ROUGE-L
    assert stats.score_range([[0.5, 1], [1, 1]]) == (0.0, 1.0)
    assert stats.score_range([[2.5, 1], [-1, 1]]) == (-1.0, 2.5)  # a score outside [0, 1]: its own extremes


def test_draws_keep_the_unfavourable_end_through_arithmetic():
    d = stats.Draws(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    assert np.array_equal((-d).low, -d.high) and np.array_equal((np.float64(-2) * d).high, -2 * d.low)
    diff = d - d  # a difference takes one side low and the other high: never a point
    assert np.array_equal(diff.low, d.low - d.high) and np.array_equal(diff.high, d.high - d.low)
    assert np.array_equal(sum([d, d]).centre, 2 * d.centre)


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
    alone = stats.resample_ratios([a], 300, seed=4).column(0)
    beside = stats.resample_ratios([[[0, 1]] * 7, a, [[1, 1]] * 4], 300, seed=4).column(1)
    # Other trials, of another row count or of the same, do not move this one.
    assert np.allclose(alone.low, beside.low, rtol=1e-12) and np.allclose(alone.high, beside.high, rtol=1e-12)
    with pytest.raises(ValueError):
        stats.paired_diff_ci(a, a[:3])


# ---- power and digits -----------------------------------------------------------------------------
def test_power_calculation_by_hand():
    # Per-row paired differences of a = 1,1,0,0 and b = 1,1,1,0 are 0,0,1,0: mean 0.25, sd 0.5
    # (variance 0.75 / 3). n = ((1.95996 + 0.84162) * 0.5 / 0.25)^2 = 31.39 -> 32 rows.
    a, b = [[1, 1], [1, 1], [0, 1], [0, 1]], [[1, 1], [1, 1], [1, 1], [0, 1]]
    assert stats.paired_sd(a, b) == pytest.approx(0.5)
    assert stats.rows_needed(0.5, 0.25) == 32
    # paired_diff_ci plans from its interval's own width, as the verdicts do: on 4 rows the pseudo-row
    # (see stats) weighs a fifth, so the error is wider than the rows' sd alone says and more rows are asked.
    d = stats.paired_diff_ci(a, b)
    assert d["rows_needed"] == stats.rows_needed_from_se(d["se"], 4, 0.25) and d["rows_needed"] > 32
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
    assert digits.format_ci(*args) == text


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
    trials += [replace(t, id="ctl-" + t.id, model="m-random", config=dict(t.config, model="m-random"))
               for t in control if t.model == "m"]
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
    from ftray.results.evidence import Evidence, cells

    # Seeds whose rates differ by ~0.08 (sd), 400 rows each: the rows pin each trial down to a few
    # points, so the seeds' spread is most of what is uncertain about a configuration's score.
    trials = make_trials(lambda i, p, f: 0.5 + 0.02 * i, seeds=(0, 1, 2, 3), seed_sd=0.08, seed=1)
    a = analyse(trials, "acc", "max")
    cell = next(c for c in a["intervals"]["cells"] if c["model"] == "m" and c["data_fraction"] == 1.0)
    assert cell["seeds"] == 4 and len(cell["trials"]) == 4
    ev = Evidence(trials, "acc")
    group = cells(trials, "max")[(400_000, "m", 1.0)]["group"]
    assert np.std(ev.reps(group).centre) > 1.5 * np.std(ev.reps(group, seeds=False).centre)
    d = a["leverage"]["decision"]
    assert d["answer"] == "undecided"
    assert any(n["kind"] == "repeats" and "seeds per cell" in n["text"] for n in d["needs"]), d["needs"]
    assert not any(v.startswith("m: seed") for v in a["verdicts"])  # the seed makes repeats, not a setting


def test_the_same_scores_give_the_same_intervals_whatever_the_trial_ids():
    """Tune names trials anew in every run (random ids, so another order): a report of the same scores
    must not move. Repeats are where the order used to matter (the draw of seeds)."""
    trials = make_trials(lambda i, p, f: 0.5 + 0.02 * i, seeds=(0, 1, 2), seed_sd=0.08, seed=1)
    # Other ids, sorting in the reverse order.
    renamed = [replace(t, id=f"z{len(trials) - k:04d}") for k, t in enumerate(trials)]
    first, second = analyse(trials, "acc", "max"), analyse(list(reversed(renamed)), "acc", "max")
    strip = lambda cs: sorted((c["model"], c["data_fraction"], c["interval"]["lo"], c["interval"]["hi"]) for c in cs)
    assert strip(first["intervals"]["cells"]) == strip(second["intervals"]["cells"])
    assert first["verdicts"] == second["verdicts"]


def test_target_met_with_confidence_or_on_the_point_estimate_only():
    trials = make_trials(lambda i, p, f: [0.5, 0.7, 0.9][i], n_rows=200)
    sure = analyse(trials, "acc", "max", target=0.6)["target"]
    assert sure["result"]["model"] == "m" and sure["confidence"] == "met with confidence"
    # A target just under m's score: m meets it on the point estimate; l is the first to be sure.
    m_best = max(t.objective for t in trials if t.model == "m")
    close = analyse(trials, "acc", "max", target=m_best - 0.005)["target"]
    assert close["result"]["model"] == "m" and close["confidence"] == "met on the point estimate only"
    assert close["with_confidence"]["model"] == "l"
    assert "met on the point estimate only" in close["text"] and "first by l" in close["text"]


def test_power_law_recovers_known_exponents():
    # Noiseless cells: the fit is exact.
    n = np.array([p for _, p in LADDER for _ in FRACTIONS], dtype=float)
    d = np.array([f for _ in LADDER for f in FRACTIONS])
    loss = 2.0 * n ** -0.3 * d ** -0.15
    fit = powerlaw.fit_power_law(n, d, loss)
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
    two = [t for t in trials if t.data_fraction != 0.5]
    assert not analyse(two, "acc", "max")["power_law"]["fitted"]  # 2 fractions: no fit


def test_held_out_test_scores_lead_and_the_output_is_strict_json():
    trials = make_trials(lambda i, p, f: 0.4 + 0.1 * i, n_rows=100, test_rows=150)
    a = analyse(trials, "acc", "max", target=0.5)
    assert a["source"] == "test" and a["intervals"]["rows"] == [150]
    t0 = trials[0]
    assert a["intervals"]["trials"][t0.id]["value"] == t0.test.metrics["acc"]
    assert a["intervals"]["validation"][t0.id]["value"] == t0.objective
    assert a["verdicts"][0].startswith("numbers are on 150 held-out test rows")
    json.dumps(a, allow_nan=False)
    trials[0] = replace(trials[0], test=None)  # one trial without test scores: everything stays on validation
    assert analyse(trials, "acc", "max")["source"] == "validation"


def test_without_rows_there_are_no_intervals_and_the_report_says_so():
    trials = [replace(t, rows=None) for t in make_trials(lambda i, p, f: 0.3 + 0.2 * i)]
    a = analyse(trials, "acc", "max", target=0.6)
    assert "point estimates only" in a["leverage"]["verdict"] and "bigger model" in a["leverage"]["verdict"]
    assert a["intervals"]["trials"] == {} and a["target"]["confidence"] == "no interval"
    assert any(v.startswith("no per-row scores") for v in a["verdicts"])
    assert a["power_law"]["fitted"] and a["power_law"]["noise"].startswith("cells only")
    json.dumps(a, allow_nan=False)
