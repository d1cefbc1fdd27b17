"""The Python entry points, mirrored one to one by the CLI: `ftray.run(sweep)`, `ftray.resume(run_dir)`.

Each runs the sweep (ftray/driver/tuner.py), then finishes it as `ftray run` does: the checkpoints of
trials off the frontier pruned, the report printed and written into the run folder, the W&B summary
run logged. A sweep run from Python needs no sweep file: its recorded configuration rebuilds it
for `ftray resume` and `ftray eval` (a task defined in Python needs its file, see runfolder.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ftray import storage as st


@dataclass(frozen=True)
class RunResult:
    run_dir: str
    report: dict  # `ftray report RUN_DIR --json`: trials, frontier, analysis
    text: str  # the report as printed
    trials: tuple = ()  # the trials as results.trialresult.TrialResult: what report["trials"] shows as JSON

    @property
    def frontier(self) -> list[str]:
        return self.report["frontier"]


def run(sweep, storage: str | None = None, name: str | None = None, *, new_run: bool = False,
        ray_address: str | None = None, sweep_file: str | None = None, keep_all_checkpoints: bool = False,
        quiet: bool = False) -> RunResult:
    """Run a sweep (starting a local Ray unless RAY_ADDRESS names a cluster), report and prune."""
    from ftray.driver.tuner import Options
    from ftray.driver.tuner import run as run_sweep

    run_dir = run_sweep(sweep, Options(storage=storage, name=name, new_run=new_run, ray_address=ray_address,
                                       sweep_file=sweep_file))
    return finish(run_dir, sweep, keep_all_checkpoints=keep_all_checkpoints, quiet=quiet)


def resume(run_dir: str, *, ray_address: str | None = None, resume_errored: bool = False,
           restart_errored: bool = False, keep_all_checkpoints: bool = False, quiet: bool = False) -> RunResult:
    """Go on with a sweep run from its folder: finished trials stay, unfinished ones continue."""
    from ftray.driver.tuner import Options
    from ftray.driver.tuner import resume as resume_sweep

    run_dir = resume_sweep(run_dir, Options(ray_address=ray_address, resume_errored=resume_errored,
                                            restart_errored=restart_errored))
    return finish(run_dir, keep_all_checkpoints=keep_all_checkpoints, quiet=quiet)


def finish(run_dir: str, sweep=None, *, keep_all_checkpoints: bool = False, quiet: bool = False) -> RunResult:
    """The end of a run: every finished trial scored on held-out test rows, checkpoints off the
    frontier pruned, the report written and sent to W&B."""
    from ftray.results import runfolder as rf
    from ftray.results.report import build_report, format_report, load_run, write_report_files
    from ftray.driver.scoring import score_held_out, to_stdout
    from ftray.driver.tracking import log_sweep_summary

    run_data = load_run(run_dir)
    # As Ray tasks on the sweep's Ray, each trial with its rung's worker resources (driver/scoring.py).
    if score_held_out(run_data, sweep or rf.sweep_of_run(run_data.run_dir), log=None if quiet else to_stdout):
        run_data = load_run(run_dir)
    if not keep_all_checkpoints:
        # After the held-out scoring, so that the front kept here is decided on the test scores the
        # report's verdicts read (report.load_run: frontier.decide_front), not on validation alone.
        pruned = rf.prune_checkpoints(run_data.run_dir, set(run_data.frontier),
                                      rf.tune_trials(run_data.run_dir))
        if pruned and not quiet:
            print(f"ftray: removed the checkpoints of {len(pruned)} trials off the frontier "
                  "(--keep-all-checkpoints keeps them)", flush=True)
        if pruned:
            run_data = load_run(run_dir)
    report = build_report(run_data)
    written = write_report_files(run_data, report)
    log_sweep_summary(run_data, report, written)
    text = format_report(run_data, report)
    if not quiet:
        shown = st.redact(run_data.run_dir)
        print(f"\n{text}\n\nrun folder: {shown}\nreport:     ftray report {shown}   "
              "(files: frontier.csv, report.json, *.png)", flush=True)
    return RunResult(run_data.run_dir, report, text, run_data.trials)
