"""Several trials on one GPU (`gpus_per_worker=0.25`): the fraction checked, what each trial asks Ray
for, how many run at once, the memory estimate and the check that a trial fits its share of a GPU; and,
on Ray's logical GPUs (no CUDA here), four one-worker trials running at once on one GPU."""

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import output, start
from ftray import FtrayInputError, ModelSpec, Scaling, Sweep, SyntheticTask
from ftray.driver.resources import GIB, MemoryEstimate, check_gpu_fit, estimate_memory, plan_resources, trial_request

REPO = Path(__file__).resolve().parents[1]


def sweep(models=("tiny-xs",), **kw):
    kw = {"workers": 1, "num_trials": 8, **kw}
    return Sweep(name="g", task=SyntheticTask(n_train=50, n_valid=10, n_test=10), models=list(models), **kw)


@pytest.mark.parametrize("value", [1.5, -0.25, float("nan"), True, "0.5"])
def test_a_gpu_fraction_is_in_0_1_or_whole_and_the_error_names_the_field(value):
    with pytest.raises(FtrayInputError, match=r"^gpus_per_worker must be 0 \(no GPU\), a fraction in \(0, 1\]"):
        Scaling(gpus_per_worker=value)
    with pytest.raises(FtrayInputError, match=r"^model 'tiny-xs': gpus_per_worker must be"):
        ModelSpec("tiny-xs", gpus_per_worker=value)
    for ok in (0, 0.25, 1 / 3, 1, 2.0, 4):
        assert Scaling(gpus_per_worker=ok).gpus_per_worker == ok


def test_a_fraction_is_for_one_worker_trials_and_gpu_memory_gb_is_checked():
    with pytest.raises(FtrayInputError, match="model 'tiny-s': gpus_per_worker=0.5 with 2 workers"):
        sweep(["tiny-xs", ModelSpec("tiny-s", workers=2)], gpus_per_worker=0.5)
    sweep([ModelSpec("tiny-s", workers=2, gpus_per_worker=1)], gpus_per_worker=0.5)  # whole GPUs: fine
    with pytest.raises(FtrayInputError, match="gpu_memory_gb must be a number > 0"):
        sweep(gpu_memory_gb=0)


def test_each_trial_asks_ray_for_its_fraction_and_that_many_run_on_each_gpu():
    s = sweep(gpus_per_worker=0.25, cpus_per_worker=0.25)
    assert trial_request(s, "tiny-xs", 0.25) == {"CPU": 0.25, "GPU": 0.25}
    assert plan_resources(s, {"CPU": 2.0, "GPU": 1.0}).max_concurrent_trials == 4
    assert plan_resources(s, {"CPU": 16.0, "GPU": 2.0}).max_concurrent_trials == 8
    # A fraction is never split across GPUs: 0.4 puts two trials on each GPU, six on three (not 7).
    assert plan_resources(sweep(gpus_per_worker=0.4, num_trials=20), {"CPU": 32.0, "GPU": 3.0}).max_concurrent_trials == 6
    # Trials in their own Tune processes are held back by Tune until their resources are free: the
    # quarter-GPU rung runs four at once beside a whole-GPU rung.
    mixed = sweep(["tiny-xs", ModelSpec("tiny-m", gpus_per_worker=1)], gpus_per_worker=0.25)
    assert plan_resources(mixed, {"CPU": 8.0, "GPU": 1.0}).max_concurrent_trials == 4
    # A Train run reserves only its driver through Tune: then the largest trial sets the pace, as before.
    on_train = sweep(["tiny-xs", ModelSpec("tiny-m", gpus_per_worker=1)], gpus_per_worker=0.25, one_worker_in_trial=False)
    assert plan_resources(on_train, {"CPU": 8.0, "GPU": 1.0}).max_concurrent_trials == 1


def test_the_estimate_adds_up_its_terms():
    shape = dict(params=10**9, trainable=10**7, hidden=1000, layers=20, vocab=100_000)
    e = estimate_memory(**shape, rows=8, length=256, checkpointing=False)
    tokens = 8 * 256
    assert e.weights == 2e9 and e.adapters == 16e7  # bf16 base; fp32 adapters, gradients and AdamW's moments
    assert e.logits == tokens * 100_000 * 12 and e.activations == tokens * 1000 * 20 * 90
    assert e.total == pytest.approx(e.weights + e.adapters + e.activations + e.logits + 0.5 * GIB)
    twice = estimate_memory(**shape, rows=16, length=256, checkpointing=False)
    assert twice.activations == 2 * e.activations and twice.logits == 2 * e.logits and twice.weights == e.weights
    # Checkpointing keeps each layer's bf16 input and one layer's activations at a time.
    ck = estimate_memory(**shape, rows=8, length=256, checkpointing=True)
    assert ck.activations == tokens * 1000 * (2 * 20 + 90) < e.activations / 10


def test_the_estimate_stays_just_above_every_peak_measured_on_a_gpu():
    """The constants were fitted to bench/gpu_memory.py's peaks: the estimate must not fall below one (a
    trial that passes the check would then run out of memory), nor be far above (it would refuse sweeps
    that fit)."""
    from ftray.driver.resources import CUDA_CONTEXT_BYTES

    shapes = {"0.5b": (896, 24), "1.5b": (1536, 28)}
    measured = json.loads(next((REPO / "bench" / "results").glob("gpu-memory-*.json")).read_text())["rows"]
    for r in measured:
        hidden, layers = shapes[r["size"]]
        e = estimate_memory(params=r["params"], trainable=r["trainable"], hidden=hidden, layers=layers, vocab=151936,
                            rows=r["rows"], length=r["length"], checkpointing=r["checkpointing"])
        assert 1.0 < (e.total - CUDA_CONTEXT_BYTES) / (r["peak_gib"] * GIB) < 1.1, r


def test_the_fit_check_prints_the_plan_refuses_what_does_not_fit_and_says_when_it_cannot_check(monkeypatch):
    s = sweep(["tiny-xs", ModelSpec("tiny-m", gpus_per_worker=1)], gpus_per_worker=0.25, gpu_memory_gb=80)
    est = {"tiny-xs": MemoryEstimate(18 * GIB, 0, 0, 0, rows=16, length=256),
           "tiny-m": MemoryEstimate(60 * GIB, 0, 0, 0, rows=16, length=256)}
    assert check_gpu_fit(s, est) == ["tiny-xs: 4 trials per GPU, est. 18.5 GiB each of 80 GiB (gpu_memory_gb)",
                                     "tiny-m: 1 trial per GPU, est. 60.5 GiB each of 80 GiB (gpu_memory_gb)"]
    # 18.5 GiB is more than a quarter of 40 GiB: two such trials fit one GPU.
    with pytest.raises(FtrayInputError) as e:
        check_gpu_fit(s.__class__(**{**_args(s), "gpu_memory_gb": 40}), est)
    assert str(e.value).startswith("model 'tiny-xs': gpus_per_worker=0.25 puts 4 trials on each 40 GiB GPU "
                                   "(gpu_memory_gb), 10.0 GiB each, but a trial needs about 18.5 GiB (weights 18.0 + ")
    assert "give this rung gpus_per_worker=0.5 (2 per GPU), or lower batch_size" in str(e.value)
    # No GPU here and none named: the check is not made, and the plan says so.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_gpu_fit(s.__class__(**{**_args(s), "gpu_memory_gb": None}), est) == [
        "GPU memory: not checked (this machine has no GPU to measure and Scaling.gpu_memory_gb is not set)"]
    assert check_gpu_fit(sweep(), {}) == []  # no GPU rung, nothing to say


def _args(s):
    from dataclasses import asdict

    return dict(name=s.name, task=s.task, models=list(s.models), space=s.space, **asdict(s.scaling))


def test_prepare_estimates_each_gpu_rung_at_its_largest_batch():
    from ray import tune

    from ftray.driver.preflight import prepare

    s = sweep(["tiny-xs", ModelSpec("tiny-m", gpus_per_worker=0)], gpus_per_worker=0.25,
              space={"batch_size": tune.choice([4, 32]), "max_length": 64})
    est = prepare(s).memory
    assert set(est) == {"tiny-xs"}  # tiny-m trains on CPUs
    assert (est["tiny-xs"].rows, est["tiny-xs"].length) == (32, 64)



def test_the_estimate_counts_full_logits_where_the_head_is_lora_adapted():
    # The fused loss computes the logits from a plain head's weight; a LoRA-adapted head keeps the
    # model's own loss and its full [tokens x vocabulary] logits (FusedLossLM.wrap).
    from ftray.driver.preflight import prepare

    def logits_bytes(targets):
        rung = ModelSpec("tiny-xs", lora_targets=targets, train_embeddings=False)
        est = prepare(sweep([rung], gpus_per_worker=0.25, fused_loss="chunked", batch_size=512,
                             max_length=512)).memory["tiny-xs"]
        return est.logits

    plain, adapted = logits_bytes(["q_proj"]), logits_bytes(["q_proj", "lm_head"])
    assert adapted > plain > 0


# ---- four trials on one logical GPU ----------------------------------------------------------------------
FOUR_ON_ONE_GPU = """
import json, os, sys, time
from dataclasses import dataclass

import ray
from ftray import Sweep, SyntheticTask, WandB
from ftray.results import runfolder as rf
from ftray.driver.tuner import Options, run


@dataclass(frozen=True)
class Rendezvous(SyntheticTask):
    \"\"\"SyntheticTask whose trials, as they load their training rows, record what Ray gave them and wait
    until `parties` trials are there: the sweep finishes only if that many ran at once.\"\"\"

    folder: str = ""
    parties: int = 4

    def examples(self, split):
        in_trial = ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
        given = ray.get_runtime_context().get_assigned_resources() if in_trial else {}
        mine = f"{self.folder}/{os.getpid()}"
        if split == "train" and given.get("GPU") and not os.path.exists(mine + ".json"):
            arrived = time.time()
            open(mine + ".arrived", "w").close()
            while len([n for n in os.listdir(self.folder) if n.endswith(".arrived")]) < self.parties:
                if time.time() - arrived > 120:
                    raise RuntimeError("the other trials never came: they did not run at once")
                time.sleep(0.1)
            with open(mine + ".json", "w") as f:
                json.dump({"resources": given, "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                           "arrived": arrived, "left": time.time()}, f)
        return super().examples(split)


if __name__ == "__main__":
    storage, folder = sys.argv[1], sys.argv[2]
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR")  # a logical GPU
    sweep = Sweep(name="share", task=Rendezvous(n_train=60, n_valid=8, n_test=8, folder=folder),
                  models=["tiny-xs"], num_trials=4, workers=1, gpus_per_worker=0.25, cpus_per_worker=0.25,
                  gpu_memory_gb=8, steps=2, eval_every=2, eval_samples=4, max_new_tokens=4, batch_size=4,
                  max_length=48, eval_base=False, test_samples=0, wandb=WandB(mode="disabled"))
    # The sweep only: its report and plots are tested elsewhere.
    run_dir = run(sweep, Options(storage=storage))
    print("OUTCOMES", json.dumps(sorted(t.record.outcome.kind for t in rf.tune_trials(run_dir))))
"""


@pytest.mark.e2e
def test_four_quarter_gpu_trials_run_at_once_on_one_logical_gpu(tmp_path):
    script, folder = tmp_path / "four.py", tmp_path / "arrivals"
    script.write_text(textwrap.dedent(FOUR_ON_ONE_GPU))
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES"))}
    proc = start([sys.executable, str(script), str(tmp_path / "runs"), str(folder)],
                 env=dict(env, PYTHONPATH=str(REPO)))
    out = output(proc, timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert "tiny-xs: 4 trials per GPU, est. 0.5 GiB each of 8 GiB (gpu_memory_gb)" in out
    assert "4 trials, 4 at a time; each trial 1 worker in its Tune trial x 0.25 CPU x 0.25 GPU; cluster 2 CPU, 1 GPU" in out
    assert 'OUTCOMES ["ok", "ok", "ok", "ok"]' in out
    trials = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    assert len(trials) == 4
    for t in trials:
        assert t["resources"] == {"CPU": 0.25, "GPU": 0.25} and t["gpu_ids"] == ["0"], t
    # Every trial arrived before any left: all four ran at once, on the one GPU.
    assert max(t["arrived"] for t in trials) < min(t["left"] for t in trials)
