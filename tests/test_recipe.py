"""The training recipe in one plain process (no Ray): it learns, it resumes exactly, its checkpoints stand alone."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from ftray.spec.config import TrialConfig
from ftray.train.context import local_checkpoint
from ftray.train.evaluate import evaluate
from ftray.spec.ladder import LoraSettings, ModelSpec
from ftray.train.models import build_model, build_tokenizer, tokenizer_to_json
from ftray.errors import DidNotFitError
from ftray.train.recipe import TRAINER_STATE, TrialJob, run_local
from ftray.tasks import SyntheticTask

TINY = ModelSpec("tiny-xs")


@pytest.fixture(scope="module")
def task():
    return SyntheticTask(n_train=200, n_valid=8, n_test=8, seed=0)


@pytest.fixture(scope="module")
def tokenizer_json(task):
    return tokenizer_to_json(build_tokenizer(t for e in task.examples("train") for t in (e.prompt, e.completion)))


def job(task, tokenizer_json, **settings) -> TrialJob:
    config = TrialConfig(**{"model": TINY.id, "lr": 5e-3, "batch_size": 8, "max_length": 64, "eval_samples": 8,
                            "max_new_tokens": 16, "eval_base": False, **settings})
    return TrialJob(config=config, task=task, model=TINY, lora=LoraSettings(8, 16), tokenizer_json=tokenizer_json)


def test_the_loop_lowers_the_training_loss(task, tokenizer_json):
    reports = run_local(job(task, tokenizer_json, steps=30, eval_every=10))
    assert [r["step"] for r in reports] == [10, 20, 30]
    assert reports[-1]["train_loss"] < reports[0]["train_loss"] - 0.5
    assert reports[-1]["eval_loss"] < reports[0]["eval_loss"]
    last = reports[-1]
    for key in ("total_steps", "lr", "tokens", "train_tokens_per_s", "train_s", "step_s", "setup_s", "worker_start_s",
                "params", "trainable_params", "train_examples", "restarts", "world_size", "diverged", "eval_s",
                *task.metric_names):
        assert key in last, key
    assert last["tokens"] > reports[0]["tokens"] > 0 and last["diverged"] == 0 and last["world_size"] == 1
    # Wall seconds since the launch hold the training seconds, and between two reports, those between them.
    assert reports[0]["wall_s"] >= reports[0]["train_s"] > 0
    assert last["wall_s"] - reports[0]["wall_s"] >= last["train_s"] - reports[0]["train_s"] > 0


def test_a_resumed_run_continues_at_the_batch_it_stopped_at(task, tokenizer_json, tmp_path):
    # 40 rows in batches of 4, 2 micro-batches a step: 5 steps an epoch. The checkpoint of step 4 sits
    # at position 8 of epoch 0, and the resumed steps 5..12 cross two epoch boundaries.
    trial = job(task, tokenizer_json, data_fraction=0.2, batch_size=4, grad_accum=2, steps=12, eval_every=4,
                eval_base=True)
    full_trace: list = []
    full = run_local(trial, str(tmp_path / "full"), trace=full_trace)
    resumed_trace: list = []
    resumed = run_local(trial, str(tmp_path / "resumed"), resume_from=local_checkpoint(str(tmp_path / "full"), 4),
                        trace=resumed_trace)

    expected = [t for t in full_trace if t[0] > 4]
    assert [t[:4] for t in resumed_trace] == [t[:4] for t in expected]  # (step, epoch, position, rows)
    assert resumed_trace[0][1:3] == (0, 8)  # not the start of the epoch
    assert {t[1] for t in resumed_trace} == {0, 1, 2}
    torch.testing.assert_close(torch.stack([t[4] for t in resumed_trace]), torch.stack([t[4] for t in expected]))

    assert [r["step"] for r in resumed] == [8, 12]
    for a, b in zip(full[1:], resumed):
        assert a["tokens"] == b["tokens"] and a["lr"] == b["lr"]
        for key in ("train_loss", "eval_loss", "base_eval_loss", "slot_f1"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key

    from safetensors.torch import load_file

    end_full = load_file(os.path.join(local_checkpoint(str(tmp_path / "full"), 12), "adapter_model.safetensors"))
    end_resumed = load_file(os.path.join(local_checkpoint(str(tmp_path / "resumed"), 12), "adapter_model.safetensors"))
    assert end_full.keys() == end_resumed.keys()
    for name in end_full:
        torch.testing.assert_close(end_full[name], end_resumed[name])

    # Restored from the final checkpoint, a trial reports again instead of training again.
    again_trace: list = []
    again = run_local(trial, resume_from=local_checkpoint(str(tmp_path / "full"), 12), trace=again_trace)
    assert again_trace == [] and [r["step"] for r in again] == [12]
    assert again[0]["eval_loss"] == pytest.approx(full[-1]["eval_loss"], rel=1e-5)
    # With the training figures of that step's report: it trained no step to measure them on again.
    for key in ("train_loss", "train_tokens_per_s", "step_s", "tokens"):
        assert again[0][key] == full[-1][key], key
    # Its seconds go on from the checkpoint's (Tune's own count starts again at 0 in a resumed trial).
    assert again[0]["wall_s"] > full[-1]["wall_s"]


def test_a_checkpoint_reproduces_the_evaluation_outside_ftray(task, tokenizer_json, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    trial = job(task, tokenizer_json, steps=6, eval_every=6)
    reported = run_local(trial, str(tmp_path))[-1]
    folder = local_checkpoint(str(tmp_path), 6)
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", TRAINER_STATE):
        assert os.path.isfile(os.path.join(folder, name)), name

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = PeftModel.from_pretrained(build_model(TINY, tokenizer, seed=trial.config.seed), folder)
    cfg = trial.config
    metrics = evaluate(model=model, tokenizer=tokenizer, task=task, examples=task.examples("valid")[: cfg.eval_samples],
                       batch_size=cfg.batch_size, max_length=cfg.max_length, max_new_tokens=cfg.max_new_tokens)
    assert metrics.keys() == {"eval_loss", *task.metric_names}
    for key, value in metrics.items():
        assert value == pytest.approx(reported[key], rel=1e-5, abs=1e-6), key


def test_the_trainer_state_is_tensors_and_plain_numbers(task, tokenizer_json, tmp_path):
    run_local(job(task, tokenizer_json, steps=2, eval_every=2, eval_base=True), str(tmp_path))
    state = torch.load(os.path.join(local_checkpoint(str(tmp_path), 2), TRAINER_STATE), weights_only=True)
    assert state["trainer"]["step"] == 2 and state["trainer"]["tokens"] > 0
    assert set(state["trainer"]["base_metrics"]) == {f"base_{k}" for k in ("eval_loss", *task.metric_names)}
    assert state["optimizer"]["state"]  # AdamW's moments


def test_a_nan_loss_stops_the_trial_at_that_step(task, tokenizer_json, tmp_path):
    trial = job(task, tokenizer_json, steps=10, eval_every=5)
    trial = dataclasses.replace(trial, faults={"nan_at_step": 3})
    reports = run_local(trial, str(tmp_path))
    assert [(r["step"], r["diverged"]) for r in reports] == [(3, 1)]
    assert "eval_loss" not in reports[0] and not os.listdir(tmp_path)  # no evaluation, no checkpoint


def test_out_of_memory_says_what_to_lower(task, tokenizer_json):
    trial = dataclasses.replace(job(task, tokenizer_json, steps=10, eval_every=5), faults={"oom_at_step": 3})
    with pytest.raises(DidNotFitError, match="lower batch_size"):
        run_local(trial)


def test_a_trial_in_its_own_process_keeps_the_best_and_latest_checkpoints_and_resumes_from_the_latest(
        task, tokenizer_json, tmp_path):
    """TuneTrialContext (a one-worker trial in its Tune trial's process) with Tune's report replaced by a list."""
    from ftray.results import runfolder as rf
    from ftray.train.context import TuneTrialContext
    from ftray.train.recipe import run_recipe

    run_dir, reports = str(tmp_path / "run"), []

    def context():
        return TuneTrialContext(run_dir, "t1", keep=1, objective="eval_loss", mode="min", device=torch.device("cpu"),
                                report=reports.append)

    trial = job(task, tokenizer_json, steps=6, eval_every=2)
    run_recipe(trial, context())
    assert [r["step"] for r in reports] == [2, 4, 6]
    kept = rf.stored_checkpoints(run_dir, "t1")
    best = min(reports, key=lambda r: r["eval_loss"])["step"]
    assert [c.step for c in kept] == sorted({best, 6})  # the best by eval_loss, and the latest
    for r in reports:  # each report names its checkpoint, as Train's do
        assert os.path.basename(r["checkpoint_path"]) == f"checkpoint_step_{r['step']:06d}"
    assert os.path.exists(os.path.join(reports[-1]["checkpoint_path"], TRAINER_STATE))
    # Resumed at its final step (a lost driver): it reports and saves that checkpoint again, and keeps it.
    reports.clear()
    run_recipe(trial, context())
    assert [r["step"] for r in reports] == [6] and 6 in [c.step for c in rf.stored_checkpoints(run_dir, "t1")]

    # A copy cut short (no mark) is not taken for the newest; a longer trial goes on from step 6.
    os.makedirs(os.path.join(rf.trial_checkpoints(run_dir, "t1"), "checkpoint_step_000099"))
    reports.clear()
    run_recipe(dataclasses.replace(trial, config=dataclasses.replace(trial.config, steps=8)), context())
    assert [r["step"] for r in reports] == [8]
    assert not os.path.exists(os.path.join(rf.trial_checkpoints(run_dir, "t1"), "checkpoint_step_000099"))
    assert rf.trial_checkpoint(run_dir, "t1", None).endswith("checkpoint_step_000008")


def test_a_resumed_trial_reports_again_a_checkpoint_tune_never_recorded(task, tokenizer_json, tmp_path):
    # Ctrl-C: Tune stops taking reports while the trial trains on and saves a checkpoint; the resume goes
    # on from that checkpoint and first sends its report again, so the trial's history has every step.
    from ftray.results import runfolder as rf
    from ftray.train.context import TuneTrialContext
    from ftray.train.recipe import run_recipe

    run_dir, reports = str(tmp_path / "run"), []

    def context(recorded):
        return TuneTrialContext(run_dir, "t1", keep=3, objective="eval_loss", mode="min", device=torch.device("cpu"),
                                report=reports.append, recorded=recorded)

    trial = job(task, tokenizer_json, steps=6, eval_every=2)
    run_recipe(trial, context(recorded=set()))
    first = list(reports)
    shutil.rmtree(rf.stored_checkpoint_path(run_dir, "t1", 6))  # interrupted before step 6
    reports.clear()
    run_recipe(trial, context(recorded={2}))  # step 4's report never reached Tune
    assert [r["step"] for r in reports] == [4, 6] and reports[0] == json.loads(json.dumps(first[1]))  # as stored
    assert reports[1]["train_loss"] == pytest.approx(first[2]["train_loss"], rel=1e-6)
    shutil.rmtree(rf.stored_checkpoint_path(run_dir, "t1", 6))  # interrupted before step 6 again
    reports.clear()
    run_recipe(trial, context(recorded={2, 4}))  # step 4's report recorded now: not sent again
    assert [r["step"] for r in reports] == [6]


def test_a_resumed_train_trial_reports_again_trains_latest_checkpoint(tmp_path, monkeypatch):
    # The same for a trial Ray Train runs: its driver reads Train's record of its latest checkpoint (the
    # snapshot beside the checkpoints) and reports it first, where Tune never recorded that step.
    from types import SimpleNamespace

    import ray.tune
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (_CheckpointManagerState,
                                                                               _TrainingResultState)

    from ftray.driver import trial as driver_trial
    from ftray.results import runfolder as rf

    run_dir, trial_dir, sent, fits = tmp_path / "run", tmp_path / "run" / "trial", [], []
    trial_dir.mkdir(parents=True)
    storage = Path(rf.trial_checkpoints(str(run_dir), "t1"))
    storage.mkdir(parents=True)

    def snapshot(step):
        latest = _TrainingResultState(checkpoint_dir_name="checkpoint_b", metrics={"step": step, "total_steps": 30})
        storage.joinpath("checkpoint_manager_snapshot.json").write_text(_CheckpointManagerState(
            checkpoint_results=[latest], checkpoint_report_indices=[3], latest_checkpoint_result=latest,
            pending_training_results=[], pending_validation_specs=[], current_report_index=4,
            validated_checkpoint_dir_names=[], timed_out_validation_checkpoint_dir_names=[],
            failed_validation_checkpoint_dir_names=[]).json())

    monkeypatch.setattr(ray.tune, "report", sent.append)
    monkeypatch.setattr(driver_trial, "_trainer", lambda *a: SimpleNamespace(fit=lambda: fits.append(1)))
    setup = SimpleNamespace(sweep=SimpleNamespace(failure=SimpleNamespace(max_restarts=0)), env={},
                            run_dir=str(run_dir))
    (trial_dir / "result.json").write_text("".join(json.dumps({"step": s}) + "\n" for s in (10, 20)))
    for step, again in [(20, []), (30, []), (25, [25])]:  # recorded; the final step (the recipe's); not recorded
        snapshot(step)
        sent.clear()
        assert driver_trial._train_on_workers(None, setup, "t1", str(trial_dir))[0].kind == "ok"
        assert [r["step"] for r in sent] == again
    assert sent[0]["checkpoint_path"] == str(storage / "checkpoint_b") and len(fits) == 3


def test_retention_ranks_as_trains_does_and_leaves_trains_own_checkpoints(tmp_path):
    from ftray.results import runfolder as rf

    run_dir = str(tmp_path)
    local = tmp_path / "local"
    local.mkdir()
    (local / "adapter.bin").write_bytes(b"x")
    stored = [rf.store_checkpoint(run_dir, "t", str(local), step, score)
              for step, score in [(10, float("nan")), (20, 0.5), (30, 0.5), (40, 0.1), (50, None)]]
    # max: NaN and missing rank last; of the equal 0.5s the later wins; the latest (50) always stays.
    kept = rf.drop_checkpoints(stored, keep=1, mode="max")
    assert [c.step for c in kept] == [30, 50]
    assert [c.step for c in rf.stored_checkpoints(run_dir, "t")] == [30, 50]
    train_own = os.path.join(rf.trial_checkpoints(run_dir, "t"), "checkpoint_2026-11-20_10-00-00.000000")
    os.makedirs(train_own)  # a Train checkpoint of this trial (no mark): not ftray's to judge
    assert [c.step for c in rf.stored_checkpoints(run_dir, "t")] == [30, 50] and os.path.isdir(train_own)
    assert rf.drop_checkpoints(rf.stored_checkpoints(run_dir, "t"), keep=1, mode="min")[0].step == 30


def test_a_failure_in_the_trials_own_process_is_classified_by_its_type():
    from ftray.errors import DidNotFitError, DivergedError
    from ftray.driver.trial import classify_failure

    assert classify_failure(DivergedError("NaN at step 3")) == ("diverged", "NaN at step 3")
    assert classify_failure(DidNotFitError("lower batch_size"))[0] == "did-not-fit"
    assert classify_failure(ZeroDivisionError("user bug")) == ("error", "ZeroDivisionError: user bug")
