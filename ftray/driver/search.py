"""Ray Tune on the driver: the search space, the searcher and scheduler, the Tuner, run and resume.

What a trial does is ftray/driver/trial.py; what it needs and how many run at once, ftray/driver/resources.py;
what the run leaves on disk, ftray/results/runfolder.py.
"""

from __future__ import annotations

import copy
import functools
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from ftray import raypatches
from ftray.results import runfolder as rf
from ftray import storage as st
from ftray.errors import FtrayInputError
from ftray.tasks.metrics import sign
from ftray.driver.preflight import check_fits_here, check_run_name, check_storage, prepare
from ftray.spec.space import is_domain, is_grid
from ftray.driver.resources import check_gpu_fit, fmt_resources, plan_resources, trial_request, trial_shapes
from ftray.spec.sweep import Sweep, diff_descriptions


class DefineByRun:
    """The Optuna search space, written from the sweep's Tune space.

    Trial number i takes cell i of the cycle over the ladder (with round-robin model sampling) and
    over every `tune.grid_search` in the space (Sweep.grid_cells), so each rung and grid point gets its
    share of the trials; Optuna samples the rest. Settings in `per_model` (the learning rate, by
    default) are suggested under a name per model ("lr/tiny-m"), so Optuna learns a separate value for
    each size.
    The values a trial uses are returned under their plain names, which is what Tune, W&B and the
    report see.
    """

    def __init__(self, sweep: Sweep):
        from ray.tune.search.optuna import OptunaSearch

        self.space = dict(sweep.space)
        self.per_model = tuple(sweep.search.per_model)
        self.cells = sweep.grid_cells()
        self.distributions = OptunaSearch.convert_search_space(
            {k: v for k, v in self.space.items() if is_domain(v) and k not in self.cells[0]}
        )

    def __call__(self, trial) -> dict:
        out: dict[str, Any] = dict(self.cells[trial.number % len(self.cells)])
        if "model" not in out:
            model = self.space["model"]
            out["model"] = self._suggest(trial, "model", self.distributions["model"]) if is_domain(model) else model
        for key, value in self.space.items():
            if key in out:
                continue
            if key in self.distributions:
                name = f"{key}/{out['model']}" if key in self.per_model else key
                out[key] = self._suggest(trial, name, self.distributions[key])
            else:
                out[key] = value
        return out

    @staticmethod
    def _suggest(trial, name, dist):
        import optuna.distributions as od

        if isinstance(dist, od.CategoricalDistribution):
            return trial.suggest_categorical(name, dist.choices)
        if isinstance(dist, od.IntDistribution):
            return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def sampler(sweep: Sweep):
    """Optuna's sampler for the sweep: TPE (seeded), or the random sampler for search="random"."""
    import optuna

    seed = sweep.trial.seed
    if sweep.search.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, sweep.search.num_trials // 3)))


class _OptunaSearch(OptunaSearch):
    # A report without the objective (a trial that diverged stops before its evaluation) is not a
    # point on its learning curve: Tune's OptunaSearch would fail on the missing key. The trial's end
    # still reaches Optuna, as pruned. A trial Optuna never suggested (`--restart-errored` runs an
    # errored trial again as a new Tune trial) is not Optuna's to hear of: Tune's would fail on its id.
    def on_trial_result(self, trial_id, result):
        if self.metric in result and raypatches.optuna_suggested(self, trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        if raypatches.optuna_suggested(self, trial_id):
            super().on_trial_complete(trial_id, result, error)


class KeepHistory(Callback):
    """A resumed trial goes on appending to the history it had reported.

    Tune's loggers append a trial's reports to a file in the driver's staging folder, which replaces
    the stored one at each sync; on a resume they fetch the stored file first only for a trial Tune
    holds a checkpoint of. ftray's trials keep their checkpoints themselves (Train's run, or ftray in
    the trial's process), so a resumed trial's earlier reports were lost. This fetches them (Tune runs
    a sweep's own callbacks before its loggers)."""

    def on_trial_start(self, iteration, trials, trial, **info):
        import pyarrow.fs

        fs, stored = trial.storage.storage_filesystem, trial.storage.trial_fs_path
        for name in rf.HISTORY_FILES:
            local = os.path.join(trial.local_path, name)
            if os.path.exists(local):  # this trial has started before in this session
                continue
            if fs.get_file_info(f"{stored}/{name}").type == pyarrow.fs.FileType.File:
                os.makedirs(trial.local_path, exist_ok=True)
                pyarrow.fs.copy_files(f"{stored}/{name}", local, source_filesystem=fs)


def _callbacks(sweep: Sweep, run_dir: str, record: rf.RunRecord) -> list:
    """Both phases' Tune callbacks: W&B (one group per run folder) and the resumed trials' history."""
    from ftray.driver.tracking import WandbTracking

    return [WandbTracking(sweep.wandb, group=st.basename(run_dir), model_params=record.model_params,
                          trial_config=sweep.trial_config), KeepHistory()]


def searcher(sweep: Sweep):
    """Optuna over the define-by-run space (Tune's random search would not know the ladder's cycle)."""
    return _OptunaSearch(space=DefineByRun(sweep), metric=sweep.objective, mode=sweep.mode, sampler=sampler(sweep))


def scheduler(sweep: Sweep):
    """The sweep's Tune scheduler: ASHA per model size where asked, else Fifo (both: schedulers.py)."""
    from ftray.driver.schedulers import Fifo, PerModelASHA

    asha = sweep.search.asha
    if asha is None:
        return Fifo()

    return PerModelASHA(
        metric=asha.metric or sweep.objective, mode=sweep.asha_mode(), grace_period=asha.grace_steps,
        reduction_factor=asha.reduction_factor, max_t=sweep.trial.steps or 10**9, per_model=asha.per_model,
    )


def init_ray(address: str | None, dashboard: bool = True) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Inside `ray job submit` RAY_ADDRESS points at the cluster: join it. Without one, start a
    # local Ray sized to this machine.
    # A local Ray runs its workers at the same priority as everything else (Ray's default is nice 15):
    # with the workers niced, every wake-up of Ray's own daemons preempts a Train worker, and its DDP
    # peers wait for it at the next all-reduce (README, Benchmarks). A cluster's Ray is started by
    # `ray start` and keeps its own setting.
    # The dashboard is on where a trial is a Train run: Ray Train's PlacementGroupCleaner asks its state
    # API whether a trial's controller still lives, and without it a trial stopped by ASHA kept its
    # placement group, so the next trial waited forever. Trials in their Tune trials' processes need
    # none of it (its three processes are a few CPU-seconds per sweep).
    kwargs: dict[str, Any] = {"address": address} if address else {
        **raypatches.workers_not_niced(), "include_dashboard": dashboard}
    ray.init(log_to_driver=True, logging_level="WARNING", **kwargs)
    if address:
        print(f"ftray: joined the Ray cluster at {st.redact(address)}", flush=True)
    else:
        print("ftray: started a local Ray (set RAY_ADDRESS or --address to use a cluster)", flush=True)


def _run_folder(sweep: Sweep, storage: str, name: str, resume: bool,
                new_run: bool) -> tuple[str, rf.RunRecord | None, Sweep]:
    """The run folder to use, its record when the same sweep already ran there (then it resumes), and
    the sweep to run (as_recorded, when it resumes).

    A run folder holding a *different* sweep definition is never mixed with this one: that is refused
    with what changed, unless `new_run` asks for a fresh folder (name-2, name-3, ...).
    """
    run_dir = st.join(storage, name)
    previous = rf.read_record(run_dir)
    if previous is None:
        if resume:
            rf.require_record(run_dir)
        return run_dir, None, sweep
    resumed, recorded = as_recorded(sweep, previous.sweep)
    changes = diff_descriptions(recorded, resumed.describe())
    if changes and new_run:
        return st.join(storage, rf.free_name(storage, name)), None, sweep
    if changes:
        raise FtrayInputError(
            f"{st.redact(run_dir)} holds a run of a different sweep definition, so it cannot be resumed with this one. "
            f"Changed: {'; '.join(changes[:8])}{' ...' if len(changes) > 8 else ''}. "
            "Use --name for another run folder, or --new-run to get one"
        )
    return run_dir, previous, resumed


# Settings added to ftray since a run may have been made, with the value that reproduces how such a
# run ran: resumed by a newer ftray, it goes on as it started.
AS_BEFORE = {("scaling", "one_worker_in_trial"): False, ("scaling", "gpu_memory_gb"): None,
             ("trial", "pack_length"): None, ("trial", "batch_tokens"): None, ("trial", "fused_loss"): "off",
             ("trial", "compile"): False}


def as_recorded(sweep: Sweep, recorded: Mapping) -> tuple[Sweep, dict]:
    """`sweep` and the recorded run's description (`describe()`), each setting of AS_BEFORE that the run
    predates set in both as the run ran."""
    sweep, recorded = copy.copy(sweep), copy.deepcopy(dict(recorded))
    for (group, key), value in AS_BEFORE.items():
        if key not in recorded[group]:
            recorded[group][key] = value
            setattr(sweep, group, replace(getattr(sweep, group), **{key: value}))
    return sweep, recorded


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
    run_dir, previous, sweep = _run_folder(sweep, storage, name, options.resume, options.new_run)
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
    if sweep.search.repeats:
        _confirm(sweep, run_dir, record, prepared, resources, options)
    return run_dir


# Ray Tune copies these from the driver's environment into every trial actor's runtime_env
# (ray/tune/execution/class_cache.py), and Ray's runtime-env agent writes that into its log. Secrets stay
# out of runtime_env: a local Ray's workers inherit the environment Ray was started in anyway, and a
# cluster's nodes need credentials of their own (an IAM role, or .ftray/secrets.env: cluster.yaml).
CREDENTIALS_NOT_PROPAGATED = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"}


def _keep_credentials_out_of_runtime_env() -> None:
    raypatches.keep_out_of_runtime_env(CREDENTIALS_NOT_PROPAGATED)


def _trainable(sweep: Sweep, run_dir: str, experiment_dir: str, prepared, resources, options: Options):
    from ray import tune

    from ftray.driver.trial import TrialSetup, run_trial, train_env

    _keep_credentials_out_of_runtime_env()

    local = not (options.ray_address or os.environ.get("RAY_ADDRESS"))
    setup = TrialSetup(sweep=sweep, run_dir=run_dir, experiment_dir=experiment_dir,
                       tokenizer_json=prepared.tokenizer_json, cpus_per_worker=resources.cpus_per_worker,
                       env=train_env(local=local))
    # A trial that stops without the objective (diverged, did not fit) is a result, not an error:
    # Optuna is told it was pruned, and the report lists why.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    request = functools.partial(_trial_resources, sweep=sweep, cpus_per_worker=resources.cpus_per_worker)
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup), request)


def _trial_resources(sampled: dict, sweep: Sweep, cpus_per_worker: float):
    from ray import tune

    return tune.PlacementGroupFactory([trial_request(sweep, sweep.trial_config(sampled).model, cpus_per_worker)])


def _tuner(sweep: Sweep, run_dir: str, record: rf.RunRecord, prepared, resources, options: Options, resume: bool):
    from ray import tune

    trainable = _trainable(sweep, run_dir, run_dir, prepared, resources, options)
    if resume and tune.Tuner.can_restore(run_dir):
        # Finished trials stay finished; unfinished ones go on from their latest checkpoints; the
        # searcher comes back with the state it had (and ASHA's rungs are refilled, schedulers.py).
        return tune.Tuner.restore(run_dir, trainable, resume_unfinished=True, resume_errored=options.resume_errored,
                                  restart_errored=options.restart_errored)
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
                                  callbacks=_callbacks(sweep, run_dir, record), verbose=1),
    )


def repeat_points(sweep: Sweep, trials: list[rf.TuneTrial]) -> list[dict]:
    """The confirmation phase's trials: the best finished configuration of each rung, with
    `sweep.search.repeats` more seeds each (seed + 1, seed + 2, ...)."""
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

    from ftray.driver.schedulers import Fifo

    confirm_dir = st.join(run_dir, rf.CONFIRM)
    trainable = _trainable(sweep, run_dir, confirm_dir, prepared, resources, options)
    if tune.Tuner.can_restore(confirm_dir):
        tune.Tuner.restore(confirm_dir, trainable, resume_unfinished=True, resume_errored=options.resume_errored,
                           restart_errored=options.restart_errored).fit()
        return
    points = repeat_points(sweep, rf.tune_trials(run_dir))
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
            scheduler=Fifo(), max_concurrent_trials=resources.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(name=rf.CONFIRM, storage_path=run_dir, verbose=1,
                                  callbacks=_callbacks(sweep, run_dir, record)),
    ).fit()


def resume(run_dir: str, options: Options = Options()) -> str:
    """Go on with a sweep run from its folder: finished trials stay, unfinished ones continue."""
    run_dir = st.normalize(run_dir)
    sweep = rf.sweep_of_run(run_dir)
    return run(sweep, replace(options, storage=st.dirname(run_dir), name=st.basename(run_dir), resume=True,
                              sweep_file=rf.require_record(run_dir).sweep_file))
