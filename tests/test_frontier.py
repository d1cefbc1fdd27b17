"""Frontier analysis on hand-built result sets whose answers are worked out here."""

import math
from dataclasses import replace

import numpy as np
import pytest

from ftray.results.frontier import (analyse, cost_front, front_hypervolume, hypervolume_2d, iteration_time,
                                    setting_effects, smallest_meeting_target, trial_front)
from ftray.results.levers import leverage
from ftray.results.trialresult import TrialResult


def trial(id, model, params, objective, data=1.0, rank=8, lr=1e-3, status="TERMINATED", reason=None, wall=10.0,
          acc=2, tokens=1000, base=None):
    return TrialResult(id=id, status=status, reason=reason, model=model, params=params, objective=objective,
                       base_objective=base, wall_s=wall, accelerators=acc, tokens=tokens,
                       config={"model": model, "lora_rank": rank, "lr": lr, "data_fraction": data})


def test_front_ties_and_domination():
    trials = [trial("a", "s", 100, 0.5), trial("b", "s", 100, 0.5),  # exact tie: both stay
              trial("c", "m", 200, 0.5),  # as good as a and b, but bigger: dominated
              trial("d", "l", 400, 0.9), trial("e", "l", 400, 0.8),  # e is dominated by d
              trial("f", "xl", 800, None, status="ERROR", reason="error: boom")]  # never on the front
    assert trial_front(trials, "max") == ["a", "b", "d"]
    # Minimising (a loss): a and b (0.5 at size 100) are at least as good as every other trial and
    # smaller, so they alone are the front.
    assert trial_front(trials, "min") == ["a", "b"]
    trials.append(trial("g", "xs", 50, 0.9))  # the smallest model, worst loss: on the front too
    assert trial_front(trials, "min") == ["g", "a", "b"]


def test_single_and_all_errored():
    assert trial_front([trial("a", "s", 1, 0.1)], "max") == ["a"]
    errored = [trial("a", "s", 1, None, status="ERROR", reason="error: x"), trial("b", "m", 2, 0.3, reason="diverged: nan")]
    a = analyse(errored, "slot_f1", "max", target=0.5)
    assert a["frontier_params"] == [] and a["target"]["result"] is None and "none does" in a["target"]["text"]
    assert {f["id"] for f in a["failed"]} == {"a", "b"}
    assert a["verdicts"][0].startswith("no trial finished")
    assert analyse([], "slot_f1", "max")["frontier_params"] == []


def test_smallest_model_meeting_a_target():
    trials = [trial("a", "s", 100, 0.60), trial("b", "s", 100, 0.79), trial("c", "m", 300, 0.80),
              trial("d", "l", 900, 0.95)]
    hit = smallest_meeting_target(trials, 0.8, "max")  # b misses by 0.01; c meets it exactly
    assert (hit["model"], hit["trial"], hit["margin"]) == ("m", "c", pytest.approx(0.0))
    hit = smallest_meeting_target(trials, 0.7, "max")  # s's best trial (b) is past it by 0.09
    assert (hit["model"], hit["trial"], hit["margin"]) == ("s", "b", pytest.approx(0.09))
    assert smallest_meeting_target(trials, 0.99, "max") is None
    losses = [trial("a", "s", 100, 2.0), trial("b", "m", 300, 1.2)]
    assert smallest_meeting_target(losses, 1.5, "min")["margin"] == pytest.approx(0.3)


def test_hypervolume_by_hand():
    # Minimising both: points (1, 3) and (2, 1) against (4, 4):
    # (4-1)*(4-3) = 3 for the first, then (4-2)*(3-1) = 4 for the second: 7.
    assert hypervolume_2d([(1, 3), (2, 1)], (4, 4)) == pytest.approx(7)
    assert hypervolume_2d([(1, 3), (2, 1), (3, 3.5)], (4, 4)) == pytest.approx(7)  # dominated point adds 0
    assert hypervolume_2d([(5, 1)], (4, 4)) == 0.0
    # In (objective max, params): objectives 0.5 @ 10 and 0.8 @ 1000 against (0.0, 10000), log10 size:
    # minimised points (-0.5, 1) and (-0.8, 3), reference (0, 4): 0.8*1 + 0.5*(4-1-... ) worked below.
    trials = [trial("a", "s", 10, 0.5), trial("b", "l", 1000, 0.8)]
    # sorted by x: (-0.8, 3): (0+0.8)*(4-3) = 0.8; then (-0.5, 1): (0+0.5)*(3-1) = 1.0; total 1.8
    assert front_hypervolume(trials, "max", (0.0, 10000)) == pytest.approx(1.8)


def test_hypervolume_equals_optunas():
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 20, 60):
        for _ in range(4):
            pts = rng.random((n, 2))
            ref = np.array([1.1, 1.1])
            assert hypervolume_2d([tuple(p) for p in pts], tuple(ref)) == pytest.approx(compute_hypervolume(pts, ref))


def test_leverage_recovers_known_slopes():
    # objective = 0.05 * log2(fraction) + 0.1 * ladder_step + 0.5, exactly, on a grid
    ladder = [("s", 100), ("m", 400), ("l", 1600)]
    trials = [trial(f"{m}{f}", m, p, 0.05 * math.log2(f) + 0.1 * i + 0.5, data=f)
              for i, (m, p) in enumerate(ladder) for f in (0.125, 0.25, 0.5, 1.0)]
    lev = leverage(trials, "max", "score")
    assert lev["data"]["gain_per_doubling"] == pytest.approx(0.05)
    assert lev["model"]["gain_per_step"] == pytest.approx(0.1)
    assert lev["model"]["params_ratio"] == pytest.approx(4.0)
    assert lev["data"]["n_trials"] == 12
    assert "bigger model is the stronger lever" in lev["verdict"]
    # Make data the stronger lever: 0.3 per doubling
    trials = [trial(f"{m}{f}", m, p, 0.3 * math.log2(f) + 0.1 * i + 0.5, data=f)
              for i, (m, p) in enumerate(ladder) for f in (0.25, 1.0)]
    assert "more data is the cheaper lever" in leverage(trials, "max", "score")["verdict"]
    # One model, one fraction: nothing to compare
    assert "not enough trials" in leverage([trial("a", "s", 1, 0.5)], "max")["verdict"]


def test_a_control_of_the_same_size_is_compared_beside_the_ladder_not_stepped_onto():
    # s -> m -> l gains 0.1 a step; m's randomly initialised control (same size) scores 0.2.
    ladder = [("s", 100, 0.5), ("m", 400, 0.6), ("l", 1600, 0.7)]
    trials = [trial(f"{m}{f}", m, p, y + 0.05 * math.log2(f), data=f) for m, p, y in ladder for f in (0.5, 1.0)]
    trials += [trial(f"m-random{f}", "m-random", 400, 0.2, data=f) for f in (0.5, 1.0)]
    lev = leverage(trials, "max", "score")
    assert [(s["from"], s["to"]) for s in lev["model"]["steps"]] == [("s", "m"), ("m", "l")] * 2
    assert lev["model"]["gain_per_step"] == pytest.approx(0.1)
    # The control is off the ladder, so out of the data lever too (its flat line would halve nothing here
    # but pull the average down).
    assert lev["data"]["gain_per_doubling"] == pytest.approx(0.05) and set(lev["data"]["per_model"]) == {"s", "m", "l"}
    assert [(c["best"], c["other"], c["params"]) for c in lev["same_size"]] == [("m", "m-random", 400)] * 2
    assert [c["gain"] for c in lev["same_size"]] == pytest.approx([0.35, 0.4])
    from ftray.results.frontier import trial_front
    from ftray.results.report import LoadedRun, format_report

    run = LoadedRun("/tmp/r", "score", "max", tuple(trials), trial_front(trials, "max"))
    text = format_report(run, {"analysis": analyse(trials, "score", "max")})
    assert "data 1: m over m-random at 400 params: +0.4" in text


def test_setting_effects_rank_what_matters():
    trials = [trial("a", "m", 10, 0.2, rank=4, lr=1e-3), trial("b", "m", 10, 0.6, rank=16, lr=1e-3),
              trial("c", "m", 10, 0.25, rank=4, lr=2e-3), trial("d", "m", 10, 0.65, rank=16, lr=2e-3)]
    eff = setting_effects(trials, "max", continuous={"lr"})["m"]
    # rank: means 0.225 (4) vs 0.625 (16): effect 0.4. lr: 0.4 (low) vs 0.45 (high): 0.05
    assert eff["settings"]["lora_rank"]["effect"] == pytest.approx(0.4)
    assert eff["settings"]["lora_rank"]["best"] == "16"
    assert eff["settings"]["lr"]["effect"] == pytest.approx(0.05)
    assert eff["lines"][0].startswith("m: lora_rank matters most")


def test_iteration_time_and_cost_front():
    trials = [trial("a", "s", 10, 0.5, wall=10, acc=2), trial("b", "s", 10, 0.6, wall=30, acc=2),
              trial("c", "m", 50, 0.7, wall=100, acc=4), trial("d", "m", 50, None, status="ERROR", reason="error", wall=5)]
    trials[0], trials[1] = replace(trials[0], step_s=0.1), replace(trials[1], step_s=0.3)  # m's never reported one
    it = iteration_time(trials)
    assert it["per_model"]["s"]["median_s"] == 20 and it["per_model"]["m"]["median_s"] == 52.5
    assert it["per_model"]["s"]["median_step_s"] == pytest.approx(0.2) and it["per_model"]["m"]["median_step_s"] is None
    assert it["total_accelerator_s"] == 10 * 2 + 30 * 2 + 100 * 4 + 5 * 2
    assert cost_front(trials, "max") == ["a", "b", "c"]  # 20, 60, 400 accelerator-seconds, each better
    assert cost_front(trials, "max", "tokens") == ["c"]  # same tokens: only the best remains


def test_default_reference_lies_past_the_worst_trial():
    from ftray.results.frontier import default_reference

    trials = [TrialResult("a", "TERMINATED", objective=0.2, params=100), TrialResult("b", "TERMINATED", objective=0.6, params=1000)]
    assert default_reference([trials], "max") == (pytest.approx(0.16), 2000)
    assert default_reference([trials], "min") == (pytest.approx(0.64), 2000)
    # One trial, or all equal: the front still has an area.
    one = [TrialResult("a", "TERMINATED", objective=3.0, params=100)]
    ref = default_reference([one], "min")
    assert ref == (pytest.approx(3.3), 200)
    assert front_hypervolume(one, "min", ref) > 0


# ---- intervals and decisions (per-row scores drawn from known rates) ------------------------------
def with_rows(t, rate, n=200, seed=0):
    """The trial scored on n rows shared by the whole set (same row difficulties), each a hit with `rate`."""
    u = np.random.default_rng(99).random(n)
    noise = np.random.default_rng(seed).random(n)
    hits = np.where(noise < 0.5, u < rate, noise - 0.5 < rate / 2).astype(float)
    return replace(t, objective=float(hits.mean()), rows={"score": [[h, 1.0] for h in hits]})


def test_settings_that_change_nothing_say_so():
    # Every trial scored the same (a task the model never learns): no "from 4 to 4", no "matters most".
    trials = [trial(f"{r}{lr}", "m", 10, 0.0, rank=r, lr=lr) for r, lr in [(4, 1e-3), (16, 1e-3), (4, 2e-3), (16, 2e-3)]]
    eff = setting_effects(trials, "max", continuous={"lr"})["m"]
    rank = eff["settings"]["lora_rank"]
    assert (rank["worst"], rank["best"], rank["effect"]) == ("4", "16", 0)
    assert eff["lines"] == ["m: no swept setting made a difference: every value of lora_rank, lr scored the same, "
                            "4 trials"]


def test_setting_effects_carry_intervals_and_decide():
    trials = [with_rows(trial(f"{r}{lr}", "m", 10, 0, rank=r, lr=lr), 0.3 if r == 4 else 0.6, seed=i)
              for i, (r, lr) in enumerate([(4, 1e-3), (16, 1e-3), (4, 2e-3), (16, 2e-3)])]
    eff = setting_effects(trials, "max", continuous={"lr"}, metric="score")["m"]
    rank = eff["settings"]["lora_rank"]
    assert rank["answer"] == "better" and rank["interval"]["lo"] > 0.15 and rank["best"] == "16"
    assert eff["settings"]["lr"]["answer"] == "undecided"
    assert eff["lines"][0].startswith("m: lora_rank matters most (+0.")


def test_analyse_keeps_its_keys_and_adds_the_evidence():
    import json

    trials = [with_rows(trial(f"{m}{f}", m, p, 0, data=f), 0.4 + 0.1 * i + 0.1 * math.log2(f / 0.25), seed=k)
              for k, (i, (m, p)) in enumerate((i, mp) for i, mp in enumerate([("s", 100), ("m", 400)])
                                              for _ in (0.25, 1.0)) for f in [(0.25, 1.0)[k % 2]]]
    a = analyse(trials, "score", "max", target=0.5)
    for key in ("frontier_params", "frontier_cost", "frontier_tokens", "hypervolume", "target", "leverage",
                "setting_effects", "iteration_time", "finetune_gain", "failed", "verdicts",
                "source", "intervals", "decisions", "power_law"):
        assert key in a, key
    assert a["source"] == "validation" and set(a["intervals"]["trials"]) == {t.id for t in trials}
    assert a["decisions"][0]["question"] == "leverage" and a["decisions"][1]["question"] == "target"
    assert a["power_law"] == {"fitted": False, "reason": "needs 3+ model sizes and 3+ data fractions (this sweep "
                                                         "has 2 and 2)"}
    # The first model step (s -> m at data 0.25) has a true gain of +0.1 (rates 0.4 -> 0.5) on 200 rows
    # whose paired differences have a standard error near 0.045: its interval holds +0.1, excludes 0,
    # and so the one right answer is "better" ("undecided" would be an interval too wide, "worse" a sign
    # error).
    step = a["leverage"]["model"]["steps"][0]
    assert (step["from"], step["to"], step["data_fraction"]) == ("s", "m", 0.25)
    assert 0 < step["interval"]["lo"] <= step["gain"] <= step["interval"]["hi"]
    assert step["interval"]["lo"] <= 0.1 <= step["interval"]["hi"]
    assert step["answer"] == "better"
    json.dumps(a, allow_nan=False)


def test_format_report_prints_intervals_and_undecided_lines():
    from ftray.results.frontier import trial_front as front
    from ftray.results.report import LoadedRun, format_report

    # Two sizes, two fractions, 64 rows, gains of a point: nothing here can be decided.
    trials = [with_rows(trial(f"{m}{f}", m, p, 0, data=f), 0.5 + 0.01 * i, n=64, seed=i * 2 + j)
              for i, (m, p) in enumerate([("s", 100), ("m", 400)]) for j, f in enumerate((0.5, 1.0))]
    run = LoadedRun("/tmp/r", "score", "max", tuple(trials), front(trials, "max"))
    text = format_report(run, {"analysis": analyse(trials, "score", "max", target=0.5)})
    assert "Scores with 95% intervals over rows" in text
    assert "undecided between more data and a bigger model" in text and "to decide:" in text
    assert "repeats: one trial per cell cannot separate seed noise" in text
    assert "power law (Zhang et al., ICLR 2024): not fitted" in text
    assert " [" in text.split("Each step up the model ladder")[1]
    assert "Each step up the model ladder (best configuration at the same data fraction; paired intervals)" in text


def test_a_loss_to_minimise_reads_right():
    """eval_loss (mode min): the report says how its gains are signed, ties print as +0 not -0, a test
    score that is not a number is no score, the scores' heading promises no intervals where there are
    none and the caveat says why, and the model step counts only the trials it compares."""
    from ftray.results import runfolder as rf
    from ftray.results.frontier import trial_front as front
    from ftray.results.report import LoadedRun, format_report

    def loss(id, model, params, value, data, test=None):
        t = trial(id, model, params, value, data=data)
        rows = {"slot_f1": [[1.0, 2.0]] * 8}  # the task's metric is scored row by row; eval_loss is not
        return replace(t, rows=rows, test=rf.TestScores({"eval_loss": test if test is not None else value},
                                                        rows, 8, 8, "checkpoint_step_000040"))

    trials = [loss("a", "s", 100, 2.0, 0.5), loss("b", "s", 100, 2.0, 1.0), loss("c", "m", 300, 2.0, 1.0)]
    run = LoadedRun("/tmp/r", "eval_loss", "min", tuple(trials), front(trials, "min"))
    text = format_report(run, {"analysis": analyse(trials, "eval_loss", "min")})
    assert "eval_loss: lower is better, so every gain below is signed + for a fall in eval_loss" in text
    assert "-0 " not in text and "-0)" not in text and "s -> m: +0 at 3.0x params" in text
    assert "Scores (no intervals: eval_loss has no per-row scores); validation chose, test reports" in text
    assert "eval_loss is not scored row by row (the task's metrics are: slot_f1)" in text
    assert "Each step up the model ladder (best configuration at the same data fraction)" in text  # no intervals
    # The one step up the ladder (s -> m at data 1) compares 2 trials, not all 3.
    assert leverage(trials, "min", "eval_loss")["model"]["n_trials"] == 2
    max_run = LoadedRun("/tmp/r", "slot_f1", "max", tuple(trials), front(trials, "max"))
    assert "lower is better" not in format_report(max_run, {"analysis": analyse(trials, "slot_f1", "max")})
    # A test score that is not a number is none: that trial is off the test front, and off the JSON.
    nan = replace(trials[2], test=rf.TestScores({"eval_loss": float("nan")}, {}, 8, 8, "checkpoint_step_000040"))
    assert nan.test_score("eval_loss") is None and nan.on_test("eval_loss").objective is None


def test_a_report_of_a_sweep_still_running_says_so_and_reads_the_ended_trials():
    from ftray.results.frontier import trial_front as front
    from ftray.results.report import LoadedRun, format_report

    trials = [with_rows(trial("a", "s", 100, 0, data=1.0), 0.3, n=64, seed=1),
              with_rows(trial("b", "m", 400, 0, data=1.0), 0.5, n=64, seed=2),
              with_rows(trial("c", "m", 400, 0, data=0.5, status="RUNNING", wall=3.0), 0.9, n=64, seed=3)]
    run = LoadedRun("/tmp/r", "score", "max", tuple(trials), front(trials, "max"))
    text = format_report(run, {"analysis": analyse(trials, "score", "max")})
    assert "the sweep is not done: 1 of the 3 trials so far have not ended; what follows reads those that have" in text
    scores = text.split("Scores with")[1].split("What the sweep says")[0]
    assert "  a  " in scores and "  b  " in scores and "  c  " not in scores  # its score is a step on the way
    timing = iteration_time(trials)
    assert timing["n_trials"] == 2 and timing["per_model"]["m"]["n"] == 1  # its time so far is not a trial's
    assert "not done" not in format_report(replace(run, trials=tuple(trials[:2])),
                                           {"analysis": analyse(trials[:2], "score", "max")})
