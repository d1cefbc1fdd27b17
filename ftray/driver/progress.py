"""What a sweep prints while it runs: one line as each trial starts and one as it ends, in place of Tune's
tables (about 380 lines for the nine quickstart trials, above the report); and Tune's TensorBoard logger
given the numbers only. The trials' own lines (loading, evaluation, step and loss) come from the recipe."""

from __future__ import annotations

from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback
from ray.tune.progress_reporter import TrialProgressCallback

from ftray.checks import is_number
from ftray.results.trialresult import wall_seconds


def describe(params: dict) -> str:
    """A trial's sampled settings in one line, its model first: "tiny-m, lora_rank=16, lr=0.0053"."""
    shown = [str(params["model"])] if "model" in params else []
    for key, value in params.items():
        if key != "model":
            shown.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(shown)


class TrialLines(Callback):
    """A line when a trial starts and when it ends: its settings; then its objective, steps and time, and
    how many of the sweep's trials have ended."""

    def __init__(self, trials: int, metric: str):
        self.trials, self.metric = trials, metric

    def on_trial_start(self, iteration, trials, trial, **info):
        print(f"ftray: trial {trial.trial_id} started: {describe(trial.config)}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        value = last.get(self.metric)
        score = f"{self.metric} {value:.3g}" if is_number(value) else f"no {self.metric} (the report says why)"
        steps = f" at step {last['step']}/{last['total_steps']}" if "step" in last and "total_steps" in last else ""
        wall = wall_seconds(last)
        seconds = f", {wall:.0f} s" if wall is not None else ""
        print(f"ftray: trial {trial.trial_id} ended: {score}{steps}{seconds}; {self._ended(trials, trial)}",
              flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"ftray: trial {trial.trial_id} failed (the report says why); {self._ended(trials, trial)}",
              flush=True)

    def _ended(self, trials, trial) -> str:
        done = 1 + sum(t is not trial and t.status in ("TERMINATED", "ERROR") for t in trials)
        return f"{done} of {self.trials} trials ended"


class TuneTrialLinesOff(TrialProgressCallback):
    """Tune's own per-trial lines, off. Given one, Tune adds none of its own; its default printed "Trial X
    completed. Last result: " even at verbose=0 for a trial that ended without a report (did not fit)."""

    def _print(self, msg: str) -> None:
        pass


class TensorBoardNumbers(TBXLoggerCallback):
    """Tune's TensorBoard logger, given a report's numbers only. A report also carries its evaluation row
    by row (the report's intervals read them), which TensorBoard cannot show: the answers as text made
    Tune warn with all of them in the message. (Tune's logger leaves out `config` itself.)"""

    def log_trial_result(self, iteration, trial, result):
        super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if not isinstance(v, (list, dict))})
