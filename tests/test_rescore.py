"""Held-out scoring as Ray tasks (ftray/rescore.py), on a small local Ray in this process: the same
scores as in this process, trials scored side by side and written as each completes, a missing
checkpoint named in one line."""

import pytest
import torch

from ftray import runfolder as rf
from ftray.config import TrialConfig
from ftray.context import local_checkpoint
from ftray.errors import FtrayInputError
from ftray.evaluate import score
from ftray.models import LoraSettings, ModelSpec, build_tokenizer, tokenizer_to_json
from ftray.recipe import TrialJob, run_local
from ftray.rescore import load_adapter, score_checkpoint, score_held_out
from ftray.sweep import Sweep
from ftray.tasks import SyntheticTask

TINY = ModelSpec("tiny-xs")


@pytest.fixture(scope="module")
def task():
    return SyntheticTask(n_train=200, n_valid=8, n_test=12, seed=0)


@pytest.fixture(scope="module")
def checkpoint(task, tmp_path_factory):
    """A tiny-xs adapter trained for 20 steps (about 5 s): its checkpoint folder."""
    tokenizer_json = tokenizer_to_json(build_tokenizer(t for e in task.examples("train") for t in (e.prompt, e.completion)))
    config = TrialConfig(model=TINY.id, lr=5e-3, batch_size=8, max_length=64, eval_samples=8, max_new_tokens=16,
                         eval_base=False, steps=20, eval_every=20)
    folder = str(tmp_path_factory.mktemp("ckpt"))
    run_local(TrialJob(config=config, task=task, model=TINY, lora=LoraSettings(8, 16), tokenizer_json=tokenizer_json),
              folder)
    return local_checkpoint(folder, 20)


@pytest.fixture(scope="module")
def local_ray():
    """Two CPUs, as on the project's machines: two scoring tasks at once."""
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    """A scoring task holding 1 CPU runs torch on one thread; so does this process, to compare."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_generation_in_left_padded_batches_equals_one_row_at_a_time(task, checkpoint, one_thread):
    model, tokenizer, config = load_adapter(checkpoint, TINY)
    rows = task.examples("test")
    kwargs = dict(model=model, tokenizer=tokenizer, task=task, examples=rows, max_length=config.max_length,
                  max_new_tokens=config.max_new_tokens, prompt_format=config.prompt_format)
    batched, alone = score(batch_size=8, **kwargs), score(batch_size=1, **kwargs)
    assert batched.predictions == alone.predictions and batched.rows == alone.rows
    assert any(batched.predictions)  # the model says something, so the comparison means something


def _trial(tmp_path, trial_id, checkpoint):
    trial_dir = tmp_path / trial_id
    trial_dir.mkdir()
    return {"id": trial_id, "model": TINY.id, "objective": 0.1, "checkpoint": checkpoint, "trial_dir": str(trial_dir)}


def test_held_out_scores_are_written_per_trial_as_this_process_scores_and_a_missing_checkpoint_is_named(
        task, checkpoint, local_ray, one_thread, tmp_path, capsys):
    sweep = Sweep(name="s", task=task, models=[TINY.id], test_samples=12, objective="slot_f1", cpus_per_worker=1.0)
    run = {"trials": [_trial(tmp_path, "a", checkpoint), _trial(tmp_path, "b", checkpoint)]}
    assert score_held_out(run, sweep) == 2  # two tasks of 1 CPU each, side by side on the 2 CPUs
    out = capsys.readouterr().out
    assert "ftray: scoring 2 trials on 12 held-out test rows (of 12) as Ray tasks: 1 CPU each" in out
    # The Ray tasks' scores are this process's, row by row and to the last bit (eval_loss too): the
    # same adapter, rows, batches, precision and thread count.
    here = score_checkpoint(checkpoint, task, TINY, task.examples("test"))
    for t in run["trials"]:
        saved = rf.read_test_scores(t["trial_dir"])
        assert (saved.n, saved.of, saved.checkpoint) == (12, 12, checkpoint)
        assert saved.metrics == here.metrics
        assert saved.rows == {k: [list(r) for r in v] for k, v in here.rows.items()}
        assert f"ftray: scored trial {t['id']} (tiny-xs, 12 rows) in " in out and " s on cpu: slot_f1 " in out
    assert score_held_out(run, sweep) == 0  # already scored on this checkpoint and these rows

    gone = str(tmp_path / "gone" / "checkpoint_000001")
    run = {"trials": [_trial(tmp_path, "c", gone), _trial(tmp_path, "d", checkpoint)]}
    with pytest.raises(FtrayInputError, match=r"^trial c: its checkpoint .*gone.* is gone"):
        score_held_out(run, sweep, log=None)
    assert rf.read_test_scores(run["trials"][0]["trial_dir"]) is None
    assert rf.read_test_scores(run["trials"][1]["trial_dir"]).n == 12  # what could be scored, was, and is kept
