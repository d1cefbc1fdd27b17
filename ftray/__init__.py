"""ftray: Ray sweeps of LoRA finetunes that map the quality-vs-size frontier of LLMs.

A sweep file defines `sweep = Sweep(...)`; `ftray run FILE` (or `ftray.run(sweep)`) runs it.
"""

from ftray.errors import FtrayInputError
from ftray.models import ModelSpec
from ftray.sweep import ASHA, Sweep, WandB, load_sweep
from ftray.tasks import SyntheticTask, TextTask, ViggoTask


def run(sweep: Sweep, storage: str | None = None, name: str | None = None) -> str:
    """Run a sweep (starting a local Ray unless RAY_ADDRESS names a cluster); returns the run folder."""
    from ftray.search import run as _run

    return _run(sweep, storage=storage, name=name)


__all__ = ["ASHA", "FtrayInputError", "ModelSpec", "Sweep", "SyntheticTask", "TextTask", "ViggoTask", "WandB",
           "load_sweep", "run"]
