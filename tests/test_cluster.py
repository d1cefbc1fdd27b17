"""From laptop to cluster: `ray job submit` against a real local cluster (its sweep is also the test of
ASHA's per-size rungs), storage URIs, cluster.yaml, and every sweep in sweeps/ passing `ftray validate`."""

import json
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import report_of
from ftray.cli import main

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# The sweep sent to the cluster is also the test of ASHA's per-size rungs (one sweep for both: each
# costs minutes on 2 cores). The grid (lr 1e-6 or 2e-2) is cycled over the ladder, so each size has a
# hopeless and a good learning rate, and trials 5 and 6 repeat cells 1 and 2 after ASHA has seen them.
JOB_SWEEP = """
from ray import tune
from ftray import ASHA, Sweep, SyntheticTask, WandB

sweep = Sweep(
    name="job",
    task=SyntheticTask(n_train=300, n_valid=16, n_test=16, seed=2),
    models=["tiny-s", "tiny-xs"],
    space={"lora_rank": 4, "data_fraction": 1.0, "lr": tune.grid_search([1e-6, 2e-2])},
    objective="eval_loss",
    num_trials=6,
    workers=1,
    # One trial at a time, filling the 2-CPU cluster: the trial after an ASHA stop can only start once
    # the stopped one has let go of its CPUs (two at a time ended in the same second: trials take under one).
    cpus_per_worker=1.5,
    steps=16,
    eval_every=4,
    eval_samples=8,
    max_new_tokens=24,
    batch_size=8,
    max_length=96,
    eval_base=False,
    test_samples=8,
    asha=ASHA(grace_steps=4, reduction_factor=2),
    wandb=WandB(mode="offline"),
)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cluster_yaml_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    text = (REPO / "cluster.yaml").read_text()
    assert "WANDB_API_KEY=" not in text.replace("WANDB_API_KEY=...", "")  # secrets stay out of the file
    head = config["available_node_types"][config["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"]  # spot for workers only
    assert any("InstanceMarketOptions" in t["node_config"] for t in config["available_node_types"].values())


def test_ray_up_prepares_the_config_with_and_without_a_secrets_file(tmp_path, monkeypatch):
    """`ray up` hashes every file_mounts source on the laptop (ray.autoscaler._private.util.
    hash_runtime_conf opens each: a missing one fails it): every source must exist on a laptop without
    ~/.ftray. The only one is the checkout, with or without .ftray/secrets.env, which git and
    `ray job submit` skip."""
    from ray.autoscaler._private.util import hash_runtime_conf, prepare_config

    config = prepare_config(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    monkeypatch.setenv("HOME", str(tmp_path))  # a laptop without ~/.ftray
    monkeypatch.chdir(REPO)
    for source in config["file_mounts"].values():
        assert os.path.exists(os.path.expanduser(source)), source
    # Ray's own hashing of the mounts, on a small stand-in for the checkout (hashing the real one reads
    # its .venv, a gigabyte).
    (tmp_path / "checkout").mkdir()
    hash_runtime_conf({k: str(tmp_path / "checkout") for k in config["file_mounts"]}, None, config,
                      generate_file_mounts_contents_hash=True)
    assert ".ftray/" in (REPO / ".gitignore").read_text().splitlines()
    assert all("~/ftray/.ftray/secrets.env" in c for c in config["head_start_ray_commands"][1:])


@pytest.mark.parametrize("sweep", sorted(p.name for p in (REPO / "sweeps").glob("*.py")))
def test_every_shipped_sweep_validates(sweep, capsys):
    # The GPU sweeps are checked for a cluster (its resources are checked when it runs), the rest here.
    # In this process, as the bad-input table does: the CLI's imports are paid once, not once per sweep.
    cluster = ["--address", "ray://head:10001"] if "gpu" in sweep or "frontier" in sweep else []
    status = main(["validate", str(REPO / "sweeps" / sweep), *cluster])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert ": ok: sweep" in out
    assert "warning" not in err, err  # no row cut by max_length, no grid cell left out


@pytest.fixture(scope="module")
def job_run(tmp_path_factory, ray_temp_folder):
    """JOB_SWEEP, sent with `ray job submit` to a real local cluster, its storage a file:// URI.

    The three tests below read it: the job test what ran and where, the storage test the run folder
    behind the URI, the ASHA test the trials' curves (one sweep instead of three).
    """
    tmp_path = tmp_path_factory.mktemp("cluster")
    work = tmp_path / "work"
    work.mkdir()
    (work / "job_sweep.py").write_text(textwrap.dedent(JOB_SWEEP))
    uri = f"file://{tmp_path}/bucket/runs"
    # The cluster's own token, for `ray start` and `ray job submit` alike: nothing depends on what
    # earlier runs left in ~/.ray (a machine that never ran Ray has no ~/.ray/auth_token).
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    dash = free_port()
    address = f"http://127.0.0.1:{dash}"
    # Every port Ray would otherwise take at a fixed default (6379, 10001, 52365, ...) is a free one, so
    # another Ray on the machine does not collide with this one.
    ports = {flag: free_port() for flag in ("port", "ray-client-server-port", "dashboard-agent-listen-port",
                                            "dashboard-agent-grpc-port", "metrics-export-port",
                                            "runtime-env-agent-port", "node-manager-port", "object-manager-port")}
    # --block keeps `ray start` in the foreground as the parent of the cluster's processes, in a process
    # group of its own: the test stops that group, and no other Ray on the machine.
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", *(f"--{k}={v}" for k, v in ports.items()),
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
         "--disable-usage-stats", f"--temp-dir={ray_temp_folder}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        # The job server and its agent come up after the head starts (slowly, on a busy 2-core machine):
        # until then nothing is submitted, so ask again.
        for _ in range(48):
            submit = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(work), "--",
                 "ftray", "run", "job_sweep.py", "--storage", uri],
                capture_output=True, text=True, env=env, timeout=900)
            text = submit.stdout + submit.stderr
            if "No available agent" not in text and "Failed to connect" not in text \
                    and "Connection refused" not in text:
                break
            assert head.poll() is None, "the Ray head exited"
            time.sleep(5)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
    return SimpleNamespace(submit=submit, uri=uri, tmp_path=tmp_path, token=token.read_text())


def local(uri_or_path: str) -> Path:
    return Path(uri_or_path.removeprefix("file://"))


@pytest.fixture(scope="module")
def job_report(job_run) -> dict:
    """`ftray report URI --json` of the job's run, read through its storage URI."""
    assert job_run.submit.returncode == 0, (job_run.submit.stdout + job_run.submit.stderr)[-4000:]
    return report_of(f"{job_run.uri}/job")


@pytest.mark.e2e
def test_storage_uri_round_trip(job_run, job_report):
    tmp_path, uri = job_run.tmp_path, job_run.uri  # job_report: the job succeeded
    assert (tmp_path / "bucket" / "runs" / "job" / "ftray_run.json").is_file()
    report = job_report
    assert report["run_dir"] == f"{uri}/job"
    assert len(report["trials"]) == 6 and all(t["status"] == "TERMINATED" for t in report["trials"])
    assert (tmp_path / "bucket" / "runs" / "job" / "frontier.png").is_file()
    frontier = [t for t in report["trials"] if t["id"] in report["frontier"]]
    assert frontier
    for t in frontier:  # the kept checkpoints are in the storage too
        assert local(t["checkpoint"]).is_relative_to(tmp_path / "bucket"), t["checkpoint"]
        assert t["test"]["n"] == 8  # held-out scores, read from the storage's checkpoints


@pytest.mark.e2e
def test_ray_job_submit_runs_on_the_cluster(job_run):
    submit = job_run.submit
    out = submit.stdout + submit.stderr
    assert submit.returncode == 0, out[-5000:]
    assert "succeeded" in out.lower()
    assert "joined the Ray cluster" in out  # not a second, local Ray
    assert job_run.token not in out  # the cluster's token is never printed
    assert "trial" in out.lower()  # progress is in the job's logs


@pytest.mark.e2e
def test_asha_stops_trials_that_trail_their_own_model_size(job_run, job_report):
    """ASHA's rungs are per size, so the small size's good trial runs on even when the bigger size's
    trials did better at the same step."""
    out = job_run.submit.stdout + job_run.submit.stderr
    trials = job_report["trials"]  # job_report: the job succeeded
    assert len(trials) == 6 and all(t["status"] == "TERMINATED" and not t["reason"] for t in trials)
    # Trial i takes cell i of the cycle over the ladder and the grid: every cell ran, two of them twice.
    cells = [(t["model"], t["lr"]) for t in trials]
    assert set(cells) == {("tiny-s", 1e-6), ("tiny-s", 2e-2), ("tiny-xs", 1e-6), ("tiny-xs", 2e-2)}
    early = [t for t in trials if t["stopped_early"]]
    assert early, [(t["id"], t["model"], t["lr"], t["steps"]) for t in trials]
    assert "stopped early by ASHA" in out
    history = {t["id"]: [json.loads(line) for line in open(local(t["trial_dir"]) / "result.json")] for t in trials}
    curves = {i: {h["step"]: h["eval_loss"] for h in rows} for i, rows in history.items()}
    for t in early:
        assert t["steps"] < 16
        # Stopped at a rung where a trial of the same size that had reached it did better.
        assert any(o["id"] != t["id"] and o["model"] == t["model"]
                   and curves[o["id"]].get(t["steps"], math.inf) < curves[t["id"]][t["steps"]] for o in trials), t["id"]
    # Each size's best trial ran its whole budget, the small one too, though it trailed the big ones.
    for model in ("tiny-s", "tiny-xs"):
        best = min((t for t in trials if t["model"] == model), key=lambda t: t["objective"])
        assert best["steps"] == 16 and not best["stopped_early"], model
    small = min((t for t in trials if t["model"] == "tiny-xs"), key=lambda t: t["objective"])
    assert min(curves[t["id"]][4] for t in trials if t["model"] == "tiny-s") < curves[small["id"]][4]
    # A stopped trial lets go of its resources: one trial fills the cluster, so a trial made after it
    # could only start once it had (and all six ended, so none waited forever). Tune numbers trials in
    # the order it makes them, in each trial folder's name.
    number = {t["id"]: int(re.search(rf"_{t['id']}_(\d+)_", t["trial_dir"]).group(1)) for t in trials}
    assert min(number[t["id"]] for t in early) < max(number.values()), [(number[t["id"]], t["steps"]) for t in trials]
