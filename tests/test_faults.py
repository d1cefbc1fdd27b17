"""Faults injected from outside, black box: a Train worker killed mid-trial, the driver SIGKILLed and
the sweep resumed, a loss that turns NaN, user code that raises, and bad input of every kind."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def ftray(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "ftray.cli", *args], capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=timeout)


def start(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "ftray.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env or os.environ.copy(), start_new_session=True)


def sweep_file(tmp: Path, body: str, name="s.py") -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(body))
    return path


def report(run_dir) -> dict:
    proc = ftray("report", str(run_dir), "--json", "--no-files")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_for(predicate, timeout, proc=None, what=""):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


BASE = """
from ray import tune
from ftray import Sweep, SyntheticTask, WandB
"""


def test_killed_train_worker_restarts_from_checkpoint(tmp_path):
    f = sweep_file(tmp_path, BASE + """
sweep = Sweep(name="kill", task=SyntheticTask(n_train=400, n_valid=16, n_test=16), models=["tiny-s"],
              num_trials=1, workers=2, steps=60, eval_every=10, eval_samples=8, max_new_tokens=8,
              batch_size=8, max_length=96, eval_base=False, wandb=WandB(mode="offline"))
""")
    proc = start("run", str(f), "--storage", str(tmp_path / "runs"))
    ckpts = tmp_path / "runs" / "kill" / "checkpoints"
    wait_for(lambda: len(list(ckpts.glob("*/checkpoint_*"))) >= 2, 300, proc, "two checkpoints")
    workers = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True).stdout.split()
    assert workers, "no Train worker process found"
    os.kill(int(workers[-1]), signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    [t] = report(tmp_path / "runs" / "kill")["trials"]
    assert t["status"] == "TERMINATED" and t["reason"] is None
    assert t["steps"] == 60  # the same number of steps as without the fault
    assert t["restarts"] >= 1
    history = [json.loads(line) for line in open(Path(t["trial_dir"]) / "result.json")]
    steps = [h["step"] for h in history]
    # Restarted from the latest checkpoint: a step is redone at most once per restart, and at most
    # one checkpoint interval (10 steps) of work is lost.
    assert steps[-1] == 60 and len(steps) - len(set(steps)) <= t["restarts"]


def test_driver_sigkill_then_resume(tmp_path):
    f = sweep_file(tmp_path, BASE + """
sweep = Sweep(name="resume", task=SyntheticTask(n_train=400, n_valid=16, n_test=16), models=["tiny-xs", "tiny-s"],
              space={"lora_rank": tune.choice([2, 4])}, num_trials=4, workers=2, steps=30, eval_every=10,
              eval_samples=8, max_new_tokens=8, batch_size=8, max_length=96, eval_base=False,
              wandb=WandB(mode="offline"))
""")
    run_dir = tmp_path / "runs" / "resume"
    proc = start("run", str(f), "--storage", str(tmp_path / "runs"))

    def is_done(text):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return any(r.get("step") == r.get("total_steps") for r in rows)

    def finished():
        return sum(1 for p in run_dir.glob("run_trial_*/result.json") if is_done(p.read_text()))

    wait_for(lambda: finished() >= 1, 400, proc, "one finished trial")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, without warning
    proc.wait()
    before = {p.parent.name: p.read_text() for p in run_dir.glob("run_trial_*/result.json")}
    done_before = [name for name, text in before.items() if is_done(text)]
    assert done_before

    changed = sweep_file(tmp_path, open(f).read().replace("steps=30", "steps=40"), name="changed.py")
    refused = ftray("run", str(changed), "--storage", str(tmp_path / "runs"))
    assert refused.returncode == 2 and "steps: 30 -> 40" in refused.stderr

    resumed = ftray("resume", str(run_dir), timeout=900)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    r = report(run_dir)
    assert len(r["trials"]) == 4 and all(t["status"] == "TERMINATED" for t in r["trials"])
    for name in done_before:  # finished trials were not trained again
        rows = [json.loads(line) for line in (run_dir / name / "result.json").read_text().splitlines() if line.strip()]
        if rows != [json.loads(line) for line in before[name].splitlines() if line.strip()]:
            # Training had ended but the driver died before Tune recorded it: the trial reports its
            # final checkpoint again, without a single training step.
            assert all(r["step"] == r["total_steps"] for r in rows) and "train_loss" not in rows[-1], rows
    # one W&B run per trial, resumed rather than duplicated: each id appears in one trial folder only
    ids = {}
    for d in run_dir.glob("run_trial_*/wandb/offline-run-*"):
        ids.setdefault(d.name.rsplit("-", 1)[-1], set()).add(d.parent.parent.name)
    assert len(ids) == 4 and all(len(v) == 1 for v in ids.values())


def test_nan_loss_and_user_bug_are_classified_and_the_sweep_goes_on(tmp_path):
    f = sweep_file(tmp_path, BASE + """
from ftray.tasks import SyntheticTask as _Synthetic

class BuggyTask(_Synthetic):
    # A user's scorer with a bug for one model's trials: raises when asked to score.
    def score(self, predictions, examples):
        import os
        if os.environ.get("FTRAY_TEST_BUGGY") == "1":
            raise ZeroDivisionError("user bug in score()")
        return super().score(predictions, examples)

sweep = Sweep(name="faults", task=BuggyTask(n_train=300, n_valid=8, n_test=8), models=["tiny-xs", "tiny-s"],
              space={"model": tune.choice(["tiny-xs", "tiny-s"])}, num_trials=3, workers=2, steps=20,
              eval_every=10, eval_samples=8, max_new_tokens=8, batch_size=8, max_length=96, eval_base=False,
              search="random", seed=3, wandb=WandB(mode="disabled"))
""")
    env = dict(os.environ, FTRAY_INJECT=json.dumps({"model": "tiny-xs", "nan_at_step": 5}))
    proc = ftray("run", str(f), "--storage", str(tmp_path / "runs"), env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    trials = report(tmp_path / "runs" / "faults")["trials"]
    assert {t["model"] for t in trials} == {"tiny-xs", "tiny-s"}, "seed 3 samples both models"
    for t in trials:
        if t["model"] == "tiny-xs":
            assert t["reason"].startswith("diverged") and t["steps"] == 5  # stopped at once
            assert t["objective"] is None
        else:
            assert t["status"] == "TERMINATED" and t["reason"] is None and t["objective"] is not None

    # The same sweep (two trials) with the scorer's bug switched on: errors with the traceback kept, not retried.
    env = dict(os.environ, FTRAY_TEST_BUGGY="1")
    buggy = sweep_file(tmp_path, f.read_text().replace("num_trials=3", "num_trials=2"), name="buggy.py")
    proc = ftray("run", str(buggy), "--storage", str(tmp_path / "runs"), "--name", "buggy", env=env)
    out = proc.stdout + proc.stderr
    trials = report(tmp_path / "runs" / "buggy")["trials"]
    assert len(trials) == 2 and all(t["status"] == "ERROR" for t in trials), out[-3000:]
    for t in trials:
        assert "ZeroDivisionError" in t["reason"] or "user bug" in t["reason"]
        assert (Path(t["trial_dir"]) / "error.txt").is_file()
        assert "user bug in score()" in (Path(t["trial_dir"]) / "error.txt").read_text()
        assert t["restarts"] == 0  # a bug is not retried in vain
    assert proc.returncode == 1  # every trial failed


@pytest.mark.parametrize("body, expected", [
    ("sweep = 1", "must be a ftray.Sweep"),
    ("x = (", "syntax error at line 4"),  # BASE is 3 lines
    ("from ftray import Sweep", "does not define a module-level `sweep"),
    ("sweep = Sweep(name='b', task=SyntheticTask(), models=['tiny-xs'], space={'lora_rank': tune.choice([0, 4])})",
     "space['lora_rank']"),
    ("sweep = Sweep(name='b', task=SyntheticTask(), models=['tiny-xs'], space={'data_fraction': tune.choice([0.5, 1.5])})",
     "space['data_fraction']"),
    ("sweep = Sweep(name='b', task=SyntheticTask(), models=['gpt-17'])", "unknown model 'gpt-17'"),
    ("sweep = Sweep(name='b', task=SyntheticTask(), models=['tiny-xs'], objective='bleu')", "objective 'bleu'"),
    ("from ftray import ASHA\nsweep = Sweep(name='b', task=SyntheticTask(), models=['tiny-xs'], steps=40, asha=ASHA(grace_steps=50))",
     "asha.grace_steps"),
    ("sweep = Sweep(name='b', task=SyntheticTask(), models=['tiny-xs'], workers=64)", "a trial of 64 workers"),
    ("sweep = Sweep(name='b', task=SyntheticTask(), models=['tiny-xs'], gpus_per_worker=1)", "GPUs"),
    ("from ftray import ModelSpec\nsweep = Sweep(name='b', task=SyntheticTask(), models=[ModelSpec('tiny-xs', lora_targets=['c_attn'])])",
     "match no layer of model 'tiny-xs'"),
])
def test_bad_sweeps_fail_before_ray_with_the_field_named(tmp_path, body, expected):
    f = sweep_file(tmp_path, BASE + body)
    proc = ftray("run", str(f), "--storage", str(tmp_path / "runs"), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs" / "b").exists()  # nothing was started


def test_missing_sweep_file_and_unwritable_storage(tmp_path):
    proc = ftray("run", str(tmp_path / "nope.py"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    f = sweep_file(tmp_path, BASE + "sweep = Sweep(name='b', task=SyntheticTask(), models=['tiny-xs'])")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = ftray("run", str(f), "--storage", str(blocker / "runs"))
    assert proc.returncode == 2 and "storage" in proc.stderr and "cannot be written" in proc.stderr


@pytest.mark.parametrize("files, expected", [
    ({"train.csv": "mr,text\nx,y\n"}, "no column 'ref'"),
    ({"train.csv": "mr,ref\n"}, "empty"),
    ({"train.csv": 'mr,ref\n"inform(name[A])","A."\n"inform(name[B]","B."\n'}, "train.csv: row 2"),
    ({}, "does not exist"),
])
def test_bad_data_files_name_the_file_and_row(tmp_path, files, expected):
    data = tmp_path / "viggo"
    data.mkdir()
    good = 'mr,ref\n"inform(name[A])","A."\n'
    for name in ("train.csv", "valid.csv", "test.csv"):
        if name in files:
            (data / name).write_text(files[name])
        elif files:
            (data / name).write_text(good)
    f = sweep_file(tmp_path, BASE + f"from ftray import ViggoTask\nsweep = Sweep(name='b', task=ViggoTask(path={str(data)!r}), models=['tiny-xs'])")
    for command in ("validate", "run"):
        proc = ftray(command, str(f), "--storage", str(tmp_path / "runs")) if command == "run" else ftray(command, str(f))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert expected in proc.stderr and "Traceback" not in proc.stderr
