"""Early stopping for frontier sweeps: ASHA with one set of rungs per model size.

Tune's ASHA compares every trial at a rung with every other. In a sweep over model sizes the small
models lose those comparisons by design, so it stops them first, and the sweep learns little about
the small end of the ladder, which is the part a frontier is for. Here each model keeps its own
rungs: a trial is stopped only when trials of the *same* model did better at the same step.
(bench/run.py replays both on a grid's learning curves: `search_compute_ratio_with_asha*`.)

Tune saves a searcher's state for `Tuner.restore` but not a scheduler's: a resumed sweep would
start with empty rungs and judge its next trials against nothing. So when a restored trial is added,
the results it had reported are read back from its folder into the rungs.

Every sweep's scheduler (ASHA or none) also keeps a failed trial's ERROR on record (`FIFOKeepingErrors`).
`scheduler(sweep)` picks the sweep's. Ray's internals used here are in ftray/raypatches.py.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

from ftray import raypatches
from ftray.results import runfolder as rf

if TYPE_CHECKING:
    from ftray.spec.sweep import Sweep


class FIFOKeepingErrors(FIFOScheduler):
    """Tune's first-in-first-out scheduler, with a trial's ERROR kept in the experiment's state.

    A trial whose process died would otherwise stay RUNNING in Tune's experiment-state file (why:
    raypatches.mark_trial_for_snapshot). Tune calls `on_trial_error` just before it sets ERROR, so the
    mark is made here."""

    def on_trial_error(self, tune_controller, trial):
        raypatches.mark_trial_for_snapshot(tune_controller, trial)
        super().on_trial_error(tune_controller, trial)


class PerModelASHA(FIFOKeepingErrors):
    def __init__(self, metric: str, mode: str, grace_period: int, reduction_factor: float, max_t: int,
                 time_attr: str = "step", per_model: bool = True):
        super().__init__()
        FIFOScheduler.set_search_properties(self, metric, mode)  # Tune reads it as `self.metric`
        self._asha = dict(metric=metric, mode=mode, time_attr=time_attr, grace_period=grace_period,
                          reduction_factor=reduction_factor, max_t=max_t)
        self._per_model = per_model
        self._by_group: dict = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        # The sweep named the metric and mode (which may differ from the objective's): ours stand.
        return True

    def _scheduler(self, trial) -> AsyncHyperBandScheduler:
        group = trial.config.get("model") if self._per_model else None
        if group not in self._by_group:
            self._by_group[group] = AsyncHyperBandScheduler(**self._asha)
        return self._by_group[group]

    def on_trial_add(self, tune_controller, trial):
        scheduler = self._scheduler(trial)
        scheduler.on_trial_add(tune_controller, trial)
        for result in _reported(trial):  # empty for a new trial
            if self._asha["time_attr"] in result and self.metric in result:
                raypatches.asha_replay_result(scheduler, trial, result[self._asha["time_attr"]], result[self.metric])

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._scheduler(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict):
        self._scheduler(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial):
        super().on_trial_error(tune_controller, trial)
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial):
        scheduler = self._scheduler(trial)
        if raypatches.asha_holds(scheduler, trial):
            scheduler.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        stopped = sum(raypatches.asha_stopped(s) for s in self._by_group.values())
        return f"ASHA{' per model' if self._per_model else ''}: {stopped} trials stopped early"


def _reported(trial) -> list[dict]:
    """The results a trial reported before a resume, from its result.json (local or a URI)."""
    if not getattr(trial, "has_reported_at_least_once", False):  # a new trial: no results, no folder yet
        return []
    try:
        fs, stored = raypatches.trial_storage(trial)
        path = os.path.join(stored, rf.RESULTS)
        with fs.open_input_stream(path) as f:
            text = f.read().decode()
    except (RuntimeError, OSError):  # no trial folder (RuntimeError from Ray), or no results in it
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def scheduler(sweep: Sweep):
    """The sweep's Tune scheduler: ASHA per model size where asked, else FIFOKeepingErrors."""
    asha = sweep.search.asha
    if asha is None:
        return FIFOKeepingErrors()

    return PerModelASHA(
        metric=asha.metric or sweep.objective, mode=sweep.asha_mode(), grace_period=asha.grace_steps,
        reduction_factor=asha.reduction_factor, max_t=sweep.trial.steps or 10**9, per_model=asha.per_model,
    )
