"""ftray: Ray sweeps of LoRA finetunes that map the quality-vs-size frontier of LLMs.

A sweep file defines `sweep = Sweep(...)`; `ftray run FILE` (or `ftray.run(sweep)`) runs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ftray.errors import FtrayInputError
    from ftray.models import ModelSpec
    from ftray.sweep import ASHA, Sweep, WandB, load_sweep
    from ftray.tasks import SyntheticTask, TextTask, ViggoTask

# Imported on first use: a Train worker imports ftray.train, which must not pay for ray.tune (ftray.sweep
# imports it) in every worker process of every trial.
_HOMES = {"FtrayInputError": "ftray.errors", "ModelSpec": "ftray.models", "ASHA": "ftray.sweep", "Sweep": "ftray.sweep",
          "WandB": "ftray.sweep", "load_sweep": "ftray.sweep", "SyntheticTask": "ftray.tasks", "TextTask": "ftray.tasks",
          "ViggoTask": "ftray.tasks"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'ftray' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def run(sweep: Sweep, storage: str | None = None, name: str | None = None) -> str:
    """Run a sweep (starting a local Ray unless RAY_ADDRESS names a cluster); returns the run folder."""
    from ftray.search import run as _run

    return _run(sweep, storage=storage, name=name)


__all__ = ["ASHA", "FtrayInputError", "ModelSpec", "Sweep", "SyntheticTask", "TextTask", "ViggoTask", "WandB",
           "load_sweep", "run"]
