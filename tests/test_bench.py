"""The benchmark: its --quick form runs every part once and reports every key as a finite number (no
timing thresholds); its result file and last line are assembled from one list of keys."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import run as bench  # noqa: E402


@pytest.mark.e2e
@pytest.mark.bench
def test_bench_quick_reports_every_key(tmp_path):
    """Minutes of Ray sweeps, bare loops and the Trainer: run with `pytest -m bench` (not by default)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tuple(last) == bench.KEYS
    for key in bench.KEYS:
        assert isinstance(last[key], (int, float)) and math.isfinite(last[key]), key
    assert 0 < last["padding_efficiency"] <= 1
    assert 0 < last["search_compute_ratio"] <= 4
    saved = json.loads(next(tmp_path.glob("*-quick.json")).read_text())
    assert bench.headline(saved) == last
    for key in bench.KEYS:  # the method of each figure is printed beside it
        assert any(line.strip().startswith(key) for line in proc.stdout.splitlines()), key


def test_results_are_never_overwritten_and_the_last_line_keeps_the_order(tmp_path):
    results = {"date": "2026-11-29", "search_compute_ratio": 0.3, "overhead_ratio": 1.4, "other": 1}
    first = bench.write_results(results, tmp_path, ("search",), quick=True)
    second = bench.write_results(results, tmp_path, ("search",), quick=True)
    full = bench.write_results(results, tmp_path, bench.PARTS, quick=False)
    assert [first.name, second.name, full.name] == ["2026-11-29-quick-only-search.json",
                                                    "2026-11-29-quick-only-search-2.json", "2026-11-29.json"]
    assert json.loads(first.read_text()) == results
    assert list(bench.headline(results)) == ["overhead_ratio", "search_compute_ratio"]


def test_the_search_replay_uses_ftrays_own_searcher_and_asha():
    """On made-up curves where the biggest model is best, every strategy finishes, and ASHA over all sizes
    (Tune's way) spends more than ftray's per-size ASHA: it stops the small sizes the front needs."""
    import random

    rng = random.Random(0)
    params = {"tiny-xs": 53_408, "tiny-s": 147_776, "tiny-m": 787_584}
    bench._PARAMS.update(params)
    curves = [{"config": {"model": m, "rank": r, "lr": lr, "data_fraction": 1.0}, "params": params[m],
               "curve": [(s, 5 / (1 + s / 40) * (1 + 0.3 * rng.random()) * (1 if m == "tiny-m" else 1.3))
                         for s in (10, 20, 30, 40)]}
              for m in params for r in (4, 16) for lr in (2e-3, 1e-2)]
    grid = sum(c["curve"][-1][0] for c in curves)
    spent = {s: [bench.replay(curves, seed, s, 48) / grid for seed in range(3)]
             for s in ("optuna", "optuna+asha", "optuna+asha-per-model", "random")}
    assert all(0 < x <= 4 for xs in spent.values() for x in xs)
    assert sum(spent["optuna+asha"]) > sum(spent["optuna+asha-per-model"])


def test_only_names_a_part_or_exits_with_the_parts_listed(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--only", "overhead,speed", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "overhead,throughput,search" in proc.stderr and "'overhead,speed'" in proc.stderr


def test_gpu_bench_parts_select_their_keys_and_what_those_need():
    import gpu

    assert gpu.selected_keys(None) == set(gpu.KEYS)
    assert gpu.selected_keys("lever_pack") == {"lever_pack", "ftray_default"}  # a lever, with the defaults it is set against
    assert gpu.selected_keys("d,tuned_compile") == {"share_4", "score_gpu", "score_gpu_no_cudnn", "score_cpu_check",
                                                     "score_cpu", "tuned_compile"}
    assert gpu.selected_keys("score_gpu") == {"score_gpu", "share_4"}  # the scoring needs the sweep's adapters
    assert gpu.selected_keys(" tuned_chunked ,") == {"tuned_chunked", "tuned"}  # a fallback, with what it backs
    with pytest.raises(ValueError, match=r"unknown 'f'; choose from a, b, c, d, e, ftray_default"):
        gpu.selected_keys("a,f")


def test_gpu_bench_repeats_keep_each_figures_median_and_a_profile_names_the_operators():
    import gpu

    runs = [{"tokens_per_s": 10.0, "step_s": 0.3, "liger": False}, {"tokens_per_s": 30.0, "step_s": 0.1, "liger": False},
            {"tokens_per_s": 20.0, "step_s": 0.2, "liger": False}]
    assert gpu.median_of(runs) == {"tokens_per_s": 20.0, "step_s": 0.2, "liger": False,
                                   "runs_tokens_per_s": [10.0, 30.0, 20.0]}
    assert gpu.median_of(runs[:1]) == runs[0]  # one run: as it was measured

    def step():
        a = torch.ones(64, 64, requires_grad=True)
        (a @ a).sum().backward()
        return {"tokens_per_s": 1.0}

    out = gpu.measured(step, reps=2, profile=True)()
    assert out["tokens_per_s"] == 1.0 and out["runs_tokens_per_s"] == [1.0, 1.0]
    assert any(r["op"] == "aten::mm" and r["calls"] >= 1 for r in out["profile"]["by_host"])
    assert out["profile"]["by_device"] == [] and out["profile"]["syncs"] == 0  # no GPU here


def test_activation_count_sees_what_lora_dropout_keeps():
    import activations
    import gpu

    # bench/activations.py's count on the tiny shape, eager: dropout keeps each adapted layer's dropped-out
    # input and its mask, so a layer keeps more with it than without.
    def one_layer(dropout):
        return (activations.kept_bytes(gpu.SHAPES["tiny"], 2, dropout, False, 32, torch.device("cpu"))
                - activations.kept_bytes(gpu.SHAPES["tiny"], 1, dropout, False, 32, torch.device("cpu")))

    without, with_dropout = one_layer(0.0), one_layer(0.05)
    assert 0 < without < with_dropout
