"""Ctrl-C during a sweep: Tune stops the trials, saves its state and returns from fit as if the sweep
were done. ftray must not score, prune or report it as done: it says how many trials are unfinished and
how to go on, exit status 130. (No sweep here: Tune's side is its own; what ftray does with it is this.)"""

from pathlib import Path
from types import SimpleNamespace

import pytest

import ftray.api
from ftray.cli import main
from ftray.driver.tuner import all_ended
from ftray.errors import SweepInterrupted

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.py"


def grid(terminated: int, errors: int):
    return SimpleNamespace(num_terminated=terminated, num_errors=errors)  # what all_ended reads of a ResultGrid


def test_a_fit_with_trials_neither_finished_nor_errored_was_interrupted():
    all_ended(grid(3, 1), 4, "/runs/x")  # errored trials have ended: a resume may continue them, not must
    with pytest.raises(SweepInterrupted) as e:
        all_ended(grid(1, 1), 4, "/runs/x")
    assert (e.value.unfinished, e.value.of, e.value.run_dir) == (2, 4, "/runs/x")


@pytest.mark.parametrize("command", ["run", "resume"])
def test_an_interrupted_sweep_exits_130_with_the_resume_command(command, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise SweepInterrupted("/runs/x", 2, 4)

    monkeypatch.setattr(ftray.api, command, interrupted)
    status = main(["run", str(QUICKSTART)] if command == "run" else ["resume", "/runs/x"])
    err = capsys.readouterr().err
    assert status == 130, err
    assert "interrupted with 2 of 4 trials unfinished" in err and "go on with: ftray resume /runs/x" in err
