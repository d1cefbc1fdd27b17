"""From laptop to cluster: `ray job submit` against a real local cluster, storage URIs, cluster.yaml,
and every sweep in sweeps/ passing `ftray validate`."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SMALL = """
from ray import tune
from ftray import Sweep, SyntheticTask, WandB

sweep = Sweep(name="{name}", task=SyntheticTask(n_train=300, n_valid=8, n_test=8), models=["tiny-xs", "tiny-s"],
              space={{"lora_rank": tune.choice([2, 4])}}, num_trials=2, workers=2, steps=10, eval_every=5,
              eval_samples=8, max_new_tokens=8, batch_size=8, max_length=96, eval_base=False,
              wandb=WandB(mode="offline"))
"""


def ftray(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "ftray.cli", *args], capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=timeout)


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
def test_every_shipped_sweep_validates(sweep):
    # The GPU sweeps are checked for a cluster (its resources are checked when it runs), the rest here.
    cluster = ["--address", "ray://head:10001"] if "gpu" in sweep or "frontier" in sweep else []
    proc = ftray("validate", str(REPO / "sweeps" / sweep), *cluster, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert ": ok: sweep" in proc.stdout


@pytest.fixture(scope="module")
def job_run(tmp_path_factory):
    """One small sweep, sent with `ray job submit` to a real local cluster, its storage a file:// URI.

    Both tests below read it: the job test what ran and where, the storage test the run folder
    behind the URI (one sweep instead of a second one, started by `ftray run` alone, for the URI).
    """
    tmp_path = tmp_path_factory.mktemp("cluster")
    work = tmp_path / "work"
    work.mkdir()
    (work / "job_sweep.py").write_text(textwrap.dedent(SMALL.format(name="job")))
    uri = f"file://{tmp_path}/bucket/runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    port, dash = free_port(), free_port()
    address = f"http://127.0.0.1:{dash}"
    temp_dir = tempfile.mkdtemp(prefix="ftray-ray-", dir="/tmp")  # socket paths must stay short
    # --block keeps `ray start` in the foreground as the parent of the cluster's processes, in a process
    # group of its own: the test stops that group, and no other Ray on the machine.
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
         "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        # The job server and its agent come up after the head starts (slowly, on a busy 2-core machine):
        # until then nothing is submitted, so ask again.
        for _ in range(48):
            submit = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(work), "--",
                 "ftray", "run", "job_sweep.py", "--storage", uri],
                # Ray 2.60's `ray start --head` turns on token auth when ~/.ray/auth_token exists, and the
                # job CLI only sends the token when told to.
                capture_output=True, text=True, env=dict(env, RAY_AUTH_MODE="token"), timeout=900)
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
        shutil.rmtree(temp_dir, ignore_errors=True)
    return SimpleNamespace(submit=submit, uri=uri, tmp_path=tmp_path)


@pytest.mark.e2e
def test_storage_uri_round_trip(job_run):
    tmp_path, uri = job_run.tmp_path, job_run.uri
    proc = job_run.submit
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (tmp_path / "bucket" / "runs" / "job" / "ftray_run.json").is_file()
    rep = ftray("report", f"{uri}/job", "--json")
    assert rep.returncode == 0, rep.stderr
    report = json.loads(rep.stdout)
    assert report["run_dir"] == f"{uri}/job"
    assert len(report["trials"]) == 2 and all(t["status"] == "TERMINATED" for t in report["trials"])
    assert (tmp_path / "bucket" / "runs" / "job" / "frontier.png").is_file()
    frontier = [t for t in report["trials"] if t["id"] in report["frontier"]]
    assert frontier
    for t in frontier:  # the kept checkpoints are in the storage too
        assert t["checkpoint"].startswith(str(tmp_path / "bucket")) or t["checkpoint"].startswith("file://")


@pytest.mark.e2e
def test_ray_job_submit_runs_on_the_cluster(job_run):
    submit = job_run.submit
    out = submit.stdout + submit.stderr
    assert submit.returncode == 0, out[-5000:]
    assert "succeeded" in out.lower()
    assert "joined the Ray cluster" in out  # not a second, local Ray
    assert "trial" in out.lower()  # progress is in the job's logs
    report = json.loads(ftray("report", str(job_run.tmp_path / "bucket" / "runs" / "job"), "--json").stdout)
    assert len(report["trials"]) == 2 and all(t["status"] == "TERMINATED" for t in report["trials"])
