"""What a sweep prints per trial (ftray/driver/progress.py), on Tune's trial objects' fields; the lines in
a real sweep: tests/test_e2e.py."""

from types import SimpleNamespace

from ftray.driver.progress import TensorBoardNumbers, TrialLines, describe


def test_a_trials_settings_read_in_one_line_model_first():
    assert describe({"lora_rank": 16, "lr": 0.005304992753518952, "model": "tiny-m"}) == "tiny-m, lora_rank=16, lr=0.0053"


def test_a_line_as_each_trial_starts_and_ends(capsys):
    lines = TrialLines(trials=3, metric="slot_f1")
    done = SimpleNamespace(trial_id="a", status="TERMINATED")
    ok = SimpleNamespace(trial_id="b", status="RUNNING", config={"model": "tiny-s", "lr": 0.002},
                         last_result={"slot_f1": 0.31304, "step": 300, "total_steps": 300, "time_total_s": 54.2})
    unscored = SimpleNamespace(trial_id="c", status="RUNNING", last_result={"step": 3, "total_steps": 300})
    lines.on_trial_start(0, [done, ok], ok)
    lines.on_trial_complete(0, [done, ok, unscored], ok)
    lines.on_trial_error(0, [done, ok, unscored], unscored)
    assert capsys.readouterr().out.splitlines() == [
        "ftray: trial b started: tiny-s, lr=0.002",
        "ftray: trial b ended: slot_f1 0.313 at step 300/300, 54 s; 2 of 3 trials ended",
        "ftray: trial c failed (the report says why); 2 of 3 trials ended",  # b's status is Tune's to change
    ]


def test_tensorboard_gets_the_numbers_not_the_rows(monkeypatch):
    seen = []
    monkeypatch.setattr("ray.tune.logger.TBXLoggerCallback.log_trial_result",
                        lambda self, iteration, trial, result: seen.append(result))
    TensorBoardNumbers().log_trial_result(1, None, {"slot_f1": 0.3, "config": {"lr": 1e-3}, "eval_predictions": ["x"],
                                                     "eval_rows": {"slot_f1": [[1, 2]]}, "training_iteration": 1})
    assert seen == [{"slot_f1": 0.3, "training_iteration": 1}]
