"""After a real small sweep on the user's own CSV data: the report files, pruned checkpoints,
`ftray eval` on new rows, `ftray compare`, and the W&B summary run holding the frontier table."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from conftest import ftray_cli
from ftray.cli import main

pytestmark = pytest.mark.e2e


def ftray(*args, timeout=900):
    return ftray_cli(*args, timeout=timeout, env={k: v for k, v in os.environ.items() if not k.startswith("WANDB_")})


@pytest.fixture(scope="module")
def run_dir(shared_sweep):
    """The session's shared sweep (conftest.SHARED_SWEEP: a TextTask over CSV files, 3 trials over 2 models
    and a repeat of each size's best, W&B offline), also read by tests/test_e2e.py. The tests here only
    read the run folder or rewrite its report files as `ftray run` wrote them; `eval` and `compare`
    write elsewhere."""
    assert "What the sweep says" in shared_sweep.stdout  # the report runs at the end of `ftray run`
    return shared_sweep.run_dir


SIGNED = re.compile(r"[+-]\d+(?:\.\d+)?")
INTERVAL = re.compile(r"([+-]?\d+(?:\.\d+)?) \[([+-]?\d+(?:\.\d+)?), ([+-]?\d+(?:\.\d+)?)\]")


def differences_without_their_interval(line: str) -> list[str]:
    """The signed numbers (the differences a verdict states) of `line` that are not followed by their own
    interval "[lo, hi]" around them (the exceptions are below). An interval that does not hold its number
    counts as missing too."""
    bad = []
    for m in INTERVAL.finditer(line):
        value, lo, hi = (float(x) for x in m.groups())
        if not lo <= value <= hi:
            bad.append(m.group(0))
    bare = INTERVAL.sub("", line)  # what is left once every number with its interval is taken out
    # Not differences: a margin to the target (its score's interval is shown beside it) and the effect a
    # power calculation says more rows could detect.
    bad += [m.group(0) for m in SIGNED.finditer(bare) if not bare[:m.start()].endswith(("margin ", "detect "))]
    return bad


def test_differences_without_their_interval_finds_a_bare_one():
    # The check below must be able to fail: one interval on a line does not cover a second difference.
    assert differences_without_their_interval("gains +0.10 [+0.02, +0.18]; the next +0.05 at 2x") == ["+0.05"]
    assert differences_without_their_interval("gains +0.30 [+0.02, +0.18]") == ["+0.30 [+0.02, +0.18]"]
    assert differences_without_their_interval("a: 0.12 [0.05, 0.20], margin +0.02): met") == []


def test_report_files_hold_what_the_report_says(run_dir, shared_report):
    # A target between the trials' lowest and highest test scores (the sweep learns, and its trials
    # differ: tests/test_e2e.py), so some trials reach it and some do not.
    def score(t):
        return t["test"]["metrics"]["slot_f1"] if t["test"] else t["objective"]

    scores = sorted({score(t) for t in shared_report["trials"] if t["objective"] is not None})
    assert len(scores) > 1 and scores[-1] > 0, scores
    target = (scores[0] + scores[1]) / 2
    proc = ftray("report", str(run_dir), "--json", "--target", repr(target))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    a = report["analysis"]
    # The smallest model whose best trial reaches the target, read off the trials themselves (test scores).
    reaching = [t for t in report["trials"] if t["objective"] is not None and score(t) >= target]
    smallest = min(reaching, key=lambda t: (t["params"], -score(t)))
    assert a["target"]["target"] == target
    assert a["target"]["result"]["model"] == smallest["model"]
    assert a["target"]["result"]["params"] == smallest["params"]
    assert a["target"]["confidence"] in ("met with confidence", "met on the point estimate only")
    assert f"smallest model reaching slot_f1 >= {target:g}: {smallest['model']} (" in a["target"]["text"]
    for name in ("frontier.png", "data_fraction.png", "lora_rank.png"):
        image = matplotlib.image.imread(run_dir / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
    with open(run_dir / "frontier.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {t["id"] for t in shared_report["trials"]}
    for t in shared_report["trials"]:
        row = rows[t["id"]]
        assert (row["model"], int(row["params"]), int(row["lora_rank"]), float(row["lr"])) == \
            (t["model"], t["params"], t["lora_rank"], t["lr"])
        assert row["on_front"] == str(int(t["id"] in shared_report["frontier"]))
    assert json.loads((run_dir / "report.json").read_text())["frontier"] == shared_report["frontier"]
    # Every stated difference carries its own interval, around it; the verdicts do state some.
    assert sum(len(INTERVAL.findall(v)) for v in a["verdicts"]) >= 2, a["verdicts"]
    for v in a["verdicts"]:
        assert differences_without_their_interval(v) == [], v


def test_only_frontier_checkpoints_are_kept(run_dir, shared_report):
    report = shared_report  # `ftray report RUN --json`, run once
    for t in report["trials"]:
        kept = (run_dir / "checkpoints" / t["id"]).exists()
        assert kept == (t["id"] in report["frontier"]), t["id"]


def test_eval_of_the_validation_rows_gives_each_trial_its_last_reported_scores(run_dir, shared_sweep, shared_report,
                                                                                tmp_path, capsys):
    """`ftray eval` (a Ray task per frontier adapter, the held-out path) on the rows each trial was
    evaluated on during training, the first eval_samples of valid.csv, reproduces the trial's last
    report exactly. (Rows the sweep never saw are scored the same way at the end of the sweep: the test
    scores, tests/test_e2e.py.)"""
    report = shared_report  # `ftray report RUN --json`, run once
    [eval_samples] = {t["config"]["eval_samples"] for t in report["trials"]}
    rows = tmp_path / "valid_rows.csv"
    lines = Path(shared_sweep.data["valid"]).read_text().splitlines()  # a header, then one row a line
    rows.write_text("\n".join(lines[: 1 + eval_samples]) + "\n")
    proc = ftray("eval", str(run_dir), "--data", str(rows), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["rows"] == eval_samples
    assert {t["id"] for t in result["trials"]} == set(report["frontier"])
    metric_names = ("exact_match", "act_accuracy", "slot_precision", "slot_recall", "slot_f1", "parse_failure_rate",
                    "rouge_l")
    for t in result["trials"]:
        trial = next(r for r in report["trials"] if r["id"] == t["id"])
        last = [json.loads(line) for line in open(Path(trial["trial_dir"]) / "result.json")][-1]
        assert {k: t["new_metrics"][k] for k in metric_names} == {k: last[k] for k in metric_names}, t["id"]
        assert t["new_metrics"]["eval_loss"] == pytest.approx(last["eval_loss"], rel=1e-9)
        assert t["objective"] == last["slot_f1"] == t["old_objective"] > 0
    # A missing data file is bad input (in this process, as tests/test_bad_inputs.py runs the CLI).
    assert main(["eval", str(run_dir), "--data", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_compare_ranks_two_runs_by_their_fronts(run_dir, shared_report, tmp_path):
    # A second run: the same folder with its smallest trial's last score raised above every other (the
    # validation score and the held-out one, which the front is decided on where every trial has it), so
    # its front dominates the first run's whatever the sweep reached.
    better = tmp_path / "better"
    shutil.copytree(run_dir, better, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    scored = [t for t in shared_report["trials"] if t["objective"] is not None]
    small = min(scored, key=lambda t: (t["params"], -t["objective"]))
    trial_dir = better / Path(small["trial_dir"]).relative_to(run_dir)
    lines = (trial_dir / "result.json").read_text().splitlines()
    last = json.loads(lines[-1])
    last["slot_f1"] = max(t["objective"] for t in scored) + 0.5
    (trial_dir / "result.json").write_text("\n".join(lines[:-1] + [json.dumps(last)]) + "\n")
    if (trial_dir / "ftray_test.json").exists():
        test = json.loads((trial_dir / "ftray_test.json").read_text())
        test["metrics"]["slot_f1"] = max(t["test"]["metrics"]["slot_f1"] for t in scored if t["test"]) + 0.5
        (trial_dir / "ftray_test.json").write_text(json.dumps(test))
    proc = ftray("compare", str(run_dir), str(better), "--json", "--out", str(tmp_path / "cmp.png"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [r["run_dir"] for r in out["runs"]] == [str(run_dir), str(better)]
    assert out["runs"][1]["hypervolume"] > out["runs"][0]["hypervolume"]
    assert matplotlib.image.imread(tmp_path / "cmp.png").shape[0] > 100


def test_wandb_summary_run_holds_the_frontier_table(run_dir, shared_report):
    summary = list((run_dir / "wandb").glob("offline-run-*-e2e-summary/run-*.wandb"))
    assert len(summary) == 1, list((run_dir / "wandb").glob("*"))
    wandb_cli = Path(sys.executable).with_name("wandb")
    proc = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(summary[0])], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "verdicts" in proc.stdout
    files = list(summary[0].parent.glob("files/media/table/frontier_*.table.json"))
    assert files, "the frontier table file"
    table = json.loads(files[0].read_text())
    rows = {r[table["columns"].index("trial")]: dict(zip(table["columns"], r)) for r in table["data"]}
    assert set(rows) == {t["id"] for t in shared_report["trials"]}
    for t in shared_report["trials"]:
        assert rows[t["id"]]["params"] == t["params"] and rows[t["id"]]["on_front"] == (t["id"] in shared_report["frontier"])
        assert rows[t["id"]]["objective"] == pytest.approx(t["objective"])
