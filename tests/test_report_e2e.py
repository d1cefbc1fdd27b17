"""After a real small sweep on the user's own CSV data: the report files, pruned checkpoints,
`ftray eval` on new rows, `ftray compare`, and the W&B summary run holding the frontier table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

pytestmark = pytest.mark.e2e


def ftray(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "ftray.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={k: v for k, v in os.environ.items() if not k.startswith("WANDB_")})


@pytest.fixture(scope="module")
def run_dir(shared_sweep):
    """The session's shared sweep (conftest.SHARED_SWEEP: a TextTask over CSV files, 3 trials over 2 models,
    W&B offline), also read by tests/test_e2e.py. The tests here only read the run folder or rewrite its
    report files as `ftray run` wrote them; `eval` and `compare` write elsewhere."""
    assert "What the sweep says" in shared_sweep.stdout  # the report runs at the end of `ftray run`
    return shared_sweep.run_dir


def test_report_files_and_pngs(run_dir):
    proc = ftray("report", str(run_dir), "--json", "--target", "0.5")
    report = json.loads(proc.stdout)
    a = report["analysis"]
    for key in ("frontier_params", "hypervolume", "leverage", "setting_effects", "iteration_time", "finetune_gain",
                "failed", "verdicts", "target"):
        assert key in a, key
    assert a["target"]["target"] == 0.5
    for name in ("frontier.png", "data_fraction.png", "lora_rank.png"):
        image = matplotlib.image.imread(run_dir / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
    csv_rows = (run_dir / "frontier.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(report["trials"])
    assert json.loads((run_dir / "report.json").read_text())["frontier"] == report["frontier"]


def test_only_frontier_checkpoints_are_kept(run_dir, shared_report):
    report = shared_report  # `ftray report RUN --json`, run once
    for t in report["trials"]:
        kept = (run_dir / "checkpoints" / t["id"]).exists()
        assert kept == (t["id"] in report["frontier"]), t["id"]


def test_eval_scores_the_frontier_adapters_on_new_rows(run_dir, shared_sweep, shared_report, tmp_path):
    new_rows = tmp_path / "new.csv"
    lines = Path(shared_sweep.data["test"]).read_text().splitlines()  # rows the sweep never trained or validated on
    new_rows.write_text("\n".join(lines[:21]) + "\n")
    proc = ftray("eval", str(run_dir), "--data", str(new_rows), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    report = shared_report  # `ftray report RUN --json`, run once
    assert result["rows"] == 20
    assert {t["id"] for t in result["trials"]} == set(report["frontier"])
    for t in result["trials"]:
        assert 0.0 <= t["objective"] <= 1.0 and "rouge_l" in t["new_metrics"]
    bad = ftray("eval", str(run_dir), "--data", str(tmp_path / "missing.csv"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_compare_two_runs(run_dir, tmp_path):
    proc = ftray("compare", str(run_dir), str(run_dir), "--json", "--out", str(tmp_path / "cmp.png"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["runs"]) == 2 and out["runs"][0]["hypervolume"] == out["runs"][1]["hypervolume"]
    assert matplotlib.image.imread(tmp_path / "cmp.png").shape[0] > 100


def test_wandb_summary_run_holds_the_frontier_table(run_dir):
    summary = list((run_dir / "wandb").glob("offline-run-*-e2e-summary/run-*.wandb"))
    assert len(summary) == 1, list((run_dir / "wandb").glob("*"))
    wandb_cli = Path(sys.executable).with_name("wandb")
    proc = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(summary[0])], capture_output=True,
                          text=True, timeout=120)
    text = proc.stdout
    assert "frontier" in text and "table-file" in text.replace("_", "-") or '"frontier"' in text
    assert "verdicts" in text
    files = list(summary[0].parent.glob("files/media/table/frontier_*.table.json"))
    assert files, "the frontier table file"
    table = json.loads(files[0].read_text())
    assert "params" in table["columns"] and len(table["data"]) == 3
