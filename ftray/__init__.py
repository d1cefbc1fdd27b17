"""ftray: Ray sweeps of LoRA finetunes that map the quality-vs-size frontier of LLMs.

A sweep file defines `sweep = Sweep(...)`; `ftray run FILE` (or `ftray.run(sweep)`) runs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ftray.errors import FtrayInputError
    from ftray.api import RunResult, resume, run
    from ftray.spec.config import TrialConfig
    from ftray.spec.ladder import ModelSpec
    from ftray.spec.groups import ASHA, Failure, Scaling, Search, WandB
    from ftray.spec.sweep import Sweep
    from ftray.spec.sweepfile import load_sweep
    from ftray.tasks import SyntheticTask, TextTask, ViggoTask

# Imported on first use: a Train worker imports ftray.train.recipe, which must not pay for ray.tune (ftray.spec.sweep
# imports it) in every worker process of every trial.
_HOMES = {"FtrayInputError": "ftray.errors", "ModelSpec": "ftray.spec.ladder", "TrialConfig": "ftray.spec.config",
          "ASHA": "ftray.spec.groups", "Failure": "ftray.spec.groups", "Scaling": "ftray.spec.groups", "Search": "ftray.spec.groups",
          "Sweep": "ftray.spec.sweep", "WandB": "ftray.spec.groups", "load_sweep": "ftray.spec.sweepfile", "SyntheticTask": "ftray.tasks",
          "TextTask": "ftray.tasks", "ViggoTask": "ftray.tasks", "run": "ftray.api", "resume": "ftray.api",
          "RunResult": "ftray.api"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'ftray' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = ["ASHA", "Failure", "FtrayInputError", "ModelSpec", "RunResult", "Scaling", "Search", "Sweep", "SyntheticTask",
           "TextTask", "TrialConfig", "ViggoTask", "WandB", "load_sweep", "resume", "run"]
