"""A run folder, new or resumed: which folder a sweep runs in, the sweep as the recorded run ran, and the
reports a resumed trial had made.

What the run folder holds is ftray/results/runfolder.py; the Tuner that restores a run, ftray/driver/tuner.py.
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from typing import Mapping

from ray.tune import Callback

from ftray import raypatches
from ftray import storage as st
from ftray.errors import FtrayInputError
from ftray.results import runfolder as rf
from ftray.spec.sweep import Sweep, diff_descriptions


def run_folder(sweep: Sweep, storage: str, name: str, resume: bool,
               new_run: bool) -> tuple[str, rf.RunRecord | None, Sweep]:
    """The run folder to use, its record when the same sweep already ran there (then it resumes), and
    the sweep to run (as_recorded, when it resumes).

    A run folder holding a *different* sweep definition is never mixed with this one: that is refused
    with what changed, unless `new_run` asks for a fresh folder (name-2, name-3, ...).
    """
    run_dir = st.join(storage, name)
    previous = rf.read_record(run_dir)
    if previous is None:
        if resume:
            rf.require_record(run_dir)
        return run_dir, None, sweep
    resumed, recorded = as_recorded(sweep, previous.sweep)
    changes = diff_descriptions(recorded, resumed.describe())
    if changes and new_run:
        return st.join(storage, rf.free_name(storage, name)), None, sweep
    if changes:
        raise FtrayInputError(
            f"{st.redact(run_dir)} holds a run of a different sweep definition, so it cannot be resumed with this one. "
            f"Changed: {'; '.join(changes[:8])}{' ...' if len(changes) > 8 else ''}. "
            "Use --name for another run folder, or --new-run to get one"
        )
    return run_dir, previous, resumed


# Settings added to ftray since a run may have been made, with the value that reproduces how such a
# run ran: resumed by a newer ftray, it goes on as it started.
AS_BEFORE = {("scaling", "one_worker_in_trial"): False, ("scaling", "gpu_memory_gb"): None,
             ("trial", "pack_length"): None, ("trial", "batch_tokens"): None, ("trial", "fused_loss"): "off",
             ("trial", "compile"): False}


def as_recorded(sweep: Sweep, recorded: Mapping) -> tuple[Sweep, dict]:
    """`sweep` and the recorded run's description (`describe()`), each setting of AS_BEFORE that the run
    predates set in both as the run ran."""
    sweep, recorded = copy.copy(sweep), copy.deepcopy(dict(recorded))
    for (group, key), value in AS_BEFORE.items():
        if key not in recorded[group]:
            recorded[group][key] = value
            setattr(sweep, group, replace(getattr(sweep, group), **{key: value}))
    return sweep, recorded


class KeepHistory(Callback):
    """A resumed trial goes on appending to the history it had reported.

    Tune's loggers append a trial's reports to a file in the driver's staging folder, which replaces
    the stored one at each sync; on a resume they fetch the stored file first only for a trial Tune
    holds a checkpoint of. ftray's trials keep their checkpoints themselves (Train's run, or ftray in
    the trial's process), so a resumed trial's earlier reports were lost. This fetches them (Tune runs
    a sweep's own callbacks before its loggers)."""

    def on_trial_start(self, iteration, trials, trial, **info):
        import pyarrow.fs

        fs, stored = raypatches.trial_storage(trial)
        for name in rf.HISTORY_FILES:
            local = os.path.join(trial.local_path, name)
            if os.path.exists(local):  # this trial has started before in this session
                continue
            if fs.get_file_info(f"{stored}/{name}").type == pyarrow.fs.FileType.File:
                os.makedirs(trial.local_path, exist_ok=True)
                pyarrow.fs.copy_files(f"{stored}/{name}", local, source_filesystem=fs)
