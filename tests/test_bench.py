"""The benchmark runs in its --quick form and reports every key as a finite number (no timing thresholds)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KEYS = ("overhead_ratio", "per_trial_overhead_s", "step_ratio_vs_bare", "tokens_per_s_ratio_vs_hf_trainer",
        "padding_efficiency", "search_compute_ratio", "ray_floor_overhead_ratio", "overhead_ratio_vs_ray_floor",
        "ray_floor_step_ratio")


@pytest.mark.e2e
def test_bench_quick_reports_every_key(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert isinstance(last[key], (int, float)) and math.isfinite(last[key]), key
    assert 0 < last["padding_efficiency"] <= 1
    assert 0 < last["search_compute_ratio"] <= 4
    saved = json.loads(next(tmp_path.glob("*-quick.json")).read_text())
    assert {k: saved[k] for k in KEYS} == last
    for key in KEYS:  # the method of each figure is printed beside it
        assert any(line.strip().startswith(key) for line in proc.stdout.splitlines()), key


def test_only_names_a_part_or_exits_with_the_parts_listed(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--only", "overhead,speed", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "overhead,throughput,search" in proc.stderr and "'overhead,speed'" in proc.stderr
