"""Read a run folder back (Tune's own files, no Ray needed) and present it: table and JSON."""

from __future__ import annotations

import json
import math

from dataclasses import asdict

from ftray.results import runfolder as rf
from ftray import storage as st
from ftray.spec.config import SETTINGS
from ftray.results.frontier import analyse, decide_front, test_score, trial_intervals
from ftray.tasks.metrics import sign
from ftray.results.stats import format_count

def load_run(run_dir: str) -> dict:
    """The run as one JSON-able dict: objective, trials (with metrics and status) and frontier (the one
    front, `decide_front`'s: on test scores where every scored trial has them).

    `run_dir` is a local folder or a storage URI (s3://, gs://, file://, ...).
    """
    run_dir = st.normalize(run_dir)
    record = rf.require_record(run_dir)
    trials = [_trial_record(t, record, run_dir) for t in rf.tune_trials(run_dir)]
    return {
        "run_dir": run_dir,  # where to read and write; shown through st.redact
        "objective": record.objective,
        "trials": trials,
        "frontier": decide_front(trials, record.objective["metric"], record.objective["mode"]),
        "record": asdict(record),
    }


def _trial_record(trial: rf.TuneTrial, record: rf.RunRecord, run_dir: str) -> dict:
    objective = record.objective
    last = trial.last
    config = trial.record.config.to_dict() if trial.record else dict(trial.params)
    outcome = trial.record.outcome if trial.record else None
    reason = outcome.describe() if outcome else None
    if reason is None and trial.status == "ERROR":  # no outcome written: its process was lost, or failed before training
        reason = (f"error: no outcome recorded: its process was lost, or it failed before training (see "
                  f"{st.redact(st.join(trial.trial_dir, 'error.txt'))}); `ftray resume --resume-errored` "
                  "continues it from its latest checkpoint")
    model = config.get("model")
    workers = record.workers.get(model, last.get("world_size", 1))
    gpus = record.gpus_per_worker.get(model, 0)
    metric_names = record.metrics or ["eval_loss", *_task_metric_keys(last)]
    return {
        "id": trial.id,
        "status": trial.status,
        "reason": reason,
        "outcome": outcome.kind if outcome else None,
        "model": model,
        "params": int(record.model_params.get(model) or last.get("params") or 0),
        "trainable_params": int(last.get("trainable_params") or 0),
        "lora_rank": config.get("lora_rank"),
        "lora_alpha": config.get("lora_alpha"),
        "data_fraction": config.get("data_fraction", 1.0),
        "lr": config.get("lr"),
        "config": config,
        "objective": _finite(last.get(objective["metric"])) if not reason else None,
        "base_objective": _finite(last.get(f"base_{objective['metric']}")),
        "metrics": {k: _finite(last.get(k)) for k in metric_names if k in last},
        "steps": last.get("step"),
        # Stopped by ASHA before its budget: scored at the step it reached.
        "stopped_early": bool(trial.status == "TERMINATED" and not reason and last.get("total_steps")
                              and (last.get("step") or 0) < last["total_steps"]),
        "train_loss": _finite(last.get("train_loss")),
        "first_train_loss": _finite(trial.results[0].get("train_loss")) if trial.results else None,
        "tokens": last.get("tokens"),
        "train_tokens_per_s": _finite(last.get("train_tokens_per_s")),
        "step_s": _finite(last.get("step_s")),  # median seconds per optimizer step, last interval
        "peak_gpu_mem_gib": _finite(last.get("peak_gpu_mem_gib")),
        # Restarts of the trial's workers after a lost worker.
        "restarts": outcome.restarts if outcome else int(last.get("restarts", 0)),
        "wall_s": _finite(last.get("time_total_s")),
        # What the trial held: GPUs where it had them, else its CPU workers.
        "accelerators": workers * gpus if gpus else workers,
        # None once removed (checkpoints off the frontier are pruned at the end of a sweep).
        "checkpoint": rf.trial_checkpoint(run_dir, trial.id, last.get("checkpoint_path")),
        "trial_dir": trial.trial_dir,
        # Each metric row by row at the last evaluation (the same validation rows for every trial).
        "rows": last.get("eval_rows") if not reason else None,
        "test": _test(trial.trial_dir),
    }


def _test(trial_dir: str) -> dict | None:
    scores = rf.read_test_scores(trial_dir)
    return None if scores is None else {"metrics": scores.metrics, "rows": scores.rows, "n": scores.n, "of": scores.of}


# Keys every report carries that are not task metrics.
_BOOKKEEPING = {"step", "total_steps", "train_loss", "lr", "tokens", "train_tokens_per_s", "train_s", "setup_s", "worker_start_s",
                "step_s", "peak_gpu_mem_gib",
                "params", "trainable_params", "train_examples", "restarts", "diverged", "eval_loss", "eval_s",
                "world_size", "eval_rows", "eval_predictions"}


def _task_metric_keys(result: dict) -> list[str]:
    return [k for k, v in result.items()
            if k not in _BOOKKEEPING and k not in rf.TUNE_LABELS and k not in rf.TUNE_COUNTERS
            and not k.startswith("base_") and isinstance(v, (int, float))]


def _finite(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


# ---- presentation ----------------------------------------------------------------------------
def to_json(run: dict) -> dict:
    keys = ("id", "status", "reason", "model", "params", "trainable_params", "lora_rank", "data_fraction", "lr",
            "objective", "base_objective", "metrics", "wall_s", "accelerators", "tokens", "train_loss",
            "first_train_loss", "restarts", "steps", "stopped_early", "config", "checkpoint", "trial_dir", "outcome")
    return {
        "run_dir": st.redact(run["run_dir"]),
        "objective": run["objective"],
        "trials": [dict({k: t[k] for k in keys}, test=_without_rows(t["test"]), trial_dir=st.redact(t["trial_dir"]),
                        checkpoint=t["checkpoint"] and st.redact(t["checkpoint"])) for t in run["trials"]],
        "frontier": run["frontier"],
    }


def _without_rows(test: dict | None) -> dict | None:
    """Test scores as --json shows them: the metrics and how many rows (per-row parts stay in the folder)."""
    return None if test is None else {k: v for k, v in test.items() if k != "rows"}


def format_table(run: dict, source: str) -> str:
    """The trials with their validation objective; `source`: the scores the front (*) was decided on."""
    obj = run["objective"]
    front = set(run["frontier"])
    head = ["trial", "status", "model", "params", "rank", "data", "lr", obj["metric"], "wall s", "front"]
    rows = []
    order = sorted(run["trials"], key=lambda t: (t["params"], -sign(obj["mode"]) * (t["objective"] or 0)))
    for t in order:
        rows.append([
            t["id"], t["status"] if not t["reason"] else t["reason"].split(":")[0].upper(), t["model"] or "?",
            format_count(t["params"]), str(t["lora_rank"]), f"{t['data_fraction']:g}",
            f"{t['lr']:.2e}" if isinstance(t["lr"], (int, float)) else "-",
            f"{t['objective']:.4f}" if t["objective"] is not None else "-",
            f"{t['wall_s']:.0f}" if t["wall_s"] is not None else "-", "*" if t["id"] in front else "",
        ])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    better = "higher" if obj["mode"] == "max" else "lower"
    lines.append(f"\n{len(rows)} trials; objective {obj['metric']} ({better} is better); "
                 f"* = on the frontier of {obj['metric']} vs parameters, on {source} scores")
    for t in order:
        if t["reason"]:
            lines.append(f"  {t['id']}: {t['reason']}")
    return "\n".join(lines)


# ---- the frontier report ---------------------------------------------------------------------------
# The trial's settings are every TrialConfig field, in its order; "objective" is the validation score,
# "test_objective" the held-out one with its interval; on_front marks the run's one front.
CSV_COLUMNS = ("id", "status", "model", "params", "trainable_params", *(k for k in SETTINGS if k != "model"),
               "objective", "test_objective", "test_lo", "test_hi", "test_rows", "base_objective", "wall_s",
               "accelerators", "tokens", "on_front", "reason")


def build_report(run: dict, target: float | None = None, level: float = 0.95) -> dict:
    """The run's JSON (as `to_json`) with the frontier analysis under "analysis"; `level`: of every interval.

    The trials carry their per-row scores ("rows") and held-out test scores ("test") where the sweep
    kept them; the analysis works without them (no intervals) for older run folders.
    """
    obj = run["objective"]
    out = to_json(run)
    space = run.get("record", {}).get("sweep", {}).get("space", {})
    continuous = {k for k, v in space.items() if isinstance(v, dict) and ("float" in v or "int" in v)}
    # The seed makes repeats, not a setting to rank.
    swept = [k for k in space if k not in ("model", "seed")] or None
    out["analysis"] = analyse(run["trials"], obj["metric"], obj["mode"], target=target, continuous=continuous,
                              settings=swept, level=level)
    return out


def frontier_csv(run: dict, report: dict) -> str:
    """One row per trial; the test interval is the report's (`analysis.intervals`)."""
    import csv
    import io

    metric = run["objective"]["metric"]
    front = set(run["frontier"])
    test_iv = trial_intervals(report["analysis"].get("intervals") or {}, "test")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for t in sorted(run["trials"], key=lambda t: (t["params"], t["id"])):
        iv = test_iv.get(t["id"]) or {}
        # The settings from the config alone: the record's own keys differ in meaning (its "steps" is
        # the step reached, TrialConfig's the budget).
        settings = {k: _cell(t["config"].get(k)) for k in SETTINGS}
        row = {**t, **settings, "test_objective": test_score(t, metric), "test_lo": iv.get("lo"),
               "test_hi": iv.get("hi"), "test_rows": (t.get("test") or {}).get("n"), "on_front": int(t["id"] in front)}
        w.writerow(["" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS])
    return buf.getvalue()


def _cell(v):
    """A setting as one CSV cell: lists (target modules, say) as JSON, not Python's repr."""
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else v


def write_report_files(run: dict, report: dict) -> list[str]:
    """frontier.csv, report.json and the PNGs, into the run folder (local or a storage URI)."""
    import tempfile

    from ftray.results.plots import write_plots

    run_dir = run["run_dir"]
    written = []
    for name, text in (("frontier.csv", frontier_csv(run, report)), ("report.json", json.dumps(report, indent=2))):
        st.write_text(st.join(run_dir, name), text)
        written.append(st.join(run_dir, name))
    obj = run["objective"]
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_plots(run["trials"], obj["metric"], obj["mode"], tmp, run["frontier"]):
            dest = st.join(run_dir, path.rsplit("/", 1)[-1])
            with open(path, "rb") as f:
                st.write_bytes(dest, f.read())
            written.append(dest)
    return written


def format_report(run: dict, report: dict) -> str:
    """The terminal report: the trial table, the scores with their intervals, then the answers."""
    a = report["analysis"]
    metric = run["objective"]["metric"]
    lines = [format_table(run, a["source"])]
    lines += _scores_table(run, a)
    lines += ["", "What the sweep says"]
    lines += [f"  - {v}" for v in a["verdicts"]]
    early = [t for t in run["trials"] if t.get("stopped_early")]
    if early:
        lines.append(f"  - {len(early)} of {len(run['trials'])} trials were stopped early by ASHA; each is scored at the "
                     "step it reached: " + ", ".join(f"{t['id']} ({t['steps']})" for t in early[:8])
                     + (" ..." if len(early) > 8 else ""))
    gains = a["finetune_gain"]
    if gains:
        lines += ["", "Finetuning gain per model size (base model before finetuning -> best trial, validation rows)"]
        for model, g in gains.items():
            base = "?" if g["base"] is None else f"{g['base']:.3g}"
            gain = "" if g["gain"] is None else f"  ({g['gain']:+.3g})"
            lines.append(f"  {model:<24} {format_count(g['params']):>7}  {metric}: {base} -> {g['best']:.3g}{gain}")
    lines += _lever_lines(a["leverage"], a.get("intervals"))
    law = a.get("power_law")
    if law and not law.get("fitted"):  # a fitted law is one of the verdicts above
        lines += ["", f"Finetuning power law (Zhang et al., ICLR 2024): not fitted, {law['reason']}"]
    hv = a["hypervolume"]
    lines += ["", f"Hypervolume of the front: {hv['value']:.4g} (reference {metric}={hv['reference'][0]:.4g}, "
                  f"params={format_count(int(hv['reference'][1]))}; size axis {hv['size_axis']})"]
    if a["failed"]:
        lines += ["", "Trials kept out of the front"]
        lines += [f"  {f['id']}: {f['reason']}" for f in a["failed"]]
    return "\n".join(lines)


def _scores_table(run: dict, a: dict) -> list[str]:
    """Each scored trial's validation score (what selection used) and test score, with intervals."""
    from ftray.results.stats import format_interval

    iv = a.get("intervals") or {}
    if not iv.get("trials") and a.get("source") != "test":
        return []
    metric = run["objective"]["metric"]
    test = a.get("source") == "test"
    valid_iv, test_iv = trial_intervals(iv, "validation"), trial_intervals(iv, "test")
    head = ["trial", "model", "data", f"valid {metric}"] + ([f"test {metric}"] if test else [])
    rows = []
    scored = [t for t in run["trials"] if t["objective"] is not None and not t["reason"]]
    for t in sorted(scored, key=lambda t: (t["params"], t["id"])):
        row = [t["id"], t["model"] or "?", f"{t['data_fraction']:g}",
               format_interval(valid_iv.get(t["id"]), value=t["objective"])]
        if test:
            row.append(format_interval(test_iv.get(t["id"]), value=test_score(t, metric)))
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    level = f"{iv.get('level', 0.95):.0%}"
    out = ["", f"Scores with {level} intervals over rows ({iv.get('method')}, {iv.get('resamples')} draws)"
               + ("; validation chose, test reports" if test else "")]
    out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    return out


def _lever_lines(lev: dict, iv: dict | None) -> list[str]:
    """The ladder steps and data doublings, each with its paired interval and what it says."""
    from ftray.results.stats import format_interval

    def said(step: dict) -> str:
        ans = step.get("answer")
        if not ans or ans == "no interval":
            return ""
        need = step.get("rows_needed")
        return f": {ans}" + (f" (about {need:,} rows would decide)" if ans == "undecided" and need else "")

    lines = []
    if lev["model"]:
        lines += ["", "Each step up the model ladder (best configuration at the same data fraction; paired intervals)"]
        for s in lev["model"]["steps"]:
            lines.append(f"  data {s['data_fraction']:g}: {s['from']} -> {s['to']}: "
                         f"{format_interval(s.get('interval'), True, s['gain'])} at {s['params_ratio']:.1f}x params "
                         f"({s['n_trials']} trials){said(s)}")
    if lev.get("same_size"):
        lines += ["", "Models of the same size (the size's best first: not a step up the ladder; paired intervals)"]
        for s in lev["same_size"]:
            lines.append(f"  data {s['data_fraction']:g}: {s['best']} over {s['other']} at {format_count(s['params'])} params: "
                         f"{format_interval(s.get('interval'), True, s['gain'])} ({s['n_trials']} trials){said(s)}")
    if lev["data"]:
        lines += ["", "Each doubling of the data (slope of the best configuration per fraction, per model)"]
        for model, d in lev["data"]["per_model"].items():
            steps = ", ".join(f"{s['from']:g}->{s['to']:g} {format_interval(s.get('interval'), True, s['gain'])}"
                              for s in d.get("steps", []))
            lines.append(f"  {model}: {format_interval(d.get('interval'), True, d['gain_per_doubling'])} per doubling"
                         f"{said(d)} ({d['n_trials']} trials; {steps})")
    return lines
