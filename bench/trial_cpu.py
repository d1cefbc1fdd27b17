"""Where a sweep's CPU goes, by process kind: `python bench/trial_cpu.py [SWEEP_FILE]`.

Runs `ftray run` on the sweep file, samples it and every process under it (its local Ray included)
every 0.3 s with psutil, and adds up the CPU seconds (user + system) each used, grouped by its Ray
name (ray::RayTrainWorker, ray::TrainController, ...) or its command. It also reports how busy the
machine's CPUs were over the run (/proc/stat). A process that lives less than one sampling interval
is missed, so the totals are a floor. The last stdout line is one JSON object.

Without a sweep file it measures two one-worker trials of tiny-xs (4 steps each, so the trials' fixed
cost is nearly all there is) twice, side by side: trained in their Tune trials' processes (ftray's
default) and on a Ray Train worker group each (Scaling(one_worker_in_trial=False)), and prints the
ratios.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

DEFAULT_SWEEP = """
from ftray import Sweep, SyntheticTask, WandB

sweep = Sweep(name="cpu", task=SyntheticTask(n_train=200, n_valid=8, n_test=8), models=["tiny-xs"],
              num_trials=2, workers=1, cpus_per_worker=0.9, steps=4, eval_every=4, eval_samples=8,
              max_new_tokens=8, batch_size=8, max_length=96, eval_base=False, test_samples=0,
              one_worker_in_trial={in_trial}, wandb=WandB(mode="disabled"))
"""
SIDES = {"in_trial": True, "on_train": False}  # Scaling.one_worker_in_trial


def kind(cmdline: list[str]) -> str:
    """ray::Name for Ray's actors and workers, else the program and its first argument, by file name."""
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].split()[0]
    return " ".join(os.path.basename(part) for part in cmdline[:2])[:60] or "?"


def busy_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:8]]
    return sum(values) - values[3] - values[4], sum(values)  # all but idle and iowait; all


def measure(sweep_file: str, storage: str) -> dict:
    busy0, total0 = busy_jiffies()
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "ftray.cli", "run", sweep_file, "--storage", storage],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[int, tuple[str, float]] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in family:
            try:
                t, name = p.cpu_times(), kind(p.cmdline())
            except psutil.Error:  # gone since the listing
                continue
            if name == "?" and p.pid in seen:  # an exiting process keeps the name it was seen with
                name = seen[p.pid][0]
            seen[p.pid] = (name, t.user + t.system)
        time.sleep(0.3)
    busy1, total1 = busy_jiffies()
    groups: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for name, cpu in seen.values():
        groups[name][0] += 1
        groups[name][1] += cpu
    return {
        "returncode": proc.returncode,
        "wall_s": round(time.time() - started, 1),
        "machine_busy": round((busy1 - busy0) / max(1, total1 - total0), 3),
        "cpu_s_by_kind": {k: {"processes": n, "cpu_s": round(c, 1)}
                          for k, (n, c) in sorted(groups.items(), key=lambda kv: -kv[1][1])},
        "cpu_s_total": round(sum(c for _, c in groups.values()), 1),
    }


def show(label: str, result: dict) -> None:
    print(f"{label}wall {result['wall_s']} s, machine busy {result['machine_busy']:.0%}, "
          f"CPU {result['cpu_s_total']} s (exit status {result['returncode']})")
    for name, row in result["cpu_s_by_kind"].items():
        if row["cpu_s"] >= 0.5:
            print(f"  {row['cpu_s']:6.1f} s  {row['processes']:3d} x  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_file", nargs="?", help="a sweep file (default: two tiny one-worker trials, both ways)")
    args = parser.parse_args()
    print("method: `ftray run` in a subprocess; it and every process under it sampled every 0.3 s with psutil, CPU seconds "
          "(user + system) summed by Ray process name; machine busy share from /proc/stat over the run"
          + ("" if args.sweep_file else "; the default sweep run once each way, one after the other"))
    with tempfile.TemporaryDirectory(prefix="ftray-cpu-") as tmp:
        if args.sweep_file:
            result = measure(args.sweep_file, str(Path(tmp) / "runs"))
            show("", result)
            print(json.dumps(result))
            return 0 if result["returncode"] == 0 else 1
        out = {}
        for side, in_trial in SIDES.items():
            sweep_file = Path(tmp) / f"cpu_{side}.py"
            sweep_file.write_text(textwrap.dedent(DEFAULT_SWEEP).format(in_trial=in_trial))
            out[side] = measure(str(sweep_file), str(Path(tmp) / f"runs_{side}"))
            show(f"{side} (one_worker_in_trial={in_trial}): ", out[side])
    a, b = out["in_trial"], out["on_train"]
    out["cpu_ratio_in_trial_vs_train"] = round(a["cpu_s_total"] / b["cpu_s_total"], 3)
    out["wall_ratio_in_trial_vs_train"] = round(a["wall_s"] / b["wall_s"], 3)
    print(f"in the trial's process / on Ray Train: CPU {out['cpu_ratio_in_trial_vs_train']:.2f}, "
          f"wall {out['wall_ratio_in_trial_vs_train']:.2f}")
    print(json.dumps(out))
    return 0 if a["returncode"] == b["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
