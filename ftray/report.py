"""Read a run folder back (Tune's own files, no Ray needed) and present it: table and JSON."""

from __future__ import annotations

import json
import math
from typing import Any

from ftray import storage as st
from ftray.errors import FtrayInputError
from ftray.frontier import analyse, trial_front

RUN_FILE = "ftray_run.json"


def load_run(run_dir: str) -> dict:
    """The run as one JSON-able dict: objective, trials (with metrics and status) and frontier.

    `run_dir` is a local folder or a storage URI (s3://, gs://, file://, ...).
    """
    run_dir = st.normalize(run_dir)
    run_file = st.join(run_dir, RUN_FILE)
    if not st.is_file(run_file):
        raise FtrayInputError(f"{run_dir} is not an ftray run folder (no {RUN_FILE}); "
                              "pass the folder that `ftray run` printed")
    run = json.loads(st.read_text(run_file))
    objective = run["objective"]
    trials = [_trial_record(state, meta, run_dir, objective, run) for state, meta in _tune_trials(run_dir)]
    trials.sort(key=lambda t: t["id"])
    return {
        "run_dir": run_dir,
        "objective": objective,
        "trials": trials,
        "frontier": trial_front(trials, objective["mode"]),
        "record": run,
    }


def _tune_trials(run_dir: str):
    """(trial state, runtime metadata) pairs from Tune's latest experiment state file."""
    states = [n for n in st.list_names(run_dir) if n.startswith("experiment_state-") and n.endswith(".json")]
    if not states:
        return []
    data = json.loads(st.read_text(st.join(run_dir, max(states))))
    out = []
    for state, meta in data["trial_data"]:
        state = json.loads(state) if isinstance(state, str) else state
        meta = json.loads(meta) if isinstance(meta, str) else meta
        out.append((state, meta))
    return out


def _trial_record(state: dict, meta: dict, run_dir: str, objective: dict, run: dict) -> dict:
    trial_dir = st.join(run_dir, state["relative_logdir"])
    config = _read_json(st.join(trial_dir, "params.json")) or {}
    history = _read_jsonl(st.join(trial_dir, "result.json"))
    last = history[-1] if history else (meta.get("last_result") or {})
    metric_names = [k for k in last if k == "eval_loss" or k in _task_metric_keys(last)]
    reason = None
    if last.get("diverged"):
        reason = "diverged: the training loss became NaN or infinite"
    elif last.get("did_not_fit"):
        reason = f"did-not-fit: {last.get('did_not_fit_reason', 'out of memory')}"
    elif state["status"] == "ERROR":
        reason = _error_reason(meta, trial_dir)
    value = last.get(objective["metric"]) if not reason else None
    model = config.get("model")
    workers = (run.get("workers") or {}).get(model, last.get("world_size", 1))
    gpus = (run.get("gpus_per_worker") or {}).get(model, 0)
    return {
        "id": state["trial_id"],
        "status": state["status"],
        "reason": reason,
        "model": model,
        "params": int(last.get("params") or config.get("model_params") or run.get("model_params", {}).get(model) or 0),
        "trainable_params": int(last.get("trainable_params") or 0),
        "lora_rank": config.get("lora_rank", last.get("lora_rank")),
        "lora_alpha": config.get("lora_alpha"),
        "data_fraction": config.get("data_fraction", 1.0),
        "lr": config.get("lr"),
        "config": {k: v for k, v in config.items() if not k.startswith("_") and "/" not in k},
        "objective": _finite(value),
        "base_objective": _finite(last.get(f"base_{objective['metric']}")),
        "metrics": {k: _finite(last.get(k)) for k in metric_names},
        "steps": last.get("step"),
        # Stopped by ASHA before its budget: scored at the step it reached.
        "stopped_early": bool(state["status"] == "TERMINATED" and not reason and last.get("total_steps")
                              and (last.get("step") or 0) < last["total_steps"]),
        "train_loss": _finite(last.get("train_loss")),
        "first_train_loss": _finite(history[0].get("train_loss")) if history else None,
        "tokens": last.get("tokens"),
        "train_tokens_per_s": _finite(last.get("train_tokens_per_s")),
        "step_s": _finite(last.get("step_s")),  # median seconds per optimizer step, last interval
        "peak_gpu_mem_gib": _finite(last.get("peak_gpu_mem_gib")),
        # Restarts of the trial's workers after a lost worker (Tune's own failure count also counts
        # the final error of a trial that was never retried).
        "restarts": int(last.get("restarts", 0)),
        "wall_s": _finite(last.get("time_total_s")),
        # What the trial held: GPUs where it had them, else its CPU workers.
        "accelerators": workers * gpus if gpus else workers,
        # None once removed (checkpoints off the frontier are pruned at the end of a sweep).
        "checkpoint": _existing(last.get("checkpoint_path")),
        "trial_dir": trial_dir,
    }


# Keys every report carries that are not task metrics.
_BOOKKEEPING = {"step", "total_steps", "train_loss", "lr", "tokens", "train_tokens_per_s", "train_s", "setup_s", "worker_start_s",
                "step_s", "peak_gpu_mem_gib",
                "params", "trainable_params", "train_examples", "restarts", "diverged", "eval_loss", "eval_s",
                "world_size", "did_not_fit"}


def _task_metric_keys(result: dict) -> list[str]:
    from ftray.tracking import NOT_LOGGED

    tune_keys = {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "time_since_restore",
                 "iterations_since_restore", "timesteps_total", "episodes_total", "timesteps_since_restore"}
    return [k for k, v in result.items()
            if k not in _BOOKKEEPING and k not in NOT_LOGGED and k not in tune_keys and isinstance(v, (int, float))]


def _existing(path: str | None) -> str | None:
    return path if path and st.exists(path) else None


def _error_reason(meta: dict, trial_dir: str) -> str:
    path = st.join(trial_dir, "error.txt")
    if st.is_file(path):
        lines = [ln for ln in st.read_text(path).strip().splitlines() if ln.strip()]
        text = "\n".join(lines)
        if "OutOfMemoryError" in text or "out of memory" in text.lower():
            return f"did-not-fit: out of memory (traceback: {path})"
        return "error: " + (lines[-1][:300] if lines else "unknown") + f" (traceback: {path})"
    return "error (no error file found)"


def _read_json(path: str) -> Any:
    try:
        return json.loads(st.read_text(path))
    except (OSError, FileNotFoundError, json.JSONDecodeError):
        return None


def _read_jsonl(path: str) -> list[dict]:
    try:
        text = st.read_text(path)
    except (OSError, FileNotFoundError):
        return []
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut short by a crash: the ones before it still count
    return rows


def _finite(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


# ---- presentation ----------------------------------------------------------------------------
def to_json(run: dict) -> dict:
    keys = ("id", "status", "reason", "model", "params", "trainable_params", "lora_rank", "data_fraction", "lr",
            "objective", "base_objective", "metrics", "wall_s", "accelerators", "tokens", "train_loss",
            "first_train_loss", "restarts", "steps", "stopped_early", "config", "checkpoint", "trial_dir")
    return {
        "run_dir": run["run_dir"],
        "objective": run["objective"],
        "trials": [{k: t[k] for k in keys} for t in run["trials"]],
        "frontier": run["frontier"],
    }


def format_table(run: dict) -> str:
    obj = run["objective"]
    front = set(run["frontier"])
    head = ["trial", "status", "model", "params", "rank", "data", "lr", obj["metric"], "wall s", "front"]
    rows = []
    order = sorted(run["trials"], key=lambda t: (t["params"], -(t["objective"] or 0) if obj["mode"] == "max" else (t["objective"] or 0)))
    for t in order:
        rows.append([
            t["id"], t["status"] if not t["reason"] else t["reason"].split(":")[0].upper(), t["model"] or "?",
            _human(t["params"]), str(t["lora_rank"]), f"{t['data_fraction']:g}",
            f"{t['lr']:.2e}" if isinstance(t["lr"], (int, float)) else "-",
            f"{t['objective']:.4f}" if t["objective"] is not None else "-",
            f"{t['wall_s']:.0f}" if t["wall_s"] is not None else "-", "*" if t["id"] in front else "",
        ])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    better = "higher" if obj["mode"] == "max" else "lower"
    lines.append(f"\n{len(rows)} trials; objective {obj['metric']} ({better} is better); "
                 f"* = on the frontier of {obj['metric']} vs parameters")
    for t in order:
        if t["reason"]:
            lines.append(f"  {t['id']}: {t['reason']}")
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


# ---- the frontier report ---------------------------------------------------------------------------
CSV_COLUMNS = ("id", "status", "model", "params", "trainable_params", "lora_rank", "data_fraction", "lr", "objective",
               "base_objective", "wall_s", "accelerators", "tokens", "on_front", "reason")


def build_report(run: dict, target: float | None = None) -> dict:
    """The run's JSON (as `to_json`) with the frontier analysis under "analysis"."""
    obj = run["objective"]
    out = to_json(run)
    space = run.get("record", {}).get("sweep", {}).get("space", {})
    continuous = {k for k, v in space.items() if not str(v).startswith("choice(")}
    out["analysis"] = analyse(run["trials"], obj["metric"], obj["mode"], target=target, continuous=continuous)
    return out


def frontier_csv(run: dict) -> str:
    import csv
    import io

    front = set(run["frontier"])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for t in sorted(run["trials"], key=lambda t: (t["params"], t["id"])):
        row = dict(t, on_front=int(t["id"] in front))
        w.writerow(["" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS])
    return buf.getvalue()


def write_report_files(run: dict, report: dict) -> list[str]:
    """frontier.csv, report.json and the PNGs, into the run folder (local or a storage URI)."""
    import tempfile

    from ftray.plots import write_plots

    run_dir = run["run_dir"]
    written = []
    for name, text in (("frontier.csv", frontier_csv(run)), ("report.json", json.dumps(report, indent=2))):
        st.write_text(st.join(run_dir, name), text)
        written.append(st.join(run_dir, name))
    obj = run["objective"]
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_plots(run["trials"], obj["metric"], obj["mode"], tmp):
            dest = st.join(run_dir, path.rsplit("/", 1)[-1])
            with open(path, "rb") as f:
                st.write_bytes(dest, f.read())
            written.append(dest)
    return written


def format_report(run: dict, report: dict) -> str:
    """The terminal report: the trial table, then the answers."""
    a = report["analysis"]
    metric = run["objective"]["metric"]
    lines = [format_table(run), "", "What the sweep says"]
    lines += [f"  - {v}" for v in a["verdicts"]]
    early = [t for t in run["trials"] if t.get("stopped_early")]
    if early:
        lines.append(f"  - {len(early)} of {len(run['trials'])} trials were stopped early by ASHA; each is scored at the "
                     "step it reached: " + ", ".join(f"{t['id']} ({t['steps']})" for t in early[:8])
                     + (" ..." if len(early) > 8 else ""))
    gains = a["finetune_gain"]
    if gains:
        lines += ["", "Finetuning gain per model size (base model before finetuning -> best trial)"]
        for model, g in gains.items():
            base = "?" if g["base"] is None else f"{g['base']:.4f}"
            gain = "" if g["gain"] is None else f"  ({g['gain']:+.4f})"
            lines.append(f"  {model:<24} {_human(g['params']):>7}  {metric}: {base} -> {g['best']:.4f}{gain}")
    lev = a["leverage"]
    if lev["model"]:
        lines += ["", "Each step up the model ladder (best trial at the same data fraction)"]
        for step in lev["model"]["steps"]:
            lines.append(f"  data {step['data_fraction']:g}: {step['from']} -> {step['to']}: {step['gain']:+.4f} "
                         f"at {step['params_ratio']:.1f}x params ({step['n_trials']} trials)")
    if lev["data"]:
        lines += ["", "Each doubling of the data (slope of the best trial per fraction, per model)"]
        for model, d in lev["data"]["per_model"].items():
            lines.append(f"  {model}: {d['gain_per_doubling']:+.4f} per doubling over fractions "
                         f"{', '.join(f'{f:g}' for f in d['fractions'])} ({d['n_trials']} trials)")
    hv = a["hypervolume"]
    lines += ["", f"Hypervolume of the front: {hv['value']:.4g} (reference {metric}={hv['reference'][0]:.4g}, "
                  f"params={_human(int(hv['reference'][1]))}; size axis {hv['size_axis']})"]
    if a["failed"]:
        lines += ["", "Trials kept out of the front"]
        lines += [f"  {f['id']}: {f['reason']}" for f in a["failed"]]
    return "\n".join(lines)
