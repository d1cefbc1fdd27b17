"""The searcher: Optuna over a define-by-run space written from the sweep's Tune space.

The Tuner that uses it is ftray/driver/tuner.py; the scheduler beside it, ftray/driver/schedulers.py.
"""

from __future__ import annotations

import warnings
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from ftray import raypatches
from ftray.spec.space import is_domain
from ftray.spec.sweep import Sweep


class DefineByRun:
    """The Optuna search space, written from the sweep's Tune space.

    Trial number i takes cell i of the cycle over the ladder (with round-robin model sampling) and
    over every `tune.grid_search` in the space (Sweep.grid_cells), so each rung and grid point gets its
    share of the trials; Optuna samples the rest. Settings in `per_model` (the learning rate, by
    default) are suggested under a name per model ("lr/tiny-m"), so Optuna learns a separate value for
    each size.
    The values a trial uses are returned under their plain names, which is what Tune, W&B and the
    report see.
    """

    def __init__(self, sweep: Sweep):
        self.space = dict(sweep.space)
        self.per_model = tuple(sweep.search.per_model)
        self.cells = sweep.grid_cells()
        self.distributions = OptunaSearch.convert_search_space(
            {k: v for k, v in self.space.items() if is_domain(v) and k not in self.cells[0]}
        )

    def __call__(self, trial) -> dict:
        out: dict[str, Any] = dict(self.cells[trial.number % len(self.cells)])
        if "model" not in out:
            model = self.space["model"]
            out["model"] = self._suggest(trial, "model", self.distributions["model"]) if is_domain(model) else model
        for key, value in self.space.items():
            if key in out:
                continue
            if key in self.distributions:
                name = f"{key}/{out['model']}" if key in self.per_model else key
                out[key] = self._suggest(trial, name, self.distributions[key])
            else:
                out[key] = value
        return out

    @staticmethod
    def _suggest(trial, name, dist):
        import optuna.distributions as od

        if isinstance(dist, od.CategoricalDistribution):
            return trial.suggest_categorical(name, dist.choices)
        if isinstance(dist, od.IntDistribution):
            return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def sampler(sweep: Sweep):
    """Optuna's sampler for the sweep: TPE (seeded), or the random sampler for search="random"."""
    import optuna

    seed = sweep.trial.seed
    if sweep.search.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, sweep.search.num_trials // 3)))


class _OptunaSearch(OptunaSearch):
    # A report without the objective (a trial that diverged stops before its evaluation) is not a
    # point on its learning curve: Tune's OptunaSearch would fail on the missing key. The trial's end
    # still reaches Optuna, as pruned. A trial Optuna never suggested is not Optuna's to hear of (why:
    # raypatches.optuna_suggested).
    def on_trial_result(self, trial_id, result):
        if self.metric in result and raypatches.optuna_suggested(self, trial_id):
            with warnings.catch_warnings():
                # A resumed trial's reports count Tune's iterations from 1 again, the step Optuna keys a
                # learning curve by; only pruners read those values, and ftray's search uses none.
                warnings.filterwarnings("ignore", message="The reported value is ignored because this")
                super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        if raypatches.optuna_suggested(self, trial_id):
            super().on_trial_complete(trial_id, result, error)


def searcher(sweep: Sweep):
    """Optuna over the define-by-run space (Tune's random search would not know the ladder's cycle)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study created: ftray says what runs
    return _OptunaSearch(space=DefineByRun(sweep), metric=sweep.objective, mode=sweep.mode, sampler=sampler(sweep))
