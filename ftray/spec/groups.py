"""The sweep's settings grouped by concern, beside `TrialConfig` (ftray/spec/config.py): how a trial is
scaled, how trials are chosen and stopped, what happens on failure, and W&B. Each validates itself at
construction and names the field it refuses."""

from __future__ import annotations

from dataclasses import dataclass

from ftray.checks import check, check_gpus_per_worker, is_int, is_number
from ftray.spec.config import SEARCHABLE


@dataclass(frozen=True)
class ASHA:
    """Asynchronous successive halving: stop trials early where they cannot win.

    Trials are compared at evaluations, on `metric` (default: the sweep's objective), every
    `grace_steps * reduction_factor**k` optimizer steps. With `per_model` (the default) a trial is
    compared only with trials of its own model size: otherwise the small models, worse by design,
    are stopped first and the small end of the frontier goes unmapped.
    """

    metric: str | None = None
    grace_steps: int = 50
    reduction_factor: float = 3.0
    per_model: bool = True

    def __post_init__(self):
        check(is_int(self.grace_steps, 1, plain=True),
              f"asha.grace_steps must be an int >= 1, got {self.grace_steps!r}")
        check(is_number(self.reduction_factor, plain=True) and self.reduction_factor > 1,
              f"asha.reduction_factor must be > 1, got {self.reduction_factor!r}")
        check(isinstance(self.per_model, bool), f"asha.per_model must be True or False, got {self.per_model!r}")


@dataclass(frozen=True)
class WandB:
    """Weights & Biases settings. mode "auto": online when an API key is available, else offline;
    `WANDB_MODE` in the environment wins (see ftray/driver/tracking.py)."""

    project: str = "ftray"
    entity: str | None = None
    mode: str = "auto"

    def __post_init__(self):
        check(self.mode in ("auto", "online", "offline", "disabled"),
              f"wandb.mode must be one of auto, online, offline, disabled; got {self.mode!r}")


@dataclass(frozen=True)
class Scaling:
    """How each trial runs: its workers and what each holds. A model rung may override
    workers and GPUs (ModelSpec)."""

    workers: int = 2  # workers per trial (data parallel on Ray Train when 2+)
    # 0, a whole number, or a fraction in (0, 1] for one-worker trials: 0.25 puts four trials on each GPU.
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None  # default: 1, or less when the cluster is smaller
    max_concurrent_trials: int | None = None  # default: as many as the cluster's resources fit
    # A one-worker trial trains in its Tune trial's own process: no Train worker group to start (README,
    # Tests, measures what that saves). False starts Ray Train for it too, for Train's restarts of a
    # lost worker (max_restarts); in its own process, a lost trial is resumed with
    # `ftray resume --resume-errored`.
    one_worker_in_trial: bool = True
    # One GPU's memory, for the check that a trial fits its share of it before the sweep starts. Default:
    # the driver's own GPU; give it where the driver has none (a cluster's CPU head node).
    gpu_memory_gb: float | None = None

    def __post_init__(self):
        check(is_int(self.workers, 1, plain=True), f"workers must be an int >= 1, got {self.workers!r}")
        check(isinstance(self.one_worker_in_trial, bool),
              f"one_worker_in_trial must be True or False, got {self.one_worker_in_trial!r}")
        check_gpus_per_worker(self.gpus_per_worker, "gpus_per_worker")
        check(self.gpu_memory_gb is None or (is_number(self.gpu_memory_gb, plain=True) and self.gpu_memory_gb > 0),
              f"gpu_memory_gb must be a number > 0 (GiB) or None, got {self.gpu_memory_gb!r}")
        check(self.cpus_per_worker is None
              or (is_number(self.cpus_per_worker, plain=True) and self.cpus_per_worker > 0),
              f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        check(self.max_concurrent_trials is None or is_int(self.max_concurrent_trials, 1, plain=True),
              f"max_concurrent_trials must be an int >= 1, got {self.max_concurrent_trials!r}")


@dataclass(frozen=True)
class Search:
    """How trials are chosen and stopped."""

    num_trials: int = 8
    algorithm: str = "optuna"  # Optuna's TPE, or "random" (Optuna's random sampler), seeded
    # Searched separately for each model, so no size is favoured by a value that suits another.
    per_model: tuple[str, ...] = ("lr",)
    # How trials pick their model: "round-robin" gives every rung of the ladder the same share of
    # trials (a frontier needs the best of *each* size, not only of the best size); "search" lets
    # Optuna choose the model like any other setting.
    model_sampling: str = "round-robin"
    asha: ASHA | None = None
    # After the search, train the best configuration of each rung again with this many more seeds
    # (ordinary trials, full budget), so the report can tell seed noise from real differences.
    repeats: int = 0

    def __post_init__(self):
        names = self.per_model
        check(isinstance(names, str) or (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)),
              f"per_model must be a setting's name or a list of names, got {names!r}")
        object.__setattr__(self, "per_model", (names,) if isinstance(names, str) else tuple(names))
        check(is_int(self.num_trials, 1, plain=True), f"num_trials must be an int >= 1, got {self.num_trials!r}")
        check(is_int(self.repeats, 0, plain=True), f"repeats must be an int >= 0, got {self.repeats!r}")
        check(self.algorithm in ("optuna", "random"), f"search must be 'optuna' or 'random', got {self.algorithm!r}")
        check(self.model_sampling in ("round-robin", "search"),
              f"model_sampling must be 'round-robin' or 'search', got {self.model_sampling!r}")
        check(self.asha is None or isinstance(self.asha, ASHA),
              f"asha must be ftray.ASHA(...) or None, got {type(self.asha).__name__}")
        for key in self.per_model:
            check(key in SEARCHABLE and key != "model", f"per_model names {key!r}, which is not a searchable setting")


@dataclass(frozen=True)
class Failure:
    """What happens when a trial fails."""

    max_restarts: int = 2  # restarts of a Train trial's workers after a lost worker, from the latest checkpoint
    keep_checkpoints: int = 1  # adapter checkpoints kept per trial, best by the objective

    def __post_init__(self):
        check(is_int(self.max_restarts, 0, plain=True), f"max_restarts must be an int >= 0, got {self.max_restarts!r}")
        check(is_int(self.keep_checkpoints, 1, plain=True),
              f"keep_checkpoints must be an int >= 1, got {self.keep_checkpoints!r}")
