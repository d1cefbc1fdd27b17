"""`ftray run | resume | validate | report`: thin wrappers over the library, one per job.

User errors (FtrayInputError) print one line naming the field, file or row and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ftray.errors import FtrayInputError

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
    p.add_argument("--resume-errored", action="store_true", help="go on with errored trials from their checkpoints")
    p.add_argument("--restart-errored", action="store_true", help="run errored trials again from the start")

    p = sub.add_parser("validate", help="check a sweep file, its data and models without training")
    p.add_argument("sweep_file")

    p = sub.add_parser("report", help="show a run's trials and frontier")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--target", type=float, help="the objective value the business needs: which is the smallest model that reaches it?")
    p.add_argument("--no-files", action="store_true", help="only print; do not write frontier.csv, report.json and PNGs")

    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except FtrayInputError as e:
        print(f"ftray {args.command}: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"ftray {args.command}: interrupted; finished trials are kept on disk", file=sys.stderr)
        return 130


def cmd_run(args) -> int:
    from ftray.search import run
    from ftray.sweep import load_sweep

    sweep = load_sweep(args.sweep_file)
    run_dir = run(sweep, storage=args.storage, name=args.name, new_run=args.new_run, ray_address=args.address,
                  sweep_file=args.sweep_file)
    return _finish(run_dir)


def cmd_resume(args) -> int:
    from ftray.search import resume

    run_dir = resume(args.run_dir, ray_address=args.address, resume_errored=args.resume_errored,
                     restart_errored=args.restart_errored)
    return _finish(run_dir)


def _finish(run_dir: str) -> int:
    """The report at the end of a run: printed, written to the run folder, and sent to W&B."""
    from ftray.report import build_report, format_report, load_run, write_report_files
    from ftray.tracking import log_sweep_summary

    run = load_run(run_dir)
    report = build_report(run)
    written = write_report_files(run, report)
    log_sweep_summary(run, report, written)
    print()
    print(format_report(run, report))
    print(f"\nrun folder: {run_dir}")
    print(f"report:     ftray report {run_dir}   (files: frontier.csv, report.json, *.png)")
    failed = [t for t in run["trials"] if t["status"] == "ERROR"]
    return 1 if run["trials"] and len(failed) == len(run["trials"]) else 0


def cmd_validate(args) -> int:
    from ftray.search import prepare
    from ftray.sweep import load_sweep

    sweep = load_sweep(args.sweep_file)
    model_params, _, notes = prepare(sweep, hub_optional=True)
    sizes = ", ".join(f"{m}: {n:,} params" if n else f"{m}: ? params" for m, n in model_params.items())
    print(f"{args.sweep_file}: ok: sweep {sweep.name!r}, {sweep.num_trials} trials, task {sweep.task.name!r}, "
          f"objective {sweep.objective} ({sweep.mode}); models {sizes}")
    for note in notes:
        print(f"  note: {note}")
    return 0


def cmd_report(args) -> int:
    from ftray.report import build_report, format_report, load_run, write_report_files

    run = load_run(args.run_dir)
    report = build_report(run, target=args.target)
    written = [] if args.no_files else write_report_files(run, report)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(run, report))
        if written:
            print("\nwritten: " + ", ".join(written))
    return 0


_COMMANDS = {"run": cmd_run, "resume": cmd_resume, "validate": cmd_validate, "report": cmd_report}

if __name__ == "__main__":
    sys.exit(main())
