"""Faults injected from outside, black box: a sweep started from Python
on S3 storage (a local S3 server) whose driver is SIGKILLed, then resumed and evaluated from the CLI;
a loss that turns NaN, an out-of-memory, a bug in user code and a lost trial process, one trial each
in one sweep, classified while the sweep goes on, then the errored ones continued by
`ftray resume --resume-errored`. (A Train worker killed mid-trial: tests/test_e2e.py, on the suite's
one Ray Train sweep.)

(Bad input of every kind is tests/test_bad_inputs.py: it needs no Ray.) Each test finds and kills
only the processes it started.
"""

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ftray_cli as ftray, kill_tree, output, report_of, start, wait_for, write_synthetic_csvs
from ftray.cli import main

pytestmark = pytest.mark.e2e


def sweep_file(tmp: Path, body: str, name="s.py") -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(body))
    return path


def history(trial_dir) -> list[dict]:
    return [json.loads(line) for line in Path(trial_dir, "result.json").read_text().splitlines() if line.strip()]


BASE = """
from ray import tune
from ftray import Sweep, SyntheticTask, TextTask, WandB
"""


FROM_PYTHON = """
import sys
import ftray
from ray import tune
from ftray import Sweep, TextTask, WandB

sweep = Sweep(name="resume", task=TextTask(train={train!r}, valid={valid!r}, test={test!r},
                                           prompt="Sentence: {{sentence}}\\nMeaning representation:",
                                           completion=" {{mr}}", metrics=("mr",)),
              models=["tiny-xs", "tiny-s"], space={{"lora_rank": 4}}, objective="slot_f1",
              num_trials=2, max_concurrent_trials=1, workers=1, steps={steps}, eval_every=10, eval_samples=8,
              max_new_tokens=24, test_samples=0,
              batch_size=8, max_length=96, eval_base=False, wandb=WandB(mode="offline"))
if __name__ == "__main__":
    result = ftray.run(sweep, storage=sys.argv[1])
    print("RESULT", result.run_dir, len(result.report["trials"]))
"""


PLANTED_S3_SECRET = "PlantedS3Secret" + "0123456789"


@pytest.fixture
def s3(monkeypatch):
    """A local S3 API (moto's server on 127.0.0.1) with a bucket; fake credentials in the environment."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] (a dev dependency) is not installed")
    import pyarrow.fs

    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    fs = pyarrow.fs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                                 allow_bucket_creation=True)
    fs.create_dir("bucket")
    # Credentials in the URI (the local server takes any): ftray must never print or record them.
    yield f"s3://testing:{PLANTED_S3_SECRET}@bucket/runs?endpoint_override={host}:{port}&scheme=http&region=us-east-1", fs
    server.stop()


def test_sweep_from_python_on_s3_killed_then_resumed_and_evaluated(tmp_path, s3, capsys):
    from ftray.results import runfolder as rf
    from ftray import storage as st

    storage, fs = s3
    data = write_synthetic_csvs(tmp_path / "data")
    script = tmp_path / "from_python.py"
    script.write_text(textwrap.dedent(FROM_PYTHON.format(steps=30, **data)))
    run_dir, prefix = st.join(storage, "resume"), "bucket/runs/resume"
    # Trials run one at a time; the second stalls at step 25, so the driver dies, without warning, with
    # one trial finished (its history on the storage) and one between checkpoints (the latest at step 20).
    stall = json.dumps([{"model": "tiny-s", "stall_at_step": 25}])
    proc = start([sys.executable, str(script), storage], env=dict(os.environ, FTRAY_INJECT=stall))

    def stored_history() -> dict[str, bytes]:
        return {i.path: fs.open_input_stream(i.path).read() for i in fs.get_file_info(pyarrow_selector(prefix))
                if i.path.endswith("/result.json")}

    def finished() -> list[str]:
        return [p for p, text in stored_history().items()
                if any(r["step"] == r["total_steps"] for r in map(json.loads, text.decode().splitlines()))]

    def checkpointed_steps() -> dict[str, list[int]]:
        steps = {}
        for i in fs.get_file_info(pyarrow_selector(f"{prefix}/{rf.CHECKPOINTS}")):
            if i.path.endswith("/" + rf.CHECKPOINT_MARK):  # .../checkpoints/<trial id>/checkpoint_step_N/mark
                trial, name = i.path.split("/")[-3:-1]
                steps.setdefault(trial, []).append(int(name.rsplit("_", 1)[-1]))
        return steps

    def ready() -> bool:
        # On the storage: Tune's record of the first trial finished and of the second running, the
        # second's latest checkpoint at step 20 and Tune's record of its report (else the resume would send
        # that report again first, tests/test_recipe.py), the first's whole history.
        trials = rf.tune_trials(run_dir)
        status = {t.status: t.id for t in trials}
        running = [t for t in trials if t.status == "RUNNING"]
        return (set(status) == {"TERMINATED", "RUNNING"} and len(finished()) == 1
                and max(checkpointed_steps().get(status["RUNNING"], [0])) == 20
                and 20 in rf.recorded_steps(running[0].trial_dir))

    try:
        wait_for(ready, 400, proc, "one trial finished and one stored at step 20")
    finally:
        kill_tree(proc)  # the driver and everything it started
    first_run_output = output(proc)
    before, done_before = stored_history(), finished()
    # Tune stores its trials' snapshot and its search state as files of their own, sent one by one: a
    # driver killed between the two leaves the search state a snapshot behind (CI met it: the resume
    # waited forever on a trial that had finished). Here it always is: as it was while the first trial ran.
    first = next(t.id for t in rf.tune_trials(run_dir) if t.status == "TERMINATED")
    set_search_state_back(fs, prefix, created=1, running=first)

    changed = sweep_file(tmp_path, FROM_PYTHON.format(steps=40, **data), name="changed.py")
    # Refused before any Ray work, so in this process (as tests/test_bad_inputs.py runs the CLI).
    status, refused = main(["run", str(changed), "--storage", storage]), capsys.readouterr()
    assert status == 2 and "steps: 30 -> 40" in refused.err, refused.err

    # The sweep was started from Python, with no sweep file: its recorded configuration rebuilds it.
    resumed = ftray("resume", run_dir, timeout=420)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert "Tune's stored search state did not match its stored trials" in resumed.stdout, resumed.stdout[-4000:]
    r = report_of(run_dir)
    assert len(r["trials"]) == 2 and all(t["status"] == "TERMINATED" and not t["reason"] for t in r["trials"])
    assert sorted(t["model"] for t in r["trials"]) == ["tiny-s", "tiny-xs"]
    # Every trial kept the history it had on the storage and went on appending to it: the finished one
    # was not trained again (at most it reports its final checkpoint again), the other continued from
    # its checkpoint at step 20 with no step reported twice.
    assert "tiny-s: resumed at step 20/30" in resumed.stdout and "tiny-xs: training from" not in resumed.stdout
    for t in r["trials"]:
        # The report shows the trial's folder with its URI's credentials hidden (***@bucket/...).
        key = st.join(t["trial_dir"], "result.json").split("?")[0].removeprefix("s3://").split("@", 1)[-1]
        rows = [json.loads(x) for x in fs.open_input_stream(key).read().decode().splitlines() if x]
        old = [json.loads(x) for x in before.get(key, b"").decode().splitlines() if x]
        assert rows[:len(old)] == old, (t["model"], rows)
        if key in done_before:
            assert all(x["step"] == 30 and "train_loss" not in x for x in rows[len(old):]), rows
        else:
            steps = [x["step"] for x in rows]
            assert steps == sorted(set(steps)) and steps[len(old):] == [30], steps
    status, ev = main(["eval", run_dir, "--data", data["test"], "--json"]), capsys.readouterr()
    assert status == 0, ev.err[-3000:]
    scored = json.loads(ev.out)
    assert scored["rows"] == 40 and set(scored["frontier_before"]) == {t["id"] for t in scored["trials"]}
    assert all(0 <= t["objective"] <= 1 for t in scored["trials"])
    # The secret in the storage URI is in no output and no object of the run, Ray's own files included.
    said = [first_run_output, refused.out, refused.err, resumed.stdout, resumed.stderr, ev.out, ev.err,
            ftray("report", run_dir).stdout, json.dumps(r)]
    assert not any(PLANTED_S3_SECRET in text for text in said)
    for path in Path(os.environ["RAY_TMPDIR"]).rglob("*"):  # Ray's session folders: logs, job and actor files
        if path.is_file() and not path.is_symlink():
            try:
                assert PLANTED_S3_SECRET.encode() not in path.read_bytes(), path
            except OSError:  # a socket
                pass
    for info in fs.get_file_info(pyarrow_selector("bucket")):
        if info.type.name == "File":
            assert PLANTED_S3_SECRET.encode() not in fs.open_input_stream(info.path).read(), info.path


def set_search_state_back(fs, experiment, created: int, running: str) -> None:
    """Tune's stored search state (its SearchGenerator's, holding the ConcurrencyLimiter's) set back to when
    `created` trials had been made and `running` ran: what a kill between two uploads leaves."""
    import pyarrow.fs
    import ray.cloudpickle as cloudpickle

    (path,) = [i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(experiment))
               if i.base_name.startswith("search_gen_state-")]
    state = cloudpickle.loads(fs.open_input_stream(path).read())
    state["counter"] = created
    state["name:ConcurrencyLimiter"].update(live_trials={running}, num_unfinished_live_trials=1)
    with fs.open_output_stream(path) as f:
        f.write(cloudpickle.dumps(state))


def pyarrow_selector(path):
    import pyarrow.fs

    return pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True)


def test_faults_are_classified_the_sweep_goes_on_and_resume_errored_continues(tmp_path):
    """A loss that turns NaN, an out-of-memory, a bug in user code and a lost trial process, one trial
    each in one sweep: each classified, none retried in vain; then `ftray resume --resume-errored`
    continues the errored trials from their checkpoints."""
    from ftray.results import runfolder as rf

    f = sweep_file(tmp_path, BASE + """
from ftray.tasks import SyntheticTask as _Synthetic

EVALUATIONS = []

class BuggyTask(_Synthetic):
    # A user's scorer with a bug that shows from its second evaluation in a process on (it keeps state
    # between calls): in the first run only tiny-m's trial evaluates twice.
    def score(self, predictions, examples):
        if len(predictions) > 1:  # a whole evaluation, not one row of score_rows
            EVALUATIONS.append(1)
            if len(EVALUATIONS) > 1:
                raise ZeroDivisionError("user bug in score()")
        return super().score(predictions, examples)

sweep = Sweep(name="faults", task=BuggyTask(n_train=300, n_valid=8, n_test=8),
              models=["tiny-xs", "tiny-s", "tiny-m", "tiny-l"], num_trials=4, workers=1, cpus_per_worker=0.9,
              steps=20, eval_every=10, eval_samples=8, max_new_tokens=8, test_samples=0, batch_size=8,
              max_length=96, eval_base=False, wandb=WandB(mode="disabled"))
""")
    # tiny-l's process SIGKILLs itself at step 15 unless it resumed from a checkpoint. Tune snapshots its
    # experiment state at every step, so that trial is on record as RUNNING before its process dies and
    # its ERROR must be recorded again (Ray Tune alone did not: schedulers.FIFOKeepingErrors).
    faults = [{"model": "tiny-xs", "nan_at_step": 5}, {"model": "tiny-s", "oom_at_step": 3},
              {"model": "tiny-l", "lost_at_step": 15}]
    env = dict(os.environ, FTRAY_INJECT=json.dumps(faults), TUNE_GLOBAL_CHECKPOINT_S="0")
    run_dir = str(tmp_path / "runs" / "faults")
    proc = ftray("run", str(f), "--storage", str(tmp_path / "runs"), env=env)
    out = proc.stdout + proc.stderr
    first = report_of(run_dir)
    trials = {t["model"]: t for t in first["trials"]}
    assert set(trials) == {"tiny-xs", "tiny-s", "tiny-m", "tiny-l"}, out[-3000:]
    assert proc.returncode == 0, out[-6000:]  # not every trial errored: the report is still worth reading
    nan, oom, bug, lost = trials["tiny-xs"], trials["tiny-s"], trials["tiny-m"], trials["tiny-l"]
    assert nan["outcome"] == "diverged" and nan["reason"].startswith("diverged")
    assert "at step 5" in nan["reason"]  # stopped at once
    assert oom["outcome"] == "did-not-fit" and "lower batch_size" in oom["reason"]
    assert "Last result" not in out  # Tune's own line for a trial that ended without a report
    assert bug["status"] == "ERROR" and bug["outcome"] == "error" and "user bug in score()" in bug["reason"]
    assert "user bug in score()" in (Path(bug["trial_dir"]) / "error.txt").read_text()  # the traceback is kept
    # A one-worker trial trains in its Tune trial's process; lost, it is an error Tune does not retry
    # (it would retry a bug too), and the report says how to continue it.
    assert lost["status"] == "ERROR" and lost["outcome"] is None and "process was lost" in lost["reason"], out[-4000:]
    assert "--resume-errored" in lost["reason"] and [h["step"] for h in history(lost["trial_dir"])] == [10]
    for t in trials.values():
        assert t["restarts"] == 0 and t["id"] not in first["frontier"], t  # none retried in vain or on the front
    # The errored trials' checkpoints outlived the pruning of trials off the front, and `--resume-errored`
    # goes on from them to the end, appending to the history each had.
    for t in (bug, lost):
        assert [c.step for c in rf.stored_checkpoints(run_dir, t["id"])] == [10], t["model"]
    resumed = ftray("resume", run_dir, "--resume-errored", env=dict(env, TUNE_GLOBAL_CHECKPOINT_S="auto"))
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    after = {t["model"]: t for t in report_of(run_dir)["trials"]}
    for model in ("tiny-m", "tiny-l"):
        assert f"{model}: resumed at step 10/20" in resumed.stdout, resumed.stdout[-4000:]
        t = after[model]
        assert t["status"] == "TERMINATED" and t["outcome"] == "ok" and t["objective"] is not None, t
        assert [h["step"] for h in history(t["trial_dir"])] == [10, 20], model
