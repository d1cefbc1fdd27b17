"""Ray Tune on the driver: the Tuner of a sweep, run and resume, and the confirmation phase (Search.repeats).

The searcher is ftray/driver/searcher.py, the scheduler ftray/driver/schedulers.py; Ray's start-up,
ftray/driver/raystart.py; the run folder's set-up for a new or resumed run, ftray/driver/resuming.py.
What a trial does is ftray/driver/trial.py; what it needs and how many run at once,
ftray/driver/resources.py; what the run leaves on disk, ftray/results/runfolder.py.
"""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass, replace

from ftray import raypatches
from ftray.results import runfolder as rf
from ftray import storage as st
from ftray.errors import FtrayInputError, SweepInterrupted
from ftray.tasks.metrics import sign
from ftray.driver.preflight import check_fits_here, check_run_name, check_storage, prepare
from ftray.driver.raystart import init_ray, keep_credentials_out_of_trials
from ftray.driver.resources import check_gpu_fit, fmt_resources, plan_resources, trial_request, trial_shapes
from ftray.driver.resuming import KeepHistory, run_folder
from ftray.driver.schedulers import FIFOKeepingErrors, scheduler
from ftray.driver.searcher import searcher
from ftray.spec.sweep import Sweep


@dataclass(frozen=True)
class Options:
    """How `run` is asked to run a sweep (the CLI's flags)."""

    storage: str | None = None
    name: str | None = None
    resume: bool = False
    new_run: bool = False
    resume_errored: bool = False
    restart_errored: bool = False
    ray_address: str | None = None
    sweep_file: str | None = None


def run(sweep: Sweep, options: Options = Options()) -> str:
    """Run a sweep, or go on with it when its run folder already holds the same sweep; returns the folder."""
    # Credentials go from the URI into the environment first: Ray records the URI it is given.
    storage = st.without_credentials(options.storage or sweep.storage)
    name = check_run_name(options.name) if options.name else sweep.name
    check_storage(storage)
    storage = st.normalize(storage)
    run_dir, previous, sweep = run_folder(sweep, storage, name, options.resume, options.new_run)
    if previous is not None and not (options.resume_errored or options.restart_errored) and _done(sweep, run_dir):
        # Nothing for Tune to do: no checks, no Ray (the held-out scoring starts one if a trial needs it).
        print(f"ftray: sweep {sweep.name!r} in {st.redact(run_dir)}: every trial has ended; nothing to train",
              flush=True)
        return run_dir
    print(f"ftray: checking sweep {sweep.name!r}: data, models and LoRA targets, parameter counts", flush=True)
    prepared = prepare(sweep)
    gpu_plan = check_gpu_fit(sweep, prepared.memory)
    check_fits_here(sweep, options.ray_address)
    for line in gpu_plan:
        print(f"ftray: {line}", flush=True)

    import ray

    init_ray(options.ray_address, dashboard=sweep.uses_train())
    try:
        resources = plan_resources(sweep, ray.cluster_resources())
    except FtrayInputError:
        ray.shutdown()
        raise
    print(
        f"ftray: {'resuming' if previous else 'starting'} sweep {sweep.name!r} in {st.redact(run_dir)}: "
        f"{sweep.search.num_trials} trials, {resources.max_concurrent_trials} at a time; each trial "
        f"{trial_shapes(sweep, resources)}; cluster {fmt_resources(resources.cluster)}",
        flush=True,
    )
    record = previous or rf.RunRecord(
        sweep=sweep.describe(), objective={"metric": sweep.objective, "mode": sweep.mode},
        model_params=prepared.model_params, metrics=sweep.metric_names(), workers={m.id: sweep.workers_for(m.id) for m in sweep.models},
        gpus_per_worker={m.id: sweep.gpus_for(m.id) for m in sweep.models},
        sweep_file=os.path.abspath(options.sweep_file) if options.sweep_file else None,
    )
    if previous is not None:
        record.resumed.append(time.strftime("%Y-%m-%dT%H:%M:%S"))
    record.resources = {"cpus_per_worker": resources.cpus_per_worker,
                        "max_concurrent_trials": resources.max_concurrent_trials}
    rf.write_record(run_dir, record)
    if options.sweep_file and previous is None:
        rf.copy_sweep_file(run_dir, options.sweep_file)
    _tuner(sweep, run_dir, record, prepared, resources, options, resume=previous is not None).fit()
    all_ended(run_dir, sweep.search.num_trials, run_dir)
    if sweep.search.repeats:
        _confirm(sweep, run_dir, record, prepared, resources, options)
    return run_dir


def unfinished(experiment_dir: str, trials: int) -> int:
    """How many of an experiment's `trials` are neither finished nor errored, read from Tune's stored
    state (rf.trial_statuses): after a Ctrl-C, in memory, Tune marks the trials it stopped TERMINATED."""
    return trials - sum(status in ("TERMINATED", "ERROR") for status in rf.trial_statuses(experiment_dir))


def all_ended(experiment_dir: str, trials: int, run_dir: str) -> None:
    """SweepInterrupted where Tune's fit returned with trials unfinished: on Ctrl-C it saves its state and
    returns as if done, and a report of the trials so far would read as the sweep's."""
    left = unfinished(experiment_dir, trials)
    if left > 0:
        raise SweepInterrupted(st.redact(run_dir), left, trials)


def _done(sweep: Sweep, run_dir: str) -> bool:
    """Every trial of the search ended, and of the confirmation phase where the sweep has one."""
    if unfinished(run_dir, sweep.search.num_trials) > 0:
        return False
    if not sweep.search.repeats:
        return True
    points = repeat_points(sweep, rf.tune_trials(run_dir))
    confirm = st.join(run_dir, rf.CONFIRM)
    return not points or (bool(rf.trial_statuses(confirm)) and unfinished(confirm, len(points)) == 0)


def _trainable(sweep: Sweep, run_dir: str, experiment_dir: str, prepared, resources, options: Options):
    from ray import tune

    from ftray.driver.trial import TrialSetup, run_trial

    keep_credentials_out_of_trials()

    local = not (options.ray_address or os.environ.get("RAY_ADDRESS"))
    setup = TrialSetup(sweep=sweep, run_dir=run_dir, experiment_dir=experiment_dir,
                       tokenizer_json=prepared.tokenizer_json, cpus_per_worker=resources.cpus_per_worker,
                       env=raypatches.train_env(local=local))
    # A trial that stops without the objective (diverged, did not fit) is a result, not an error:
    # Optuna is told it was pruned, and the report lists why.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Tune's output is off (verbose=0), but its newer output engine still prints a configuration box and a
    # TensorBoard hint at a staging folder, not at the run folder; the older one prints only its per-trial
    # lines, which ftray gives it silenced (progress.TuneTrialLinesOff).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # a user who asked for the newer engine keeps it
    raypatches.quiet_tune_resume_hint()  # ftray says how to resume (SweepInterrupted)
    request = functools.partial(_trial_resources, sweep=sweep, cpus_per_worker=resources.cpus_per_worker)
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup), request)


def _trial_resources(sampled: dict, sweep: Sweep, cpus_per_worker: float):
    from ray import tune

    return tune.PlacementGroupFactory([trial_request(sweep, sweep.trial_config(sampled).model, cpus_per_worker)])


def _callbacks(sweep: Sweep, run_dir: str, record: rf.RunRecord, trials: int) -> list:
    """Both phases' Tune callbacks: W&B (one group per run folder), the resumed trials' history, a line
    per trial started and ended (Tune's own output is off: verbose=0), TensorBoard given numbers only."""
    from ftray.driver.progress import TensorBoardNumbers, TrialLines, TuneTrialLinesOff
    from ftray.driver.tracking import WandbTracking

    callbacks = [WandbTracking(sweep.wandb, group=st.basename(run_dir), model_params=record.model_params,
                               trial_config=sweep.trial_config), KeepHistory(), TrialLines(trials, sweep.objective), TuneTrialLinesOff()]
    try:
        callbacks.append(TensorBoardNumbers())
    except ImportError:  # no tensorboardX: Tune would add no TensorBoard logger either
        pass
    return callbacks


def _tuner(sweep: Sweep, run_dir: str, record: rf.RunRecord, prepared, resources, options: Options, resume: bool):
    from ray import tune

    trainable = _trainable(sweep, run_dir, run_dir, prepared, resources, options)
    if resume and tune.Tuner.can_restore(run_dir):
        # Finished trials stay finished; unfinished ones go on from their latest checkpoints; the
        # searcher comes back with the state it had (and ASHA's rungs are refilled, schedulers.py).
        return _restore(run_dir, run_dir, trainable, options)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=sweep.objective, mode=sweep.mode, num_samples=sweep.search.num_trials,
            search_alg=searcher(sweep), scheduler=scheduler(sweep),
            max_concurrent_trials=resources.max_concurrent_trials,
            # One process serves trial after trial of the same resource request (about 2.5 s less
            # between trials on 2 CPUs; a trial trained in it finds its imports done). Not with ASHA
            # where a trial is a Train run: a trial ASHA stops must take its Train run down with it, and
            # only ending its process does that.
            reuse_actors=sweep.search.asha is None or not sweep.uses_train(),
        ),
        run_config=tune.RunConfig(name=st.basename(run_dir), storage_path=st.dirname(run_dir),
                                  callbacks=_callbacks(sweep, run_dir, record, sweep.search.num_trials), verbose=0),
    )


def _restore(experiment_dir: str, run_dir: str, trainable, options: Options):
    """Tune's Tuner.restore of `experiment_dir` (the run folder, or its confirmation phase), its search
    made to follow the trials it restores (raypatches.search_follows_restored_trials), with a run folder
    written by an older ftray's module layout refused in one line instead of an unpickling error."""
    from ray import tune

    raypatches.search_follows_restored_trials()
    try:
        return tune.Tuner.restore(experiment_dir, trainable, resume_unfinished=True,
                                  resume_errored=options.resume_errored, restart_errored=options.restart_errored)
    except (ModuleNotFoundError, AttributeError) as e:
        missing = older_ftray_name(e)
        if missing is None:
            raise
        raise FtrayInputError(
            f"{st.redact(run_dir)} was written by an older ftray whose layout this version cannot restore "
            f"(Tune's tuner.pkl names {missing}); `ftray report` still reads it: start the sweep again, or "
            "resume it with the ftray version that wrote it") from e


def older_ftray_name(error: BaseException) -> str | None:
    """The ftray module or attribute an unpickling `error` found missing (one an older ftray's layout
    pickled: ftray.search, ftray.schedulers.Fifo, ...), or None where the error is not about ftray's."""
    if isinstance(error, ModuleNotFoundError):
        name = error.name or ""
        return name if name == "ftray" or name.startswith("ftray.") else None
    if isinstance(error, AttributeError):
        # pickle: "Can't get attribute 'Fifo' on <module 'ftray.schedulers' from '...'>"
        found = re.search(r"attribute '([^']+)' on <module '(ftray(?:\.[\w.]+)?)'", str(error))
        return f"{found[2]}.{found[1]}" if found else None
    return None


def repeat_points(sweep: Sweep, trials: list[rf.TuneTrial]) -> list[dict]:
    """The confirmation phase's trials: the best finished configuration of each rung, with
    `sweep.search.repeats` more seeds each (seed + 1, seed + 2, ...).

    Reads Tune's reports, not TrialResult: it needs Tune's sampled params, and TrialResult's scored and not
    stopped_early is another selection (TERMINATED status instead of an "ok" outcome, non-finite objectives
    dropped, a report without total_steps counted as finished)."""
    best: dict[str, tuple[float, dict]] = {}
    for t in trials:
        value = t.last.get(sweep.objective)
        finished = t.last.get("step") == t.last.get("total_steps")  # not stopped early by ASHA
        if t.record is None or t.record.outcome is None or t.record.outcome.kind != "ok" or value is None \
                or not finished:
            continue
        model = t.record.config.model
        if model not in best or sign(sweep.mode) * (value - best[model][0]) > 0:
            best[model] = (value, t.params)
    seed = lambda p: p.get("seed", sweep.trial.seed)  # noqa: E731
    return [dict(params, seed=seed(params) + k) for _, params in best.values()
            for k in range(1, sweep.search.repeats + 1)]


def _confirm(sweep: Sweep, run_dir: str, record: rf.RunRecord, prepared, resources, options: Options) -> None:
    """Search.repeats: the best configuration of each rung again with more seeds, as ordinary trials."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    confirm_dir = st.join(run_dir, rf.CONFIRM)
    trainable = _trainable(sweep, run_dir, confirm_dir, prepared, resources, options)
    points = repeat_points(sweep, rf.tune_trials(run_dir))  # the same on a resume: the search's trials have ended
    if tune.Tuner.can_restore(confirm_dir):
        _restore(confirm_dir, run_dir, trainable, options).fit()
        all_ended(confirm_dir, len(points), run_dir)
        return
    if not points:
        print("ftray: no trial finished with a score: nothing to repeat", flush=True)
        return
    print(f"ftray: confirmation phase: the best configuration of each rung with {sweep.search.repeats} more "
          f"seeds ({len(points)} trials)", flush=True)
    # Tune takes preset points only for keys its param space has.
    space = {k: tune.choice(sorted({p[k] for p in points}, key=repr)) for k in points[0]}
    tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=sweep.objective, mode=sweep.mode, num_samples=len(points),
            search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=resources.max_concurrent_trials),
            scheduler=FIFOKeepingErrors(), max_concurrent_trials=resources.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(name=rf.CONFIRM, storage_path=run_dir, verbose=0,
                                  callbacks=_callbacks(sweep, run_dir, record, len(points))),
    ).fit()
    all_ended(confirm_dir, len(points), run_dir)


def resume(run_dir: str, options: Options = Options()) -> str:
    """Go on with a sweep run from its folder: finished trials stay, unfinished ones continue."""
    run_dir = st.normalize(run_dir)
    sweep = rf.sweep_of_run(run_dir)
    return run(sweep, replace(options, storage=st.dirname(run_dir), name=st.basename(run_dir), resume=True,
                              sweep_file=rf.require_record(run_dir).sweep_file))
