"""The run folder: the one module that writes and reads what a sweep leaves on disk (local or a URI).

    RUN_DIR/
      ftray_run.json            RunRecord: the sweep as run, its objective, parameter counts per model
      sweep.py                  the sweep file as run
      <trial folder>/           Ray Tune's own: params.json, result.json (one line per report), error.txt
        ftray_trial.json        TrialRecord: the trial's TrialConfig and its TrialOutcome
      checkpoints/<trial id>/   adapter checkpoints (adapter, tokenizer, trainer state), best by the objective:
                                Train's checkpoint_<time>/, or checkpoint_step_<n>/ of a trial trained in its
                                Tune trial's process (with ftray_checkpoint.json, written last)
      report.json, frontier.csv, *.png

Ray Tune's experiment-state file is read here only (to list the trials and their status); report,
eval and resume go through this module.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Collection

from ftray import storage as st
from ftray.spec.config import TrialConfig
from ftray.errors import FtrayInputError
from ftray.tasks.metrics import sign

RUN_FILE = "ftray_run.json"
SWEEP_COPY = "sweep.py"  # the sweep file as run, so `ftray resume` needs nothing else
TRIAL_FILE = "ftray_trial.json"
TEST_FILE = "ftray_test.json"  # the trial's adapter scored on the task's held-out test rows
CHECKPOINTS = "checkpoints"
STEP_CHECKPOINT = "checkpoint_step_"  # + the step: a checkpoint ftray stored itself (Train names its own by time)
CHECKPOINT_MARK = "ftray_checkpoint.json"  # {"step", "score"}: the last file of such a checkpoint
CONFIRM = "confirm"  # Tune's experiment of the confirmation phase (Search.repeats), inside the run folder
RESULTS = "result.json"  # Tune's: a trial's reports, one JSON line each
HISTORY_FILES = (RESULTS, "progress.csv")  # what Tune's loggers append a trial's reports to
OUTCOMES = ("ok", "diverged", "did-not-fit", "error")
# What Tune and Train add to each of a trial's reports besides ftray's numbers: labels (not metrics, and
# not worth logging) and Tune's own counters and clocks.
TUNE_LABELS = {"config", "trial_id", "experiment_tag", "date", "hostname", "node_ip", "pid", "checkpoint_path",
               "checkpoint_dir_name", "should_checkpoint", "done", "trial_log_path", "experiment_id"}
TUNE_COUNTERS = {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "time_since_restore",
                 "iterations_since_restore", "timesteps_total", "episodes_total", "timesteps_since_restore"}


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: ok, diverged (NaN loss), did-not-fit (out of memory) or error, and why."""

    kind: str
    reason: str | None = None
    restarts: int = 0  # restarts of its workers after a lost worker

    def __post_init__(self):
        if self.kind not in OUTCOMES:
            raise ValueError(f"TrialOutcome.kind must be one of {OUTCOMES}, got {self.kind!r}")

    def describe(self) -> str | None:
        """The reason as the report shows it ("diverged: ..."), or None for a trial that went well."""
        return None if self.kind == "ok" else f"{self.kind}: {self.reason or 'no reason recorded'}"


@dataclass(frozen=True)
class TrialRecord:
    config: TrialConfig
    outcome: TrialOutcome | None = None  # None while the trial runs


@dataclass
class RunRecord:
    """ftray_run.json: what the report needs without the sweep file, and what resume compares."""

    sweep: dict  # Sweep.describe()
    objective: dict  # {"metric": ..., "mode": ...}
    model_params: dict  # parameters per model id, counted once on the driver
    workers: dict  # workers per model id (one trains in its Tune trial's process)
    gpus_per_worker: dict
    metrics: list = field(default_factory=list)  # what each evaluation reports: eval_loss and the task's
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    resumed: list = field(default_factory=list)
    sweep_file: str | None = None
    resources: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> RunRecord:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


# ---- the run record ------------------------------------------------------------------------------
def read_record(run_dir: str) -> RunRecord | None:
    path = st.join(run_dir, RUN_FILE)
    if not st.is_file(path):
        return None
    try:
        return RunRecord.from_json(json.loads(st.read_text(path)))
    except (json.JSONDecodeError, TypeError):
        raise FtrayInputError(f"{_shown(path)} is not a valid run record: the run folder is damaged") from None


def require_record(run_dir: str) -> RunRecord:
    record = read_record(run_dir)
    if record is None:
        what = f"is not an ftray run folder (no {RUN_FILE})" if st.exists(run_dir) else "does not exist"
        raise FtrayInputError(f"{_shown(run_dir)} {what}; pass the folder that `ftray run` printed")
    return record


def write_record(run_dir: str, record: RunRecord) -> None:
    st.write_text(st.join(run_dir, RUN_FILE), json.dumps(asdict(record), indent=2))


def copy_sweep_file(run_dir: str, sweep_file: str) -> None:
    with open(sweep_file, encoding="utf-8") as f:
        st.write_text(st.join(run_dir, SWEEP_COPY), f.read())


def free_name(storage: str, name: str) -> str:
    """NAME-2, NAME-3, ...: the first run folder name not taken under `storage`."""
    i = 2
    while st.exists(st.join(storage, f"{name}-{i}")):
        i += 1
    return f"{name}-{i}"


def sweep_of_run(run_dir: str):
    """The sweep a run folder was made by, rebuilt from its record where that is data.

    A sweep whose task (or a search-space function) is defined in Python can only be rebuilt by
    running its sweep file's code: the file where it still is, else the copy in the run folder."""
    from ftray.spec.sweep import Sweep
    from ftray.spec.sweepfile import load_sweep

    record = require_record(run_dir)
    sweep = Sweep.from_description(record.sweep)
    if sweep is not None:
        return sweep
    if record.sweep_file and os.path.isfile(record.sweep_file):
        print(f"ftray: the sweep's task is defined in Python: loading {record.sweep_file} (this runs its code)",
              flush=True)
        return load_sweep(record.sweep_file)
    if not st.is_file(st.join(run_dir, SWEEP_COPY)):
        raise FtrayInputError(f"{_shown(run_dir)}: the sweep's task is defined in Python and no sweep file was kept; "
                              "run it again with `ftray run SWEEP.py --name NAME`")
    print(f"ftray: the sweep's task is defined in Python: loading the copy of the sweep file kept in the run "
          f"folder ({SWEEP_COPY}); this runs its code", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        sweep_path = os.path.join(tmp, SWEEP_COPY)
        with open(sweep_path, "w", encoding="utf-8") as f:
            f.write(st.read_text(st.join(run_dir, SWEEP_COPY)))
        return load_sweep(sweep_path)


# ---- trials --------------------------------------------------------------------------------------
def write_trial(trial_dir: str, record: TrialRecord) -> None:
    data = {"config": record.config.to_dict(), "outcome": asdict(record.outcome) if record.outcome else None}
    st.write_text(st.join(trial_dir, TRIAL_FILE), json.dumps(data, indent=2))


def read_trial(trial_dir: str) -> TrialRecord | None:
    data = _read_json(st.join(trial_dir, TRIAL_FILE))
    if not data:
        return None
    outcome = TrialOutcome(**data["outcome"]) if data.get("outcome") else None
    return TrialRecord(TrialConfig.from_dict(data["config"]), outcome)


@dataclass(frozen=True)
class TestScores:
    """A trial's adapter scored on held-out test rows: `n` of the split's `of`, a seeded subset, the same for
    every trial."""

    metrics: dict
    rows: dict  # metric -> [[num, den], ...] per row: the metric is sum(num) / sum(den)
    n: int
    of: int
    checkpoint: str  # which of the trial's checkpoints was scored


def write_test_scores(trial_dir: str, scores: TestScores) -> None:
    st.write_text(st.join(trial_dir, TEST_FILE), json.dumps(asdict(scores)))


def read_test_scores(trial_dir: str) -> TestScores | None:
    data = _read_json(st.join(trial_dir, TEST_FILE))
    return TestScores(**data) if data else None


@dataclass(frozen=True)
class TuneTrial:
    """A trial as Ray Tune left it: its id, status, folder, reported results and sampled values."""

    id: str
    status: str  # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    trial_dir: str
    results: list = field(default_factory=list)  # every report, oldest first
    params: dict = field(default_factory=dict)  # what was sampled (Tune's params.json)
    record: TrialRecord | None = None

    @property
    def last(self) -> dict[str, Any]:
        return self.results[-1] if self.results else {}


def tune_trials(run_dir: str) -> list[TuneTrial]:
    """The trials of a run (the search's, then the confirmation phase's), from Tune's latest
    experiment-state file of each and each trial's folder."""
    return _experiment_trials(run_dir) + _experiment_trials(st.join(run_dir, CONFIRM))


# Tune rewrites its experiment-state file in place while a sweep runs; synced to object storage, a reader
# can catch it part-written. Read again after a pause, this many times, before giving up.
STATE_READS = 5
STATE_REREAD_S = 1.0


def _experiment_state(experiment_dir: str) -> dict | None:
    """Tune's newest whole experiment state: a part-written newest file gives way to an older whole one,
    else it is read again after a pause; either is said on stderr."""
    for attempt in range(STATE_READS):
        states = sorted((n for n in st.list_names(experiment_dir)
                         if n.startswith("experiment_state-") and n.endswith(".json")), reverse=True)
        if not states:
            return None
        for i, name in enumerate(states):
            try:
                data = json.loads(st.read_text(st.join(experiment_dir, name)))
            except (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError):
                continue  # caught mid-write (or replaced between the listing and the read)
            if i or attempt:
                print(f"ftray: Tune's experiment state {name} read "
                      + (f"instead of the newer {states[0]}, which was part-written" if i else
                         f"on try {attempt + 1}: it was part-written before"), file=sys.stderr, flush=True)
            return data
        time.sleep(STATE_REREAD_S)
    raise FtrayInputError(f"{st.redact(experiment_dir)}: Tune's experiment state stayed part-written over "
                          f"{STATE_READS} reads {STATE_REREAD_S:g} s apart: is something still writing it?")


def trial_statuses(experiment_dir: str) -> list[str]:
    """Each trial's status in Tune's latest stored experiment state (none before Tune has stored one).
    After a Ctrl-C these are what a resume goes on from: the stopped trials as they were before Tune
    stopped them (in memory it marks them TERMINATED)."""
    data = _experiment_state(experiment_dir)
    return [] if data is None else [(json.loads(s) if isinstance(s, str) else s)["status"] for s, _ in data["trial_data"]]


def _experiment_trials(experiment_dir: str) -> list[TuneTrial]:
    # Tune's experiment-state format: "trial_data" holds [state, metadata] pairs, each a dict or its JSON
    # (state: trial_id, status, relative_logdir; metadata: last_result). Checked against Ray 2.60; listed
    # in ftray/raypatches.py's docstring.
    data = _experiment_state(experiment_dir)
    if data is None:
        return []
    out = []
    for state, meta in data["trial_data"]:
        state = json.loads(state) if isinstance(state, str) else state
        meta = json.loads(meta) if isinstance(meta, str) else meta
        trial_dir = st.join(experiment_dir, state["relative_logdir"])
        results = _read_jsonl(st.join(trial_dir, RESULTS)) or ([meta["last_result"]] if meta.get("last_result") else [])
        out.append(TuneTrial(state["trial_id"], state["status"], trial_dir, results,
                             _read_json(st.join(trial_dir, "params.json")) or {}, read_trial(trial_dir)))
    return sorted(out, key=lambda t: t.id)


def trial_checkpoints(run_dir: str, trial_id: str) -> str:
    return st.join(run_dir, CHECKPOINTS, trial_id)


def trial_checkpoint(run_dir: str, trial_id: str, reported: str | None) -> str | None:
    """The trial's checkpoint: the one its last report names where it is still there, else the newest
    kept (a trial restored from its final checkpoint reports again without saving a new one; a trial
    stopped by ASHA can report one that retention then deleted). Checkpoints are Train's
    checkpoint_<time> folders (its checkpoint_manager_snapshot.json beside them is not one) or ftray's
    own checkpoint_step_<n>, whole when marked."""
    if reported:
        path = st.uri_of(run_dir, reported)
        if st.exists(path):
            return path
    folder = trial_checkpoints(run_dir, trial_id)
    kept = [n for n in st.list_names(folder, folders_only=True) if n.startswith("checkpoint_")
            and (not n.startswith(STEP_CHECKPOINT) or st.exists(st.join(folder, n, CHECKPOINT_MARK)))]
    return st.join(folder, max(kept)) if kept else None


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint ftray stored itself (a one-worker trial trained in its Tune trial, trial.py)."""

    path: str
    step: int
    score: float | None  # the objective at that step
    # The report made with it (older checkpoints have none); not part of its identity: the same
    # checkpoint saved again (a trial resumed at its final step reports and saves again) is the same one.
    report: dict | None = field(default=None, compare=False, repr=False)


def stored_checkpoint_path(run_dir: str, trial_id: str, step: int) -> str:
    return st.join(trial_checkpoints(run_dir, trial_id), f"{STEP_CHECKPOINT}{step:06d}")


def store_checkpoint(run_dir: str, trial_id: str, local_dir: str, step: int, score: float | None,
                     report: dict | None = None) -> StoredCheckpoint:
    """Copy a checkpoint folder to the trial's checkpoints, where Train keeps those of larger trials;
    its mark, written last, says the copy is whole, and holds the report made with it."""
    path = stored_checkpoint_path(run_dir, trial_id, step)
    st.upload_tree(local_dir, path)
    st.write_text(st.join(path, CHECKPOINT_MARK), json.dumps({"step": step, "score": score, "report": report}))
    return StoredCheckpoint(path, step, score, report)


def stored_checkpoints(run_dir: str, trial_id: str) -> list[StoredCheckpoint]:
    """The whole checkpoints ftray stored for a trial, oldest first. A copy cut short (its process died
    during the upload) has no mark: it is removed, so nothing takes it for the newest. Train's own
    checkpoints (of a run made with Train for this trial) are left alone."""
    folder = trial_checkpoints(run_dir, trial_id)
    out = []
    for name in st.list_names(folder, folders_only=True):
        if not name.startswith(STEP_CHECKPOINT):
            continue
        mark = st.join(folder, name, CHECKPOINT_MARK)
        if not st.exists(mark):
            st.remove_tree(st.join(folder, name))
            continue
        data = json.loads(st.read_text(mark))  # an error reading it is raised, not taken for a cut copy
        out.append(StoredCheckpoint(st.join(folder, name), int(data["step"]), data["score"], data.get("report")))
    return sorted(out, key=lambda c: c.step)


def recorded_steps(trial_dir: str) -> set[int]:
    """The steps of the reports Tune recorded for a trial (its stored result.json)."""
    return {int(r["step"]) for r in _read_jsonl(st.join(trial_dir, RESULTS)) if "step" in r}


def unrecorded(report: dict | None, recorded: Collection[int] | None) -> dict | None:
    """The report made with the checkpoint a resumed trial goes on from, where Tune never recorded it
    (after Ctrl-C or a lost driver the trial may have trained on and saved one more): the trial reports it
    again first, or that step would be missing from its history for good. Not the final step's: the
    recipe makes that report again itself (LoRARecipe.train)."""
    if report is None or recorded is None or report.get("step") in recorded:
        return None
    return None if report["step"] == report.get("total_steps") else report


def drop_checkpoints(kept: list[StoredCheckpoint], keep: int, mode: str) -> list[StoredCheckpoint]:
    """Keep the `keep` best by the objective and the latest (a resumed trial goes on from it), as Train's
    CheckpointConfig does: a missing or NaN score ranks last, and of equal scores the later one wins.
    Remove the others, mark first (so a removal cut short leaves no folder that looks whole). Returns
    what is kept, oldest first."""
    def rank(c: StoredCheckpoint) -> tuple:
        scored = c.score is not None and not math.isnan(c.score)
        return (scored, sign(mode) * c.score if scored else 0.0, c.step)

    best = sorted(kept, key=rank, reverse=True)[:keep]
    latest = max(kept, key=lambda c: c.step, default=None)
    stays = [c for c in kept if c in best or c is latest]
    for c in kept:
        if c not in stays:
            st.remove_file(st.join(c.path, CHECKPOINT_MARK))
            st.remove_tree(c.path)
    return stays


def prune_checkpoints(run_dir: str, keep: set[str], trials: list[TuneTrial]) -> list[str]:
    """Delete the checkpoints of finished trials not in `keep` (whole-sweep checkpoints fill disks).
    An errored trial keeps its own: `ftray resume --resume-errored` continues it from them (a lost
    process, or a bug in the user's code fixed since); an unfinished one is continued by any resume."""
    removed = []
    for t in trials:
        if t.id not in keep and t.status == "TERMINATED":
            path = trial_checkpoints(run_dir, t.id)
            if st.exists(path):
                st.remove_tree(path)
                removed.append(t.id)
    return removed


def _shown(path: str) -> str:
    return st.redact(path)


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
