"""Ctrl-C during a sweep: Tune stops the trials, saves its state and returns from fit as if the sweep
were done. ftray must not score, prune or report it as done: it says how many trials are unfinished and
how to go on, exit status 130. (No sweep here: a real Ctrl-C and resume of the quickstart were checked by
hand, 2026-12-06; what ftray reads of Tune's stored state, and does with it, is tested here.)"""

import json
from pathlib import Path

import pytest

import ftray.api
from ftray.cli import main
from ftray.driver.tuner import all_ended
from ftray.errors import SweepInterrupted

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.py"


def stored_state(folder, *statuses):
    """Tune's experiment-state file as a sweep leaves it (its format: ftray/results/runfolder.py)."""
    trials = [[json.dumps({"trial_id": f"t{i}", "status": s, "relative_logdir": f"t{i}"}), "{}"]
              for i, s in enumerate(statuses)]
    (folder / "experiment_state-2026-12-06_00-00-00.json").write_text(json.dumps({"trial_data": trials}))


def test_a_sweep_with_trials_neither_finished_nor_errored_was_interrupted(tmp_path):
    stored_state(tmp_path, "TERMINATED", "TERMINATED", "TERMINATED", "ERROR")
    all_ended(str(tmp_path), 4, "/runs/x")  # errored trials have ended: a resume may continue them, not must
    # After a Ctrl-C: two trials stopped while running (Tune stored them so), and two never created.
    stored_state(tmp_path, "TERMINATED", "RUNNING", "ERROR", "PENDING")
    with pytest.raises(SweepInterrupted) as e:
        all_ended(str(tmp_path), 6, "/runs/x")
    assert (e.value.unfinished, e.value.of, e.value.run_dir) == (4, 6, "/runs/x")


@pytest.mark.parametrize("command", ["run", "resume"])
def test_an_interrupted_sweep_exits_130_with_the_resume_command(command, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise SweepInterrupted("/runs/x", 2, 4)

    monkeypatch.setattr(ftray.api, command, interrupted)
    status = main(["run", str(QUICKSTART)] if command == "run" else ["resume", "/runs/x"])
    err = capsys.readouterr().err
    assert status == 130, err
    assert "interrupted with 2 of 4 trials unfinished" in err and "go on with: ftray resume /runs/x" in err
