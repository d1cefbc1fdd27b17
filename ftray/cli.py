"""`ftray run | resume | validate | report`: thin wrappers over the library, one per job.

User errors (FtrayInputError) print one line naming the field, file or row and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ftray.errors import FtrayInputError, ScoringFailed, SweepInterrupted
from ftray.spec.sweepfile import debug

EXIT_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftray", description="Ray sweeps of LoRA finetunes: how small can the model be?")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the sweep defined in a sweep file")
    p.add_argument("sweep_file")
    p.add_argument("--storage", help="where run folders go (default: the sweep's `storage`)")
    p.add_argument("--name", help="the run folder's name (default: the sweep's `name`)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--new-run", action="store_true",
                   help="when the run folder holds a different sweep, start a fresh one (NAME-2, ...) instead of refusing")

    p = sub.add_parser("resume", help="go on with an interrupted sweep run")
    p.add_argument("run_dir")
    p.add_argument("--address")
    errored = p.add_mutually_exclusive_group()
    errored.add_argument("--resume-errored", action="store_true", help="go on with errored trials from their checkpoints")
    errored.add_argument("--restart-errored", action="store_true", help="run errored trials again from the start")

    p = sub.add_parser("validate", help="check a sweep file, its data, models, storage and resources without training")
    p.add_argument("sweep_file")
    p.add_argument("--storage", help="the storage to check (default: the sweep's `storage`)")
    p.add_argument("--address", help="Ray cluster address the sweep will run on (resources are checked there)")

    p = sub.add_parser("report", help="show a run's trials and frontier")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--target", type=float, help="the objective value the business needs: which is the smallest model that reaches it?")
    p.add_argument("--no-files", action="store_true", help="only print; do not write frontier.csv, report.json and PNGs")
    p.add_argument("--rescore", action="store_true",
                   help="score the trials whose checkpoints are kept on the task's held-out test rows first")
    p.add_argument("--address", help="with --rescore: the Ray cluster to score on (default: $RAY_ADDRESS, else a local Ray)")

    p = sub.add_parser("eval", help="score the frontier trials' saved adapters on new rows of the task")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True, help="a data file in the task's format (ViGGO: CSV mr,ref)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--address", help="the Ray cluster to score on (default: $RAY_ADDRESS, else a local Ray)")

    p = sub.add_parser("compare", help="the fronts of several sweep runs on one plot and table")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default="compare.png", help="where the plot goes (default: compare.png)")
    p.add_argument("--json", action="store_true")

    for name in ("run", "resume"):
        sub.choices[name].add_argument("--keep-all-checkpoints", action="store_true",
                                       help="keep every trial's checkpoints (default: finished trials off the frontier lose theirs)")

    debug_help = "show tracebacks of errors in your input (FTRAY_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    for p in sub.choices.values():  # also after the command; SUPPRESS: unset there, it leaves `ftray --debug run` as set
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    args = parser.parse_args(argv)
    before = os.environ.get("FTRAY_DEBUG")
    if args.debug:  # read where the error is raised (ftray/spec/sweepfile.py), and by the handler below
        os.environ["FTRAY_DEBUG"] = "1"
    try:
        return _COMMANDS[args.command](args)
    except FtrayInputError as e:
        if debug():
            raise
        print(f"ftray {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_INPUT
    except ScoringFailed as e:  # not the input's fault; the task's traceback with --debug
        if debug():
            raise
        print(f"ftray {args.command}: error: {_one_line(str(e))} (--debug shows the traceback)", file=sys.stderr)
        return 1
    except SweepInterrupted as e:
        print(f"ftray {args.command}: {e}; finished trials and checkpoints are kept, nothing was scored or "
              f"reported; go on with: ftray resume {e.run_dir}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"ftray {args.command}: interrupted; finished trials are kept on disk", file=sys.stderr)
        return 130
    finally:
        if before is None:
            os.environ.pop("FTRAY_DEBUG", None)
        else:
            os.environ["FTRAY_DEBUG"] = before


def _one_line(text: str) -> str:
    return " ".join(text.split())


def cmd_run(args) -> int:
    from ftray.api import run
    from ftray.spec.sweepfile import load_sweep

    sweep = load_sweep(args.sweep_file)
    result = run(sweep, storage=args.storage, name=args.name, new_run=args.new_run, ray_address=args.address,
                 sweep_file=args.sweep_file, keep_all_checkpoints=args.keep_all_checkpoints)
    return _status(result)


def cmd_resume(args) -> int:
    from ftray.api import resume

    result = resume(args.run_dir, ray_address=args.address, resume_errored=args.resume_errored,
                    restart_errored=args.restart_errored, keep_all_checkpoints=args.keep_all_checkpoints)
    return _status(result)


def _status(result) -> int:
    """1 when every trial failed (nothing to report on), else 0."""
    trials = result.trials
    return 1 if trials and all(t.status == "ERROR" for t in trials) else 0


def cmd_validate(args) -> int:
    from ftray import storage as st
    from ftray.driver.preflight import check_fits_here, check_storage, prepare
    from ftray.driver.resources import check_gpu_fit
    from ftray.spec.sweepfile import load_sweep

    sweep = load_sweep(args.sweep_file)
    prepared = prepare(sweep, hub_optional=True)
    storage = args.storage or sweep.storage
    check_storage(storage)
    gpu_plan = check_gpu_fit(sweep, prepared.memory)
    check_fits_here(sweep, args.address)
    sizes = ", ".join(f"{m}: {n:,} params" if n else f"{m}: ? params" for m, n in prepared.model_params.items())
    print(f"{args.sweep_file}: ok: sweep {sweep.name!r}, {sweep.search.num_trials} trials, task {sweep.task.name!r}, "
          f"objective {sweep.objective} ({sweep.mode}); models {sizes}; storage {st.redact(st.normalize(storage))} "
          "writable; every trial fits " + ("the cluster (checked when it runs)" if args.address or
                                           os.environ.get("RAY_ADDRESS") else "this machine"))
    for line in gpu_plan:
        print(f"  {line}")
    for note in prepared.notes:
        print(f"  note: {note}")
    return 0


def cmd_report(args) -> int:
    from ftray import storage as st
    from ftray.results.report import build_report, format_report, load_run, write_report_files

    run = load_run(args.run_dir)
    if args.rescore:
        from ftray.driver.scoring import score_held_out, to_stderr
        from ftray.results.runfolder import sweep_of_run

        # Progress on stderr: stdout is the report (--json: one JSON object).
        if score_held_out(run, sweep_of_run(run.run_dir), log=to_stderr, ray_address=args.address):
            run = load_run(args.run_dir)
    report = build_report(run, target=args.target)
    written = [] if args.no_files else write_report_files(run, report)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(run, report))
        if written:
            print("\nwritten: " + ", ".join(st.redact(w) for w in written))
    return 0


def cmd_eval(args) -> int:
    from ftray.driver.scoring import format_rescore, rescore

    result = rescore(args.run_dir, args.data, ray_address=args.address)  # progress on stderr
    print(json.dumps(result) if args.json else format_rescore(result))
    return 0


def cmd_compare(args) -> int:
    from ftray.results.evidence import source_view
    from ftray.results.frontier import default_reference, front_hypervolume
    from ftray import storage as st
    from ftray.results.plots import compare_plot
    from ftray.results.report import load_run

    twice = sorted({d for d in args.run_dirs if args.run_dirs.count(d) > 1})
    if twice:
        raise FtrayInputError(f"{', '.join(twice)} named more than once: compare different runs")
    runs = [load_run(d) for d in args.run_dirs]
    objectives = {(r.metric, r.mode) for r in runs}
    if len(objectives) > 1:
        raise FtrayInputError(f"the runs have different objectives ({sorted(objectives)}); compare runs of one objective")
    metric, mode = objectives.pop()
    # Each run on the scores its front was decided on (test where all its trials have them).
    views = [source_view(r.trials, metric) for r in runs]
    ref = default_reference([view for _, view, _ in views], mode)
    rows = [{"run_dir": st.redact(r.run_dir), "trials": len(r.trials), "frontier": r.frontier,
             "source": source, "hypervolume": front_hypervolume(view, mode, ref)}
            for r, (source, view, _) in zip(runs, views)]
    plot = compare_plot([(st.basename(r.run_dir), view, r.frontier) for r, (_, view, _) in zip(runs, views)],
                        metric, args.out)
    if args.json:
        print(json.dumps({"objective": {"metric": metric, "mode": mode}, "reference": list(ref), "runs": rows,
                          "plot": plot}))
        return 0
    print(f"fronts of {metric} ({mode}) against parameters; hypervolume against the common reference "
          f"({metric}={ref[0]:.4g}, params={ref[1]:,.0f}; size axis log10(params))")
    for row in rows:
        print(f"  {row['run_dir']}: hypervolume {row['hypervolume']:.4f}, {row['trials']} trials, "
              f"front {', '.join(row['frontier']) or '-'} ({row['source']} scores)")
    print(f"plot: {plot}")
    return 0


_COMMANDS = {"run": cmd_run, "resume": cmd_resume, "validate": cmd_validate, "report": cmd_report,
             "eval": cmd_eval, "compare": cmd_compare}

if __name__ == "__main__":
    sys.exit(main())
