"""Read a run folder back (Tune's own files, no Ray needed) and present it: table and JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ftray.results import runfolder as rf
from ftray import storage as st
from ftray.spec.config import SETTINGS
from ftray.results.frontier import analyse, decide_front, trial_intervals
from ftray.tasks.metrics import sign
from ftray.results.digits import format_count
from ftray.results.trialresult import TrialResult, load_trials


@dataclass(frozen=True)
class LoadedRun:
    """A run as read back from its folder: what the report, the W&B summary, held-out scoring, `ftray eval`
    and `ftray compare` read."""

    run_dir: str  # where to read and write; shown through st.redact
    metric: str  # the objective
    mode: str  # "max" or "min"
    trials: tuple[TrialResult, ...]
    frontier: list[str]  # the one front (`decide_front`: on test scores where every scored trial has them)
    record: rf.RunRecord | None = None  # ftray_run.json; None for a run made up in a test

    @property
    def objective(self) -> dict:
        return {"metric": self.metric, "mode": self.mode}

    @property
    def sweep(self) -> dict:
        """The sweep as recorded (`Sweep.describe()`); empty where there is no record."""
        return self.record.sweep if self.record else {}

    def to_json(self) -> dict:
        return {"run_dir": st.redact(self.run_dir), "objective": self.objective,
                "trials": [t.to_json() for t in self.trials], "frontier": self.frontier}


def load_run(run_dir: str) -> LoadedRun:
    """The run in its folder, its trials as `TrialResult`s and its one front decided.

    `run_dir` is a local folder or a storage URI (s3://, gs://, file://, ...).
    """
    run_dir = st.normalize(run_dir)
    record = rf.require_record(run_dir)
    trials = tuple(load_trials(run_dir, record))
    metric, mode = record.objective["metric"], record.objective["mode"]
    return LoadedRun(run_dir, metric, mode, trials, decide_front(trials, metric, mode), record)


# ---- presentation ----------------------------------------------------------------------------
def format_table(run: LoadedRun, source: str) -> str:
    """The trials with their validation objective; `source`: the scores the front (*) was decided on."""
    front = set(run.frontier)
    head = ["trial", "status", "model", "params", "rank", "data", "lr", run.metric, "wall s", "front"]
    rows = []
    order = sorted(run.trials, key=lambda t: (t.params, -sign(run.mode) * (t.objective or 0)))
    for t in order:
        rows.append([
            t.id, t.status if not t.reason else t.reason.split(":")[0].upper(), t.model or "?",
            format_count(t.params), str(t.lora_rank), f"{t.data_fraction:g}",
            f"{t.lr:.2e}" if isinstance(t.lr, (int, float)) else "-",
            f"{t.objective:.4f}" if t.objective is not None else "-",
            f"{t.wall_s:.0f}" if t.wall_s is not None else "-", "*" if t.id in front else "",
        ])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    better = "higher" if run.mode == "max" else "lower"
    lines.append(f"\n{len(rows)} trials; objective {run.metric} ({better} is better); "
                 f"* = on the frontier of {run.metric} vs parameters, on {source} scores")
    for t in order:
        if t.reason:
            lines.append(f"  {t.id}: {t.reason}")
    return "\n".join(lines)


# ---- the frontier report ---------------------------------------------------------------------------
# The trial's settings are every TrialConfig field, in its order; "objective" is the validation score,
# "test_objective" the held-out one with its interval; on_front marks the run's one front.
CSV_COLUMNS = ("id", "status", "model", "params", "trainable_params", *(k for k in SETTINGS if k != "model"),
               "objective", "test_objective", "test_lo", "test_hi", "test_rows", "base_objective", "wall_s",
               "accelerators", "tokens", "on_front", "reason")


def build_report(run: LoadedRun, target: float | None = None, level: float = 0.95) -> dict:
    """The run's JSON (as `to_json`) with the frontier analysis under "analysis"; `level`: of every interval.

    The trials carry their per-row scores ("rows") and held-out test scores ("test") where the sweep
    kept them; the analysis works without them (no intervals) for older run folders.
    """
    out = run.to_json()
    space = run.sweep.get("space", {})
    continuous = {k for k, v in space.items() if isinstance(v, dict) and ("float" in v or "int" in v)}
    # The seed makes repeats, not a setting to rank.
    swept = [k for k in space if k not in ("model", "seed")] or None
    out["analysis"] = analyse(run.trials, run.metric, run.mode, target=target, continuous=continuous,
                              settings=swept, level=level)
    return out


def frontier_csv(run: LoadedRun, report: dict) -> str:
    """One row per trial; the test interval is the report's (`analysis.intervals`)."""
    import csv
    import io

    metric = run.metric
    front = set(run.frontier)
    test_iv = trial_intervals(report["analysis"].get("intervals") or {}, "test")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for t in sorted(run.trials, key=lambda t: (t.params, t.id)):
        iv = test_iv.get(t.id) or {}
        # The settings from the config alone: the trial's own fields differ in meaning (its "steps" is
        # the step reached, TrialConfig's the budget).
        settings = {k: _cell(t.config.get(k)) for k in SETTINGS}
        row = {"id": t.id, "status": t.status, "model": t.model, "params": t.params,
               "trainable_params": t.trainable_params, **settings, "objective": t.objective,
               "test_objective": t.test_score(metric), "test_lo": iv.get("lo"), "test_hi": iv.get("hi"),
               "test_rows": t.test.n if t.test else None, "base_objective": t.base_objective, "wall_s": t.wall_s,
               "accelerators": t.accelerators, "tokens": t.tokens, "on_front": int(t.id in front), "reason": t.reason}
        w.writerow(["" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS])
    return buf.getvalue()


def _cell(v):
    """A setting as one CSV cell: lists (target modules, say) as JSON, not Python's repr."""
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else v


def write_report_files(run: LoadedRun, report: dict) -> list[str]:
    """frontier.csv, report.json and the PNGs, into the run folder (local or a storage URI)."""
    import tempfile

    from ftray.results.plots import write_plots

    run_dir = run.run_dir
    written = []
    for name, text in (("frontier.csv", frontier_csv(run, report)), ("report.json", json.dumps(report, indent=2))):
        st.write_text(st.join(run_dir, name), text)
        written.append(st.join(run_dir, name))
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_plots(run.trials, run.metric, run.mode, tmp, run.frontier):
            dest = st.join(run_dir, path.rsplit("/", 1)[-1])
            with open(path, "rb") as f:
                st.write_bytes(dest, f.read())
            written.append(dest)
    return written


def format_report(run: LoadedRun, report: dict) -> str:
    """The terminal report: the trial table, the scores with their intervals, then the answers."""
    a = report["analysis"]
    metric = run.metric
    lines = [format_table(run, a["source"])]
    lines += _scores_table(run, a)
    lines += ["", "What the sweep says"]
    going = [t for t in run.trials if not t.ended]
    if going:  # `ftray report` on a sweep still running, or interrupted
        planned = ((run.record.sweep.get("search") or {}).get("num_trials") if run.record else None)
        lines.append(f"  - the sweep is not done: {len(going)} of the {len(run.trials)} trials so far have not ended"
                     + (f" ({planned} planned)" if planned else "") + "; what follows reads those that have")
    if run.mode == "min":  # the gains below are signed as in a score to maximise
        lines.append(f"  - {metric}: lower is better, so every gain below is signed + for a fall in {metric}")
    lines += [f"  - {v}" for v in a["verdicts"]]
    early = [t for t in run.trials if t.stopped_early]
    if early:
        lines.append(f"  - {len(early)} of {len(run.trials)} trials were stopped early by ASHA; each is scored at the "
                     "step it reached: " + ", ".join(f"{t.id} ({t.steps})" for t in early[:8])
                     + (" ..." if len(early) > 8 else ""))
    gains = a["finetune_gain"]
    if gains:
        lines += ["", "Finetuning gain per model size (base model before finetuning -> best trial, validation rows)"]
        for model, g in gains.items():
            base = "?" if g["base"] is None else f"{g['base']:.3g}"
            gain = "" if g["gain"] is None else f"  ({g['gain']:+.3g})"
            lines.append(f"  {model:<24} {format_count(g['params']):>7}  {metric}: {base} -> {g['best']:.3g}{gain}")
    lines += _lever_lines(a["leverage"])
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


def _scores_table(run: LoadedRun, a: dict) -> list[str]:
    """Each scored trial's validation score (what selection used) and test score, with intervals."""
    from ftray.results.digits import format_interval

    iv = a.get("intervals") or {}
    if not iv.get("trials") and a.get("source") != "test":
        return []
    metric = run.metric
    test = a.get("source") == "test"
    valid_iv, test_iv = trial_intervals(iv, "validation"), trial_intervals(iv, "test")
    head = ["trial", "model", "data", f"valid {metric}"] + ([f"test {metric}"] if test else [])
    rows = []
    for t in sorted((t for t in run.trials if t.scored), key=lambda t: (t.params, t.id)):
        row = [t.id, t.model or "?", f"{t.data_fraction:g}",
               format_interval(valid_iv.get(t.id), value=t.objective)]
        if test:
            row.append(format_interval(test_iv.get(t.id), value=t.test_score(metric)))
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    level = f"{iv.get('level', 0.95):.0%}"
    intervals = (f"with {level} intervals over rows ({iv.get('method')}, {iv.get('resamples')} draws)" if iv.get("trials")
                 else f"(no intervals: {metric} has no per-row scores)")
    out = ["", f"Scores {intervals}" + ("; validation chose, test reports" if test else "")]
    out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    return out


def _lever_lines(lev: dict) -> list[str]:
    """The ladder steps and data doublings, each with its paired interval (where the scores have per-row
    parts) and what it says."""
    from ftray.results.digits import format_interval

    def paired(items: list[dict]) -> str:
        return "; paired intervals" if any((s.get("interval") or {}).get("lo") is not None for s in items) else ""

    def said(step: dict) -> str:
        ans = step.get("answer")
        if not ans or ans == "no interval":
            return ""
        need = step.get("rows_needed")
        return f": {ans}" + (f" (about {need:,} rows would decide)" if ans == "undecided" and need else "")

    lines = []
    if lev["model"]:
        lines += ["", "Each step up the model ladder (best configuration at the same data fraction"
                      f"{paired(lev['model']['steps'])})"]
        for s in lev["model"]["steps"]:
            lines.append(f"  data {s['data_fraction']:g}: {s['from']} -> {s['to']}: "
                         f"{format_interval(s.get('interval'), True, s['gain'])} at {s['params_ratio']:.1f}x params "
                         f"({s['n_trials']} trials){said(s)}")
    if lev.get("same_size"):
        lines += ["", f"Models of the same size (the size's best first: not a step up the ladder{paired(lev['same_size'])})"]
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
