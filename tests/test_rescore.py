"""Scoring adapters again (ftray/driver/scoring.py), without starting a Ray: batched generation, and what a
failed scoring task turns into. The Ray tasks themselves run at the end of the shared sweep
(tests/test_e2e.py: their scores equal this process's, row by row) and in `ftray eval`
(tests/test_report_e2e.py)."""

import pytest
import torch

from ftray.spec.config import TrialConfig
from ftray.train.context import local_checkpoint
from ftray.errors import FtrayInputError
from ftray.train.evaluate import score
from ftray.spec.ladder import LoraSettings, ModelSpec
from ftray.train.models import build_tokenizer, tokenizer_to_json
from ftray.train.recipe import TrialJob, run_local
from ftray.driver.scoring import ScoringJob, _failure, load_adapter, run_job
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


def test_a_missing_checkpoint_is_one_line_naming_the_trial_and_other_failures_name_trial_and_cause(task, tmp_path):
    from ray.exceptions import RayTaskError

    gone = ScoringJob("c", TINY, str(tmp_path / "gone" / "checkpoint_000001"), task, {"CPU": 1.0})
    with pytest.raises(FtrayInputError, match=r"^trial c: its checkpoint .*gone.* is gone") as missing:
        run_job(gone, task.examples("test"))  # checked before the task looks for its GPU: no Ray needed
    # As Ray hands them back to the driver: the task's own error wrapped in a RayTaskError.
    wrapped = RayTaskError("run_job", "Traceback (most recent call last): ...", missing.value)
    assert _failure(gone, wrapped) is missing.value  # the CLI prints it in one line and exits 2
    oom = RayTaskError("run_job", "Traceback ...", torch.OutOfMemoryError("CUDA out of memory.\nTried 2 GiB"))
    failed = _failure(gone, oom)
    assert str(failed) == "trial c (tiny-xs): scoring failed: OutOfMemoryError: Tried 2 GiB"
    assert failed.__cause__ is oom


def test_a_scoring_task_holds_one_worker_of_its_rung_and_a_gpu_rung_without_a_gpu_falls_back_to_cpu(task):
    from ftray.driver.scoring import scoring_resources
    from ftray.spec.sweep import Sweep

    sweep = Sweep(name="g", task=task, models=[ModelSpec("tiny-xs", workers=1, gpus_per_worker=0.25), "tiny-s"], workers=2)
    said: list[str] = []
    assert scoring_resources(sweep, "tiny-xs", {"CPU": 16, "GPU": 1}, said.append) == {"CPU": 1.0, "GPU": 0.25}
    assert scoring_resources(sweep, "tiny-s", {"CPU": 16, "GPU": 1}, said.append) == {"CPU": 1.0}
    assert not said
    assert scoring_resources(sweep, "tiny-xs", {"CPU": 2}, said.append) == {"CPU": 1.0}
    assert len(said) == 1 and "no GPU for 'tiny-xs'" in said[0] and "on CPU in fp32" in said[0]
