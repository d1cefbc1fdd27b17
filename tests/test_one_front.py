"""One front, decided once: the end-of-sweep pruning keeps the front the report's verdicts read.

A hand-made run folder (no Ray, no training) whose validation front and test front differ: the
smaller model's better trial on validation rows is the worse on held-out test rows, and the same at
the larger size. `ftray.api.finish` (what `ftray run` and `ftray.run` do at the end of a sweep) scores
held-out rows first, then prunes, then reports; the test front's adapters must survive.
"""

import csv
import io
import json

import pytest

from ftray.results import runfolder as rf
from ftray.spec.config import SETTINGS, TrialConfig
from ftray.results.frontier import trial_front

PARAMS = {"tiny-xs": 100, "tiny-s": 400}
ROWS = 20
# id: (model, validation slot_f1, test slot_f1). Validation front: a, c. Test front: b, d.
TRIALS = {"a": ("tiny-xs", 0.50, 0.30), "b": ("tiny-xs", 0.40, 0.45),
          "c": ("tiny-s", 0.60, 0.50), "d": ("tiny-s", 0.55, 0.60)}


def rows(rate: float) -> list[list[float]]:
    hits = round(rate * ROWS)
    return [[1.0, 1.0]] * hits + [[0.0, 1.0]] * (ROWS - hits)


def make_run(run_dir, sweep) -> None:
    run_dir.mkdir()
    rf.write_record(str(run_dir), rf.RunRecord(
        sweep=sweep.describe(), objective={"metric": "slot_f1", "mode": "max"}, model_params=PARAMS,
        workers={m: 1 for m in PARAMS}, gpus_per_worker={}, metrics=sweep.metric_names()))
    state = {"trial_data": [[json.dumps({"trial_id": i, "status": "TERMINATED", "relative_logdir": i}),
                             json.dumps({})] for i in TRIALS]}
    (run_dir / "experiment_state-2026-12-01_10-00-00.json").write_text(json.dumps(state))
    for i, (model, valid, _) in TRIALS.items():
        trial_dir = run_dir / i
        trial_dir.mkdir()
        # Trial a was stopped early (step 10 of its 20): the CSV's "steps" is the budget, TrialConfig's.
        step = 10 if i == "a" else 20
        last = {"step": step, "total_steps": 20, "slot_f1": valid, "eval_loss": 1.0, "eval_rows": {"slot_f1": rows(valid)},
                "time_total_s": 5.0}
        (trial_dir / "result.json").write_text(json.dumps(last) + "\n")
        (trial_dir / "params.json").write_text(json.dumps({"model": model}))
        rf.write_trial(str(trial_dir), rf.TrialRecord(TrialConfig(model=model, steps=20, lr=2e-3),
                                                      rf.TrialOutcome("ok")))
        checkpoint = run_dir / "checkpoints" / i / f"{rf.STEP_CHECKPOINT}{step:06d}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "adapter_model.safetensors").write_bytes(b"")
        (checkpoint / rf.CHECKPOINT_MARK).write_text(json.dumps({"step": step, "score": valid}))


def test_pruning_keeps_the_test_front_that_the_report_reads(tmp_path, monkeypatch, capsys):
    from ftray import Sweep, SyntheticTask, WandB
    from ftray.driver import scoring
    from ftray.api import finish
    from ftray.cli import main
    from ftray.results.report import CSV_COLUMNS, build_report, frontier_csv, load_run

    monkeypatch.setenv("WANDB_MODE", "disabled")
    sweep = Sweep(name="front", task=SyntheticTask(n_train=50, n_valid=10, n_test=ROWS), models=list(PARAMS),
                  objective="slot_f1", test_samples=ROWS, wandb=WandB(mode="disabled"))
    run_dir = tmp_path / "front"
    make_run(run_dir, sweep)
    before = load_run(str(run_dir))
    assert trial_front(before.trials, "max") == ["a", "c"]  # the validation front, what pruning kept before
    assert before.frontier == ["a", "c"]  # no test scores yet: the front is validation's

    def score_held_out(run, sweep, **_):
        """What the real one writes (each finished trial's adapter on the test rows), without a model:
        pruning must run after it."""
        for t in run.trials:
            test = TRIALS[t.id][2]
            rf.write_test_scores(t.trial_dir, rf.TestScores({"slot_f1": test}, {"slot_f1": rows(test)}, ROWS, ROWS,
                                                            t.checkpoint))
        return len(run.trials)

    monkeypatch.setattr(scoring, "score_held_out", score_held_out)
    result = finish(str(run_dir), sweep, quiet=True)

    test_front = ["b", "d"]
    assert result.frontier == test_front and result.report["analysis"]["source"] == "test"
    assert result.report["analysis"]["frontier_params"] == test_front
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == test_front  # a and c, the validation front, lost theirs; the verdicts' front did not
    after = {t.id: t for t in load_run(str(run_dir)).trials}
    assert [i for i, t in after.items() if t.checkpoint] == test_front

    with open(run_dir / "frontier.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == CSV_COLUMNS and set(SETTINGS) <= set(CSV_COLUMNS)
    by_id = {r["id"]: r for r in table}
    assert {i for i, r in by_id.items() if r["on_front"] == "1"} == set(test_front)
    for i, (model, valid, test) in TRIALS.items():
        r = by_id[i]
        assert (r["model"], float(r["objective"]), float(r["test_objective"]), int(r["test_rows"])) == \
            (model, valid, test, ROWS)
        # The interval is the report's own over the test rows, around the test score.
        iv = result.report["analysis"]["intervals"]["trials"][i]
        assert (float(r["test_lo"]), float(r["test_hi"])) == pytest.approx((iv["lo"], iv["hi"]))
        assert float(r["test_lo"]) < test < float(r["test_hi"])
        # Every TrialConfig field, from the config: "steps" is the budget, not the step trial a reached.
        assert (int(r["steps"]), float(r["lr"]), r["data_filter"], r["seed"]) == (20, 2e-3, "", "0")
    assert "on the frontier of slot_f1 vs parameters, on test scores" in result.text
    assert json.loads((run_dir / "report.json").read_text())["frontier"] == test_front

    # `ftray compare` ranks runs on the same front and scores.
    assert main(["compare", str(run_dir), "--json", "--out", str(tmp_path / "cmp.png")]) == 0
    (row,) = json.loads(capsys.readouterr().out)["runs"]
    assert (row["frontier"], row["source"]) == (test_front, "test")

    # Without held-out scores for every trial the front stays on validation rows, for pruning and report
    # alike; the test scores that exist keep their intervals in frontier.csv.
    (run_dir / "b" / rf.TEST_FILE).unlink()
    run = load_run(str(run_dir))
    assert run.frontier == ["a", "c"]
    report = build_report(run)
    assert report["analysis"]["source"] == "validation"
    by_id = {r["id"]: r for r in csv.DictReader(io.StringIO(frontier_csv(run, report)))}
    assert (by_id["b"]["test_objective"], by_id["b"]["test_lo"]) == ("", "")
    assert {i for i, r in by_id.items() if r["on_front"] == "1"} == {"a", "c"}
    for i in ("a", "c", "d"):
        assert float(by_id[i]["test_lo"]) < TRIALS[i][2] < float(by_id[i]["test_hi"])
