"""A trial's result read back from a hand-made run folder (no Ray): typed fields, and the JSON that
`ftray report --json` prints."""

import json

from ftray.results import runfolder as rf
from ftray.results.trialresult import TrialResult, load_trials
from ftray.spec.config import TrialConfig


def make_run(run_dir) -> None:
    run_dir.mkdir()
    rf.write_record(str(run_dir), rf.RunRecord(
        sweep={}, objective={"metric": "slot_f1", "mode": "max"}, model_params={"tiny-xs": 100},
        workers={"tiny-xs": 2}, gpus_per_worker={"tiny-xs": 0.5}, metrics=["eval_loss", "slot_f1"]))
    state = {"trial_data": [[json.dumps({"trial_id": i, "status": s, "relative_logdir": i}), json.dumps({})]
                            for i, s in (("a", "TERMINATED"), ("b", "ERROR"))]}
    (run_dir / "experiment_state-2026-12-01_10-00-00.json").write_text(json.dumps(state))
    config = TrialConfig(model="tiny-xs", lora_rank=4, lr=2e-3, steps=20, data_fraction=0.5, seed=3)
    first = {"step": 5, "total_steps": 20, "train_loss": 3.0}
    last = {"step": 10, "total_steps": 20, "slot_f1": 0.5, "base_slot_f1": 0.1, "eval_loss": float("nan"),
            "eval_rows": {"slot_f1": [[1.0, 1.0], [0.0, 1.0]]}, "train_loss": 1.5, "tokens": 640,
            "trainable_params": 12, "time_total_s": 7.0, "step_s": 0.25, "timestamp": 1}
    for i, reports, outcome in (("a", [first, last], rf.TrialOutcome("ok", restarts=1)), ("b", [first], None)):
        (run_dir / i).mkdir()
        (run_dir / i / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reports))
        rf.write_trial(str(run_dir / i), rf.TrialRecord(config, outcome))
    checkpoint = run_dir / rf.CHECKPOINTS / "a" / f"{rf.STEP_CHECKPOINT}000010"
    checkpoint.mkdir(parents=True)
    (checkpoint / rf.CHECKPOINT_MARK).write_text(json.dumps({"step": 10, "score": 0.5}))
    rf.write_test_scores(str(run_dir / "a"), rf.TestScores({"slot_f1": 0.25}, {"slot_f1": [[0.0, 1.0], [1.0, 3.0]]},
                                                           2, 40, str(checkpoint)))


def test_a_trial_reads_back_typed_and_its_json_is_the_reports(tmp_path):
    run_dir = tmp_path / "run"
    make_run(run_dir)
    a, b = load_trials(str(run_dir))

    assert isinstance(a, TrialResult) and (a.id, a.status, a.outcome, a.reason) == ("a", "TERMINATED", "ok", None)
    assert (a.model, a.params, a.trainable_params) == ("tiny-xs", 100, 12)
    assert (a.lora_rank, a.lr, a.data_fraction, a.seed) == (4, 2e-3, 0.5, 3)  # from the config
    assert (a.objective, a.base_objective, a.scored) == (0.5, 0.1, True)
    assert a.metrics == {"eval_loss": None, "slot_f1": 0.5}  # a NaN is no score
    assert a.metric_rows("slot_f1") == [[1.0, 1.0], [0.0, 1.0]] and a.metric_rows("eval_loss") is None
    assert (a.steps, a.stopped_early, a.restarts) == (10, True, 1)  # 10 of its 20 steps: stopped early
    assert (a.train_loss, a.first_train_loss, a.tokens, a.step_s) == (1.5, 3.0, 640, 0.25)
    assert (a.wall_s, a.accelerators, a.accelerator_s) == (7.0, 1.0, 7.0)  # 2 workers of half a GPU
    assert a.checkpoint == str(run_dir / rf.CHECKPOINTS / "a" / f"{rf.STEP_CHECKPOINT}000010")
    assert a.test.n == 2 and a.test_score("slot_f1") == 0.25 and a.test_score("eval_loss") is None
    on_test = a.on_test("slot_f1")
    assert (on_test.objective, on_test.metric_rows("slot_f1")) == (0.25, [[0.0, 1.0], [1.0, 3.0]])

    # An errored trial without an outcome: no score, a reason that says where to look.
    assert (b.status, b.outcome, b.objective, b.rows, b.test, b.checkpoint, b.scored) == \
        ("ERROR", None, None, None, None, None, False)
    assert b.reason.startswith("error: no outcome recorded") and b.first_train_loss == 3.0

    assert a.to_json() == {
        "id": "a", "status": "TERMINATED", "reason": None, "model": "tiny-xs", "params": 100, "trainable_params": 12,
        "lora_rank": 4, "data_fraction": 0.5, "lr": 2e-3, "objective": 0.5, "base_objective": 0.1,
        "metrics": {"eval_loss": None, "slot_f1": 0.5}, "wall_s": 7.0, "accelerators": 1.0, "tokens": 640,
        "train_loss": 1.5, "first_train_loss": 3.0, "restarts": 1, "steps": 10, "stopped_early": True,
        "config": TrialConfig(model="tiny-xs", lora_rank=4, lr=2e-3, steps=20, data_fraction=0.5, seed=3).to_dict(),
        "checkpoint": a.checkpoint, "trial_dir": str(run_dir / "a"), "outcome": "ok",
        # The test scores without their per-row parts, which stay in the folder.
        "test": {"metrics": {"slot_f1": 0.25}, "n": 2, "of": 40}}
    assert list(a.to_json()) == ["id", "status", "reason", "model", "params", "trainable_params", "lora_rank",
                                 "data_fraction", "lr", "objective", "base_objective", "metrics", "wall_s",
                                 "accelerators", "tokens", "train_loss", "first_train_loss", "restarts", "steps",
                                 "stopped_early", "config", "checkpoint", "trial_dir", "outcome", "test"]
    json.dumps([a.to_json(), b.to_json()], allow_nan=False)
