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

    p = sub.add_parser("eval", help="score the frontier trials' saved adapters on new rows of the task")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True, help="a data file in the task's format (ViGGO: CSV mr,ref)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("compare", help="the fronts of several sweep runs on one plot and table")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default="compare.png", help="where the plot goes (default: compare.png)")
    p.add_argument("--json", action="store_true")

    for name in ("run", "resume"):
        sub.choices[name].add_argument("--keep-all-checkpoints", action="store_true",
                                       help="keep every trial's checkpoints (default: only the frontier's)")

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
    return _finish(run_dir, keep_all=args.keep_all_checkpoints)


def cmd_resume(args) -> int:
    from ftray.search import resume

    run_dir = resume(args.run_dir, ray_address=args.address, resume_errored=args.resume_errored,
                     restart_errored=args.restart_errored)
    return _finish(run_dir, keep_all=args.keep_all_checkpoints)


def _finish(run_dir: str, keep_all: bool = False) -> int:
    """The report at the end of a run: printed, written to the run folder, and sent to W&B."""
    from ftray.report import build_report, format_report, load_run, write_report_files
    from ftray.search import prune_checkpoints
    from ftray.tracking import log_sweep_summary

    run = load_run(run_dir)
    if not keep_all:
        pruned = prune_checkpoints(run)
        if pruned:
            print(f"ftray: removed the checkpoints of {len(pruned)} trials off the frontier "
                  "(--keep-all-checkpoints keeps them)", flush=True)
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


def cmd_eval(args) -> int:
    from ftray.rescore import format_rescore, rescore

    result = rescore(args.run_dir, args.data)
    print(json.dumps(result) if args.json else format_rescore(result))
    return 0


def cmd_compare(args) -> int:
    from ftray.frontier import default_reference, front_hypervolume
    from ftray.plots import compare_plot
    from ftray.report import load_run

    runs = [load_run(d) for d in args.run_dirs]
    objectives = {(r["objective"]["metric"], r["objective"]["mode"]) for r in runs}
    if len(objectives) > 1:
        raise FtrayInputError(f"the runs have different objectives ({sorted(objectives)}); compare runs of one objective")
    metric, mode = objectives.pop()
    ref = default_reference([r["trials"] for r in runs], mode)
    rows = [{"run_dir": r["run_dir"], "trials": len(r["trials"]), "frontier": r["frontier"],
             "hypervolume": front_hypervolume(r["trials"], mode, ref)} for r in runs]
    plot = compare_plot([(os.path.basename(r["run_dir"]), r["trials"]) for r in runs], metric, mode, args.out)
    if args.json:
        print(json.dumps({"objective": {"metric": metric, "mode": mode}, "reference": list(ref), "runs": rows,
                          "plot": plot}))
        return 0
    print(f"fronts of {metric} ({mode}) against parameters; hypervolume against the common reference "
          f"({metric}={ref[0]:.4g}, params={ref[1]:,.0f}; size axis log10(params))")
    for row in rows:
        print(f"  {row['run_dir']}: hypervolume {row['hypervolume']:.4f}, {row['trials']} trials, "
              f"front {', '.join(row['frontier']) or '-'}")
    print(f"plot: {plot}")
    return 0


_COMMANDS = {"run": cmd_run, "resume": cmd_resume, "validate": cmd_validate, "report": cmd_report,
             "eval": cmd_eval, "compare": cmd_compare}

if __name__ == "__main__":
    sys.exit(main())
