"""A trial's result, read from the run folder in one place: what the report, the frontier analysis,
W&B, held-out scoring and `ftray report --json` all read, with typed fields instead of string keys."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ftray import storage as st
from ftray.checks import is_number
from ftray.results import runfolder as rf

# What ftray's own reports carry besides the task's metrics (ftray/train).
REPORT_KEYS = {"step", "total_steps", "train_loss", "lr", "tokens", "train_tokens_per_s", "train_s", "setup_s",
               "worker_start_s", "step_s", "peak_gpu_mem_gib", "params", "trainable_params", "train_examples",
               "restarts", "diverged", "eval_loss", "eval_s", "world_size", "eval_rows", "eval_predictions", "wall_s"}


def wall_seconds(report: dict) -> float | None:
    """A trial's seconds to this report, over all its tries (ftray's own count; a run from before it
    had Tune's, which starts again at 0 in a resumed trial)."""
    seconds = report.get("wall_s", report.get("time_total_s"))
    return float(seconds) if is_number(seconds) else None


@dataclass(frozen=True)
class TrialResult:
    """One trial as its run folder shows it. Scores are None where the trial has none (failed, or
    not finite); `reason` is set for every trial that did not end well."""

    id: str
    status: str  # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    reason: str | None = None  # "diverged: ...", "error: ...": why it is kept out of the front
    outcome: str | None = None  # TrialOutcome.kind; None where none was written
    model: str | None = None
    params: int = 0  # the model's parameters; 0 is unknown
    trainable_params: int = 0
    config: dict = field(default_factory=dict)  # the TrialConfig as a dict (Tune's sampled values for older folders)
    objective: float | None = None  # the objective at the last evaluation; None for a trial with a reason
    base_objective: float | None = None  # the base model's, before finetuning
    metrics: dict = field(default_factory=dict)  # every validation metric at the last evaluation
    # Each metric row by row, [[num, den], ...], behind `objective` and `metrics` (the same validation
    # rows for every trial); None for failed or older trials.
    rows: dict | None = None
    test: rf.TestScores | None = None  # the adapter scored on held-out test rows
    steps: int | None = None  # the step reached
    stopped_early: bool = False  # stopped by ASHA before its budget: scored at the step it reached
    train_loss: float | None = None
    first_train_loss: float | None = None
    tokens: int | None = None
    train_tokens_per_s: float | None = None
    step_s: float | None = None  # median seconds per optimizer step, last interval
    peak_gpu_mem_gib: float | None = None
    restarts: int = 0  # restarts of its workers after a lost worker
    wall_s: float | None = None
    accelerators: float = 1  # what the trial held: GPUs where it had them, else its CPU workers
    checkpoint: str | None = None  # None once removed (checkpoints off the front are pruned)
    trial_dir: str = ""

    # ---- the settings, from the config -------------------------------------------------------
    @property
    def lora_rank(self) -> int | None:
        return self.config.get("lora_rank")

    @property
    def data_fraction(self) -> float:
        return self.config.get("data_fraction", 1.0)

    @property
    def lr(self) -> float | None:
        return self.config.get("lr")

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    # ---- derived -----------------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        """Done, well or not: a RUNNING, PENDING or PAUSED trial (a sweep still going, or interrupted) is not."""
        return self.status in ("TERMINATED", "ERROR")

    @property
    def scored(self) -> bool:
        """Finished well with an objective: the trials the front and the verdicts compare."""
        return self.objective is not None and self.status == "TERMINATED" and not self.reason

    @property
    def accelerator_s(self) -> float | None:
        """Wall time times what the trial held: the cost the cost front ranks."""
        return None if self.wall_s is None else self.wall_s * (self.accelerators or 1)

    def metric_rows(self, metric: str) -> list | None:
        """The per-row (num, den) scores of `metric` behind `objective`; None where there are none."""
        return (self.rows or {}).get(metric) or None

    def test_score(self, metric: str) -> float | None:
        """`metric` on the held-out test rows; None where the trial was not scored on them."""
        return _finite((self.test.metrics or {}).get(metric)) if self.test else None

    def on_test(self, metric: str) -> TrialResult:
        """The trial as its held-out test scores show it: objective, metrics and rows from the test rows
        (the objective only where it is scored: a failed trial stays out of every front)."""
        test = self.test
        return replace(self, objective=self.test_score(metric) if self.scored else self.objective,
                       metrics=test.metrics if test else {}, rows=test.rows if test else None)

    # ---- reading and writing -----------------------------------------------------------------
    @classmethod
    def from_run_folder(cls, trial: rf.TuneTrial, record: rf.RunRecord, run_dir: str) -> TrialResult:
        """The trial from what Tune and ftray wrote for it (its reports, ftray_trial.json, ftray_test.json)."""
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
        return cls(
            id=trial.id,
            status=trial.status,
            reason=reason,
            outcome=outcome.kind if outcome else None,
            model=model,
            params=int(record.model_params.get(model) or last.get("params") or 0),
            trainable_params=int(last.get("trainable_params") or 0),
            config=config,
            objective=_finite(last.get(objective["metric"])) if not reason else None,
            base_objective=_finite(last.get(f"base_{objective['metric']}")),
            metrics={k: _finite(last.get(k)) for k in metric_names if k in last},
            rows=last.get("eval_rows") if not reason else None,
            test=rf.read_test_scores(trial.trial_dir),
            steps=last.get("step"),
            stopped_early=bool(trial.status == "TERMINATED" and not reason and last.get("total_steps")
                               and (last.get("step") or 0) < last["total_steps"]),
            train_loss=_finite(last.get("train_loss")),
            first_train_loss=_finite(trial.results[0].get("train_loss")) if trial.results else None,
            tokens=last.get("tokens"),
            train_tokens_per_s=_finite(last.get("train_tokens_per_s")),
            step_s=_finite(last.get("step_s")),
            peak_gpu_mem_gib=_finite(last.get("peak_gpu_mem_gib")),
            restarts=outcome.restarts if outcome else int(last.get("restarts", 0)),
            wall_s=_finite(wall_seconds(last)),
            accelerators=workers * gpus if gpus else workers,
            checkpoint=rf.trial_checkpoint(run_dir, trial.id, last.get("checkpoint_path")),
            trial_dir=trial.trial_dir,
        )

    def to_json(self) -> dict[str, Any]:
        """The trial as `ftray report --json` shows it: paths without credentials, test scores without
        their per-row parts (those stay in the folder), and no validation rows."""
        test = self.test
        return {
            "id": self.id, "status": self.status, "reason": self.reason, "model": self.model, "params": self.params,
            "trainable_params": self.trainable_params, "lora_rank": self.lora_rank,
            "data_fraction": self.data_fraction, "lr": self.lr, "objective": self.objective,
            "base_objective": self.base_objective, "metrics": self.metrics, "wall_s": self.wall_s,
            "accelerators": self.accelerators, "tokens": self.tokens, "train_loss": self.train_loss,
            "first_train_loss": self.first_train_loss, "restarts": self.restarts, "steps": self.steps,
            "stopped_early": self.stopped_early, "config": self.config,
            "checkpoint": self.checkpoint and st.redact(self.checkpoint), "trial_dir": st.redact(self.trial_dir),
            "outcome": self.outcome,
            "test": None if test is None else {"metrics": test.metrics, "n": test.n, "of": test.of},
        }


def load_trials(run_dir: str, record: rf.RunRecord | None = None) -> list[TrialResult]:
    """Every trial of a run folder (the search's, then the confirmation phase's)."""
    record = record or rf.require_record(run_dir)
    return [TrialResult.from_run_folder(t, record, run_dir) for t in rf.tune_trials(run_dir)]


def _task_metric_keys(result: dict) -> list[str]:
    """The task's metrics in a report, for run folders whose record does not list them."""
    return [k for k, v in result.items()
            if k not in REPORT_KEYS and k not in rf.TUNE_LABELS and k not in rf.TUNE_COUNTERS
            and not k.startswith("base_") and isinstance(v, (int, float))]


def _finite(v):
    return v if is_number(v, plain=True) else None
