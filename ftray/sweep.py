"""The sweep spec: what a user writes in `sweeps/*.py`, validated before any Ray work starts.

A sweep file defines a module-level `sweep = Sweep(...)`. Its `space` uses Ray Tune's sampling
primitives (`tune.choice`, `tune.loguniform`, ...) over the names in `SEARCHABLE`; every searchable
name that the space leaves out takes its default from the Sweep's own fields.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ray.tune.search.sample import Categorical, Domain, Float, Integer

from ftray.errors import FtrayInputError
from ftray.models import LoraSettings, ModelSpec, as_model_spec, validate_model_id
from ftray.tasks.base import Task

# Names the search space may sample, and the check each sampled value must pass.
SEARCHABLE = {
    "model": "a model id of the ladder",
    "lora_rank": "an int > 0",
    "lora_alpha": "a number > 0 (default: 2 x lora_rank)",
    "lora_dropout": "a number in [0, 1)",
    "lr": "a number > 0",
    "weight_decay": "a number >= 0",
    "warmup_ratio": "a number in [0, 1)",
    "data_fraction": "a number in (0, 1]",
    "data_filter": "None or a value of the task's `data_filter_column`",
    "batch_size": "an int > 0",
    "grad_accum": "an int > 0",
}


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
        if not isinstance(self.grace_steps, int) or self.grace_steps < 1:
            raise FtrayInputError(f"asha.grace_steps must be an int >= 1, got {self.grace_steps!r}")
        if not (isinstance(self.reduction_factor, (int, float)) and self.reduction_factor > 1):
            raise FtrayInputError(f"asha.reduction_factor must be > 1, got {self.reduction_factor!r}")
        if not isinstance(self.per_model, bool):
            raise FtrayInputError(f"asha.per_model must be True or False, got {self.per_model!r}")


@dataclass(frozen=True)
class WandB:
    """Weights & Biases settings. mode "auto": online when an API key is available, else offline."""

    project: str = "ftray"
    entity: str | None = None
    mode: str = "auto"

    def __post_init__(self):
        if self.mode not in ("auto", "online", "offline", "disabled"):
            raise FtrayInputError(
                f"wandb.mode must be one of auto, online, offline, disabled; got {self.mode!r}"
            )


@dataclass
class Sweep:
    """A sweep over LoRA finetunes. Every field is validated at construction; errors name it."""

    name: str
    task: Task
    models: Sequence[str | ModelSpec]  # the model ladder
    space: Mapping[str, Any] = field(default_factory=dict)
    objective: str = "eval_loss"
    mode: str | None = None  # default: "min" for losses and *_rate metrics, else "max"
    num_trials: int = 8
    # Per-trial scaling (a model rung may override workers, gpus_per_worker, batch size, accum).
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None  # default: 1, or less when the cluster is smaller
    max_concurrent_trials: int | None = None  # default: as many as the cluster's resources fit
    # Training budget: optimizer steps, or epochs over the (subset of the) training data.
    steps: int | None = None  # default: 200 when epochs is not set either
    epochs: float | None = None
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 256
    # Defaults for searchable settings the space does not sample.
    lr: float = 1e-3
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_dropout: float = 0.05
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    data_fraction: float = 1.0
    data_filter: str | None = None
    data_filter_column: str | None = None  # e.g. "dialogue_act" for ViGGO
    # Searched separately for each model, so no size is favoured by a value that suits another.
    per_model: tuple[str, ...] = ("lr",)
    # How trials pick their model: "round-robin" gives every rung of the ladder the same share of
    # trials (a frontier needs the best of *each* size, not only of the best size); "search" lets
    # Optuna choose the model like any other setting.
    model_sampling: str = "round-robin"
    # Evaluation: eval loss on `eval_samples` validation rows, and the task's metrics on text
    # generated greedily for the same rows, every `eval_every` steps and at the end.
    eval_every: int = 50
    eval_samples: int = 64
    max_new_tokens: int = 64
    eval_base: bool = True  # also score each model before finetuning, to show what finetuning gains
    asha: ASHA | None = None
    search: str = "optuna"  # or "random" (Tune's random search, seeded)
    seed: int = 0
    max_restarts: int = 2  # restarts of a trial's workers after a lost worker, from the latest checkpoint
    keep_checkpoints: int = 1  # adapter checkpoints kept per trial, best by the objective
    storage: str = "./ftray_runs"
    wandb: WandB = field(default_factory=WandB)

    def __post_init__(self):
        self.models = tuple(_model_field(m, i) for i, m in enumerate(_as_list(self.models, "models")))
        self.space = dict(self.space)
        if "model" not in self.space:  # a ladder with no model in the space sweeps all of it
            from ray import tune

            self.space["model"] = tune.choice([m.id for m in self.models])
        self.per_model = tuple(self.per_model)
        self._validate()

    # ---- validation -------------------------------------------------------------------------
    def _validate(self):
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise FtrayInputError(
                f"name must be letters, digits, '_', '.', '-' (a folder name), got {self.name!r}"
            )
        if not isinstance(self.task, Task):
            raise FtrayInputError(
                f"task must be a ftray task (SyntheticTask, ViggoTask, TextTask), got {type(self.task).__name__}"
            )
        if not self.models:
            raise FtrayInputError("models must name at least one model")
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise FtrayInputError(f"models lists a model twice: {ids}")
        for m in self.models:
            validate_model_id(m)
        _positive_int(self, "num_trials", "workers", "batch_size", "grad_accum", "max_length",
                      "eval_every", "eval_samples", "max_new_tokens", "keep_checkpoints")
        if not isinstance(self.max_restarts, int) or isinstance(self.max_restarts, bool) or self.max_restarts < 0:
            raise FtrayInputError(f"max_restarts must be an int >= 0, got {self.max_restarts!r}")
        if not isinstance(self.seed, int):
            raise FtrayInputError(f"seed must be an int, got {self.seed!r}")
        if self.steps is None and self.epochs is None:
            self.steps = 200
        if self.steps is not None and self.epochs is not None:
            raise FtrayInputError(f"set exactly one of steps and epochs, got steps={self.steps!r}, epochs={self.epochs!r}")
        if self.steps is not None:
            _positive_int(self, "steps")
        if self.epochs is not None and not (_is_number(self.epochs) and self.epochs > 0):
            raise FtrayInputError(f"epochs must be > 0, got {self.epochs!r}")
        if not (_is_number(self.gpus_per_worker) and self.gpus_per_worker >= 0):
            raise FtrayInputError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        if self.cpus_per_worker is not None and not (_is_number(self.cpus_per_worker) and self.cpus_per_worker > 0):
            raise FtrayInputError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if self.max_concurrent_trials is not None:
            _positive_int(self, "max_concurrent_trials")
        if self.model_sampling not in ("round-robin", "search"):
            raise FtrayInputError(f"model_sampling must be 'round-robin' or 'search', got {self.model_sampling!r}")
        if self.search not in ("optuna", "random"):
            raise FtrayInputError(f"search must be 'optuna' or 'random', got {self.search!r}")
        if not isinstance(self.wandb, WandB):
            raise FtrayInputError(f"wandb must be ftray.WandB(...), got {type(self.wandb).__name__}")
        if self.asha is not None and not isinstance(self.asha, ASHA):
            raise FtrayInputError(f"asha must be ftray.ASHA(...) or None, got {type(self.asha).__name__}")

        metrics = self.metric_names()
        if self.objective not in metrics:
            raise FtrayInputError(
                f"objective {self.objective!r} is not a metric of task {self.task.name!r}; "
                f"it reports: {', '.join(metrics)}"
            )
        if self.mode is None:
            self.mode = default_mode(self.objective)
        if self.mode not in ("min", "max"):
            raise FtrayInputError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.asha is not None:
            asha_metric = self.asha.metric or self.objective
            if asha_metric not in metrics:
                raise FtrayInputError(f"asha.metric {asha_metric!r} is not reported; choose one of {', '.join(metrics)}")
            if self.steps is not None and self.asha.grace_steps >= self.steps:
                raise FtrayInputError(
                    f"asha.grace_steps ({self.asha.grace_steps}) must be below steps ({self.steps}), "
                    "or no trial can ever be stopped early"
                )
            if self.asha.grace_steps < self.eval_every:
                raise FtrayInputError(
                    f"asha.grace_steps ({self.asha.grace_steps}) must be >= eval_every ({self.eval_every}): "
                    "trials are only compared where they report"
                )

        for key in self.per_model:
            if key not in SEARCHABLE or key == "model":
                raise FtrayInputError(f"per_model names {key!r}, which is not a searchable setting")
        for key, value in self.space.items():
            if key not in SEARCHABLE:
                raise FtrayInputError(
                    f"space[{key!r}] is not a searchable setting; choose from: {', '.join(SEARCHABLE)}"
                )
            for v in _candidate_values(key, value):
                self._check_value(key, v, where=f"space[{key!r}]")
        for key in SEARCHABLE:
            if key not in self.space:
                self._check_value(key, getattr(self, key), where=key)
        if self.data_filter_column is None and (self.data_filter is not None or "data_filter" in self.space):
            raise FtrayInputError("data_filter needs data_filter_column (the column to filter on)")

    def _check_value(self, key: str, v: Any, where: str):
        ok = {
            "model": lambda: v in {m.id for m in self.models},
            "lora_rank": lambda: isinstance(v, int) and not isinstance(v, bool) and v > 0,
            "lora_alpha": lambda: v is None or (_is_number(v) and v > 0),
            "lora_dropout": lambda: _is_number(v) and 0 <= v < 1,
            "lr": lambda: _is_number(v) and v > 0,
            "weight_decay": lambda: _is_number(v) and v >= 0,
            "warmup_ratio": lambda: _is_number(v) and 0 <= v < 1,
            "data_fraction": lambda: _is_number(v) and 0 < v <= 1,
            "data_filter": lambda: v is None or isinstance(v, str),
            "batch_size": lambda: isinstance(v, int) and not isinstance(v, bool) and v > 0,
            "grad_accum": lambda: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        }[key]()
        if not ok:
            accepted = SEARCHABLE[key]
            if key == "model":
                accepted = "one of the ladder: " + ", ".join(m.id for m in self.models)
            raise FtrayInputError(f"{where} must be {accepted}, got {v!r}")

    # ---- derived ----------------------------------------------------------------------------
    def metric_names(self) -> list[str]:
        return ["eval_loss", *self.task.metric_names]

    def model(self, model_id: str) -> ModelSpec:
        return next(m for m in self.models if m.id == model_id)

    def describe(self) -> dict:
        """A JSON-able description (for the run folder and to detect a changed sweep on resume)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("task", "space", "models")}
        d["task"] = {"type": type(self.task).__name__, **_jsonable(asdict(self.task))}
        d["models"] = [_jsonable(asdict(m)) for m in self.models]
        d["space"] = {k: describe_domain(v) for k, v in self.space.items()}
        return _jsonable(d)

    def resolve(self, config: Mapping[str, Any]) -> dict:
        """The full set of searchable values for one trial: sampled ones, else the defaults."""
        out = {}
        model_id = config.get("model", self.models[0].id)
        rung = self.model(model_id)
        for key in SEARCHABLE:
            if key in config:
                out[key] = config[key]
            elif key in ("batch_size", "grad_accum") and getattr(rung, key) is not None:
                out[key] = getattr(rung, key)
            else:
                out[key] = getattr(self, key, None)
        out["model"] = model_id
        if out["lora_alpha"] is None:
            out["lora_alpha"] = 2 * out["lora_rank"]
        return out

    def lora(self, resolved: Mapping[str, Any]) -> LoraSettings:
        rung = self.model(resolved["model"])
        kwargs = {"rank": resolved["lora_rank"], "alpha": resolved["lora_alpha"], "dropout": resolved["lora_dropout"]}
        if rung.lora_targets is not None:
            kwargs["targets"] = rung.lora_targets
        return LoraSettings(**kwargs)

    def workers_for(self, model_id: str) -> int:
        return self.model(model_id).workers or self.workers

    def gpus_for(self, model_id: str) -> float:
        g = self.model(model_id).gpus_per_worker
        return self.gpus_per_worker if g is None else g


def describe_domain(value: Any) -> str:
    """A stable text for a Tune primitive, e.g. "loguniform(0.001, 0.01)" (its repr holds an address)."""
    if isinstance(value, Categorical):
        return f"choice({list(value.categories)!r})"
    if isinstance(value, (Float, Integer)):
        sampler = value.sampler
        q = getattr(sampler, "q", None)
        kind = type(getattr(sampler, "sampler", sampler)).__name__.lstrip("_").lower()
        base = "int" if isinstance(value, Integer) else "float"
        return f"{base}-{kind}({value.lower!r}, {value.upper!r}" + (f", q={q!r})" if q is not None else ")")
    return repr(value)


def diff_descriptions(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """What changed between two `Sweep.describe()` results, one "field: old -> new" line each."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += diff_descriptions(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def default_mode(metric: str) -> str:
    return "min" if metric.endswith("loss") or metric.endswith("_rate") else "max"


def load_sweep(path: str | Path) -> Sweep:
    """Import a sweep file and return its module-level `sweep`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FtrayInputError(f"sweep file {str(path)!r} does not exist")
    if path.suffix != ".py":
        raise FtrayInputError(f"sweep file {str(path)!r} must be a Python file (.py)")
    try:
        source = path.read_text()
        compile(source, str(path), "exec")
    except SyntaxError as e:
        raise FtrayInputError(f"sweep file {str(path)!r} has a syntax error at line {e.lineno}: {e.msg}") from None
    module_name = "ftray_sweep_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except FtrayInputError as e:
        raise FtrayInputError(f"{path}: {e}") from None
    # Classes a sweep file defines (a custom Task) travel to Ray workers by value: the workers cannot
    # import the sweep file as a module.
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    sweep = getattr(module, "sweep", None)
    if sweep is None:
        raise FtrayInputError(f"sweep file {str(path)!r} does not define a module-level `sweep = Sweep(...)`")
    if not isinstance(sweep, Sweep):
        raise FtrayInputError(f"{path}: `sweep` must be a ftray.Sweep, got {type(sweep).__name__}")
    return sweep


# ---- helpers ---------------------------------------------------------------------------------
def _candidate_values(key: str, value: Any) -> list:
    """The values a space entry can take, to validate them (bounds for ranges)."""
    if isinstance(value, Categorical):
        if not value.categories:
            raise FtrayInputError(f"space[{key!r}] is an empty choice")
        return list(value.categories)
    if isinstance(value, (Float, Integer)):
        if not value.lower < value.upper:
            raise FtrayInputError(f"space[{key!r}] has lower >= upper ({value.lower}, {value.upper})")
        upper = value.upper - 1 if isinstance(value, Integer) else value.upper
        if key == "data_fraction":  # a float range's upper bound is open in Tune: check it as 1.0 max
            return [value.lower, value.upper] if value.lower > 0 else [value.lower]
        return [value.lower, upper]
    if isinstance(value, Domain):
        raise FtrayInputError(f"space[{key!r}]: {type(value).__name__} is not supported; use tune.choice, "
                              "tune.uniform, tune.loguniform, tune.randint, tune.quniform or a constant")
    if isinstance(value, (list, tuple, dict, set)):
        raise FtrayInputError(f"space[{key!r}] must be a constant or a Tune primitive (tune.choice([...])), got {value!r}")
    return [value]


def _model_field(m, i):
    try:
        return as_model_spec(m)
    except FtrayInputError as e:
        raise FtrayInputError(f"models[{i}]: {e}") from None
    except TypeError:
        raise FtrayInputError(f"models[{i}] must be a model id (str) or ftray.ModelSpec, got {m!r}") from None


def _as_list(x, name):
    if isinstance(x, (str, ModelSpec)):
        return [x]
    try:
        return list(x)
    except TypeError:
        raise FtrayInputError(f"{name} must be a list, got {x!r}") from None


def _positive_int(obj, *names):
    for name in names:
        v = getattr(obj, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise FtrayInputError(f"{name} must be an int >= 1, got {v!r}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)
