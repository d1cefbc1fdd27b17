"""The sweep spec: what a user writes in `sweeps/*.py`, validated before any Ray work starts.

A sweep file defines a module-level `sweep = Sweep(...)`. Its settings are grouped by concern, in
the manner of Ray's ScalingConfig / RunConfig / FailureConfig:

- what each trial trains, its budget and its evaluation: `trial=TrialConfig(...)` (ftray/spec/config.py),
  the defaults of every trial; `space` samples some of them with Ray Tune's primitives
  (`tune.choice`, `tune.loguniform`, `tune.grid_search`, ...);
- how a trial is scaled: `scaling=Scaling(...)`;
- how trials are chosen and stopped: `search=Search(...)` (Optuna or random, ASHA);
- what happens on failure: `failure=Failure(...)`;
- tracking: `wandb=WandB(...)`; where results go: `storage`.
Every group but `trial` is defined in ftray/spec/groups.py.

Any field of these groups may also be given by name (`steps=300, workers=2, num_trials=9`): a
shorthand that sets it in its group, so short sweeps stay short. A name that is no field is
refused with the closest valid one.
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from typing import Any, Mapping, Sequence

from ray.tune.search.sample import Categorical

from ftray.errors import FtrayInputError
from ftray.checks import check
from ftray.spec.config import SEARCHABLE, SETTINGS, TrialConfig, check_setting
from ftray.spec.groups import ASHA, Failure, Scaling, Search, WandB
from ftray.spec.ladder import LoraSettings, ModelSpec, as_model_spec, validate_model_id
from ftray.spec.space import candidate_values, domain_from_data, domain_to_data, is_domain, is_grid
from ftray.tasks.base import Task
from ftray.tasks.metrics import MODES


def is_folder_name(name) -> bool:
    """A run folder's name (Sweep.name, --name): one folder inside the storage, never a path out of it."""
    return isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) is not None and ".." not in name


# Each group of the Sweep, and the names a shorthand keyword may set in it.
GROUPS = {"trial": TrialConfig, "scaling": Scaling, "search": Search, "failure": Failure}
_SHORTHAND = {f.name: group for group, cls in GROUPS.items() for f in fields(cls) if f.name != "model"}
_SHORTHAND_ALIASES = {"search": ("search", "algorithm")}  # search="random" as before the groups


@dataclass(init=False)
class Sweep:
    """A sweep over LoRA finetunes. Every field is validated at construction; errors name it."""

    name: str
    task: Task
    models: tuple[ModelSpec, ...]  # the model ladder
    space: dict
    objective: str
    mode: str  # "max" or "min"; default: the objective's own direction (`metric_mode`)
    trial: TrialConfig  # the defaults of every trial: what is trained, the budget, the evaluation
    scaling: Scaling
    search: Search
    failure: Failure
    wandb: WandB
    storage: str

    def __init__(self, name: str, task: Task, models: Sequence[str | ModelSpec], space: Mapping[str, Any] | None = None,
                 objective: str = "eval_loss", mode: str | None = None, *, trial: TrialConfig | None = None,
                 scaling: Scaling | None = None, search: Search | str | None = None, failure: Failure | None = None,
                 wandb: WandB | None = None, storage: str = "./ftray_runs", **shorthand: Any):
        groups = {"trial": trial or TrialConfig(), "scaling": scaling or Scaling(), "failure": failure or Failure()}
        if isinstance(search, str):  # search="random", as before the groups
            shorthand.setdefault("algorithm", search)
            search = None
        groups["search"] = search or Search()
        for group, cls in GROUPS.items():
            check(isinstance(groups[group], cls), f"{group} must be ftray.{cls.__name__}(...), "
                                                 f"got {type(groups[group]).__name__}")
        by_group: dict[str, dict] = {}
        for key, value in shorthand.items():
            if key not in _SHORTHAND:
                raise FtrayInputError(f"Sweep has no field {key!r}{_did_you_mean(key)}")
            by_group.setdefault(_SHORTHAND[key], {})[key] = value
        for group, changes in by_group.items():
            g = groups[group]
            groups[group] = g.replace(**changes) if isinstance(g, TrialConfig) else replace(g, **changes)
        self.name, self.task, self.objective, self.mode, self.storage = name, task, objective, mode, storage
        self.trial, self.scaling, self.search, self.failure = (groups[k] for k in ("trial", "scaling", "search", "failure"))
        self.wandb = WandB() if wandb is None else wandb
        self.models = tuple(_model_field(m, i) for i, m in enumerate(_as_list(models, "models")))
        self.space = dict(space or {})
        if "model" not in self.space:  # a ladder with no model in the space sweeps all of it
            from ray import tune

            self.space["model"] = tune.choice([m.id for m in self.models])
        self._validate()

    # ---- validation -------------------------------------------------------------------------
    def _validate(self):
        check(is_folder_name(self.name),
              f"name must be letters, digits, '_', '.', '-' (a folder name), got {self.name!r}")
        check(isinstance(self.task, Task), "task must be a ftray task (SyntheticTask, ViggoTask, TextTask), "
                                           f"got {type(self.task).__name__}")
        check(bool(self.models), "models must name at least one model")
        ids = [m.id for m in self.models]
        check(len(set(ids)) == len(ids), f"models lists a model twice: {ids}")
        for m in self.models:
            validate_model_id(m)
            g, w = self.gpus_for(m.id), self.workers_for(m.id)
            # Ray may place two workers' fractions on one GPU, and NCCL refuses two ranks on one device.
            check(not (0 < g < 1 and w > 1),
                  f"model {m.id!r}: gpus_per_worker={g:g} with {w} workers: a fraction of a GPU is for one-worker "
                  "trials (NCCL cannot run two workers of a trial on one GPU); set workers=1 or a whole gpus_per_worker")
        check(isinstance(self.wandb, WandB), f"wandb must be ftray.WandB(...), got {type(self.wandb).__name__}")
        check(isinstance(self.storage, str) and bool(self.storage), f"storage must be a folder or URI, got {self.storage!r}")

        metrics = self.metric_names()
        check(self.objective in metrics,
              f"objective {self.objective!r} is not a metric of task {self.task.name!r}; it reports: {', '.join(metrics)}")
        if self.mode is None:
            self.mode = self.metric_mode(self.objective)
        check(self.mode in ("min", "max"), f"mode must be 'min' or 'max', got {self.mode!r}")
        asha = self.search.asha
        if asha is not None:
            check((asha.metric or self.objective) in metrics,
                  f"asha.metric {asha.metric!r} is not reported; choose one of {', '.join(metrics)}")
            self.asha_mode()  # a metric of no declared direction fails here, not when the sweep starts
            check(self.trial.steps is None or asha.grace_steps < self.trial.steps,
                  f"asha.grace_steps ({asha.grace_steps}) must be below steps ({self.trial.steps}), "
                  "or no trial can ever be stopped early")
            check(asha.grace_steps >= self.trial.eval_every,
                  f"asha.grace_steps ({asha.grace_steps}) must be >= eval_every ({self.trial.eval_every}): "
                  "trials are only compared where they report")

        for key, value in self.space.items():
            close = difflib.get_close_matches(key, SEARCHABLE, n=1, cutoff=0.6)
            check(key in SEARCHABLE, f"space[{key!r}] is not a searchable setting"
                  + (f"; did you mean {close[0]!r}?" if close else f"; choose from: {', '.join(SEARCHABLE)}")
                  + ("" if key not in SETTINGS else f" ({key} is set for the whole sweep: trial={key}=...)"))
            for v in candidate_values(key, value):
                self._check_value(key, v, where=f"space[{key!r}]")
        if self.trial.model is not None:
            self._check_value("model", self.trial.model, where="trial.model")
        if self.trial.data_filter_column is None:
            check(self.trial.data_filter is None and "data_filter" not in self.space,
                  "data_filter needs data_filter_column (the column to filter on)")

    def _check_value(self, key: str, v: Any, where: str):
        if key == "model":
            check(v in {m.id for m in self.models},
                  f"{where} must be one of the ladder: {', '.join(m.id for m in self.models)}, got {v!r}")
            return
        check_setting(key, v, where)

    # ---- derived ----------------------------------------------------------------------------
    def metric_names(self) -> list[str]:
        return ["eval_loss", *self.task.metric_names]

    def metric_mode(self, metric: str) -> str:
        """"max" where a larger `metric` is better: eval_loss is ftray's own metric, the rest the task's."""
        return MODES["eval_loss"] if metric == "eval_loss" else self.task.metric_mode(metric)

    def asha_mode(self) -> str:
        """The direction of the metric ASHA stops trials on: the sweep's mode for the objective."""
        metric = self.search.asha.metric or self.objective
        return self.mode if metric == self.objective else self.metric_mode(metric)

    def model(self, model_id: str) -> ModelSpec:
        return next(m for m in self.models if m.id == model_id)

    def trial_config(self, sampled: Mapping[str, Any]) -> TrialConfig:
        """One trial's settings: the sweep's defaults, the rung's own batch settings, the sampled values."""
        model_id = sampled.get("model", self.trial.model or self.models[0].id)
        rung = self.model(model_id)
        rung_overrides = {k: getattr(rung, k) for k in ("batch_size", "grad_accum") if getattr(rung, k) is not None}
        values = {k: v for k, v in sampled.items() if k in SETTINGS}
        config = self.trial.replace(**{**rung_overrides, **values, "model": model_id})
        return config if config.lora_alpha is not None else config.replace(lora_alpha=config.alpha)

    def lora(self, config: TrialConfig) -> LoraSettings:
        rung = self.model(config.model)
        kwargs = {"rank": config.lora_rank, "alpha": config.alpha, "dropout": config.lora_dropout}
        if rung.lora_targets is not None:
            kwargs["targets"] = rung.lora_targets
        return LoraSettings(**kwargs)

    def workers_for(self, model_id: str) -> int:
        return self.model(model_id).workers or self.scaling.workers

    def in_trial_process(self, model_id: str) -> bool:
        """Whether this model's trials train in their Tune trial's process rather than on Train workers."""
        return self.scaling.one_worker_in_trial and self.workers_for(model_id) == 1

    def uses_train(self) -> bool:
        """Whether any trial of the sweep is a Ray Train run (2+ workers, or one_worker_in_trial off)."""
        return not all(self.in_trial_process(m) for m in self.models_in_space())

    def gpus_for(self, model_id: str) -> float:
        g = self.model(model_id).gpus_per_worker
        return self.scaling.gpus_per_worker if g is None else g

    def models_in_space(self) -> list[str]:
        m = self.space["model"]
        if isinstance(m, Categorical):
            return list(m.categories)
        if is_grid(m):
            return list(m["grid_search"])
        return [m]

    def grid_cells(self) -> list[dict]:
        """The cycle that trials go through: every combination of the ladder (with round-robin model
        sampling) and of each `tune.grid_search` in the space, the model varying slowest. Trial number i
        takes cell i % len(cells) (driver.searcher.DefineByRun), so with fewer trials than cells, the cells from
        num_trials on are never run. A space with no grid is one empty cell."""
        grids = {k: list(v["grid_search"]) for k, v in self.space.items() if is_grid(v)}
        if self.search.model_sampling == "round-robin" and is_domain(self.space["model"]):
            grids = {"model": list(self.space["model"].categories), **grids}
        return [dict(zip(grids, values)) for values in itertools.product(*grids.values())]

    def describe(self) -> dict:
        """The sweep as JSON data: recorded in the run folder, compared on resume, and read back by
        `Sweep.from_description` where the task is one of ftray's own."""
        from ftray.storage import redact

        d = {"name": self.name, "objective": self.objective, "mode": self.mode, "storage": redact(self.storage)}
        for group in (*GROUPS, "wandb"):
            d[group] = asdict(getattr(self, group))
        d["task"] = {"type": type(self.task).__name__, "module": type(self.task).__module__, **asdict(self.task)}
        d["models"] = [asdict(m) for m in self.models]
        d["space"] = {k: domain_to_data(v) for k, v in self.space.items()}
        return _jsonable(d)

    @classmethod
    def from_description(cls, d: Mapping) -> Sweep | None:
        """The sweep `describe()` described, or None when that needs code (a task defined in Python,
        a search-space function): then only the sweep file can rebuild it."""
        from ftray import tasks

        own = d["task"].get("module", "").startswith("ftray.tasks.")
        task_type = getattr(tasks, d["task"]["type"], None) if own else None
        space = {k: domain_from_data(v) for k, v in d["space"].items()}
        if task_type is None or any(v is None for v in space.values()):
            return None
        search = dict(d["search"], asha=ASHA(**d["search"]["asha"]) if d["search"]["asha"] else None)
        return cls(name=d["name"], task=task_type(**{k: v for k, v in d["task"].items() if k not in ("type", "module")}),
                   models=[ModelSpec(**m) for m in d["models"]], space=space, objective=d["objective"],
                   mode=d["mode"], trial=TrialConfig.from_dict(d["trial"]), scaling=Scaling(**d["scaling"]),
                   search=Search(**search), failure=Failure(**d["failure"]), wandb=WandB(**d["wandb"]),
                   storage=d["storage"])

def _did_you_mean(key: str) -> str:
    names = [*_SHORTHAND, "name", "task", "models", "space", "objective", "mode", "trial", "scaling", "search",
             "failure", "wandb", "storage"]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; the settings are: {', '.join(sorted(names))}"


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


# ---- helpers ---------------------------------------------------------------------------------
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


def _jsonable(x):
    if is_dataclass(x) and not isinstance(x, type):
        return _jsonable(asdict(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)
