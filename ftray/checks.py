"""The checks of user input that every layer shares: what counts as an int and as a number, and the
one-line error that names the field. Each caller keeps its own message (what it accepts, the field).

Bools are neither ints nor numbers, and a number is finite. An int or a number is Python's or numpy's
(Tune and Optuna sample numpy scalars; TrialConfig and LoraSettings turn them into Python's), or with
`plain` Python's own only: for values kept as they are given (the sweep's groups, gpus_per_worker, W&B's
rows), which go on unconverted into the run's JSON record, Ray's resource requests and W&B.
"""

from __future__ import annotations

import math
import numbers

from ftray.errors import FtrayInputError


def is_int(v, low: int | None = None, *, plain: bool = False) -> bool:
    """An integer (not a bool), and at least `low` when given; with `plain`, a Python int only."""
    return (isinstance(v, int if plain else numbers.Integral) and not isinstance(v, bool)
            and (low is None or v >= low))


def is_number(v, *, plain: bool = False) -> bool:
    """A finite real number (not a bool); with `plain`, a Python int or float only."""
    return isinstance(v, (int, float) if plain else numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check(ok: bool, message: str) -> None:
    """Raise FtrayInputError(message) unless `ok`: the message names the field and what it accepts."""
    if not ok:
        raise FtrayInputError(message)


def check_gpus_per_worker(value, where: str) -> None:
    """A worker's GPUs: none (0), a fraction in (0, 1] (that many trials share one GPU) or a whole number.

    Ray places a fractional request on one GPU and refuses fractions above 1 (1.5 GPUs cannot be
    handed out), so those are refused here, naming the field, before Ray sees them.
    """
    ok = is_number(value, plain=True) and value >= 0
    check(ok and not (value > 1 and value != int(value)),
          f"{where} must be 0 (no GPU), a fraction in (0, 1] (several trials share a GPU) "
          f"or a whole number of GPUs, got {value!r}")
