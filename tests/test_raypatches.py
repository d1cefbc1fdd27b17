"""Each of ftray's uses of Ray's internals (ftray/raypatches.py) still finds what it relies on in the
installed Ray, and still does what it is for: a Ray upgrade that moves one fails here, by name. No Ray
cluster is started; seconds in all."""

import inspect
import json
import logging
from types import SimpleNamespace

import pytest

from ftray import raypatches


def test_workers_not_niced_is_a_system_config_ray_init_reads():
    import inspect

    import ray
    from ray._private import ray_constants

    kwargs = raypatches.workers_not_niced()
    assert kwargs == {"_system_config": {"worker_niceness": 0}}
    assert 'kwargs.pop("_system_config"' in inspect.getsource(ray.init)  # ray.init still takes it
    assert ray_constants.RAY_WORKER_NICENESS == "RAY_worker_niceness"  # and RayConfig still has the key


def test_credentials_stay_out_of_the_trial_actors_runtime_env(monkeypatch):
    import ray
    from ray.tune.execution import class_cache

    from ftray.driver.raystart import CREDENTIALS_NOT_PROPAGATED, keep_credentials_out_of_trials

    # Tune (unpatched) copies them: else the patch protects nothing and Ray changed how it propagates them.
    assert CREDENTIALS_NOT_PROPAGATED <= set(class_cache.ENV_VARS_TO_PROPAGATE)
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", class_cache.ENV_VARS_TO_PROPAGATE)  # restored after
    kept = set(class_cache.ENV_VARS_TO_PROPAGATE) - CREDENTIALS_NOT_PROPAGATED
    for name in CREDENTIALS_NOT_PROPAGATED | {next(iter(kept))}:
        monkeypatch.setenv(name, "secret")
    made = []
    monkeypatch.setattr(ray, "remote", lambda **options: lambda cls: made.append(options) or cls)

    keep_credentials_out_of_trials()
    class_cache._ActorClassCache().get(type("Trainable", (), {}))
    (options,) = made
    env_vars = options["runtime_env"]["env_vars"]
    assert not CREDENTIALS_NOT_PROPAGATED & set(env_vars)
    assert next(iter(kept)) in env_vars  # the others still go


def test_optuna_suggested_reads_the_searchers_optuna_trials():
    from ftray import Sweep, SyntheticTask
    from ftray.driver.searcher import searcher

    search = searcher(Sweep(name="s", task=SyntheticTask(n_train=8, n_valid=4, n_test=4), models=["tiny-xs"],
                            num_trials=2))
    assert not raypatches.optuna_suggested(search, "a")
    search.suggest("a")
    assert raypatches.optuna_suggested(search, "a") and not raypatches.optuna_suggested(search, "b")


def _controller():
    """Tune's controller with no more of it than its snapshot bookkeeping (no cluster, no experiment)."""
    from ray.tune.execution.tune_controller import TuneController

    controller = TuneController.__new__(TuneController)
    controller._trials_to_cache, controller._trial_metadata = set(), {}
    return controller


def test_a_marked_trial_is_in_the_next_snapshot_of_the_experiment_state():
    from ray.tune.execution.tune_controller import TuneController

    from ftray.driver.schedulers import FIFOKeepingErrors

    assert callable(getattr(TuneController, "_mark_trial_to_checkpoint", None))
    class Trial:  # hashable, as Tune's trials are
        trial_id = "t1"

        def get_json_state(self):
            return "ERROR state"

    trial = Trial()
    controller = _controller()
    raypatches.mark_trial_for_snapshot(controller, trial)
    assert controller._get_trial_checkpoints() == {"t1": "ERROR state"}

    controller = _controller()
    FIFOKeepingErrors().on_trial_error(controller, trial)  # the scheduler a sweep without ASHA runs
    assert controller._get_trial_checkpoints() == {"t1": "ERROR state"}
    raypatches.mark_trial_for_snapshot(SimpleNamespace(), trial)  # a Ray without the method: nothing marked


def _search(num_trials: int = 3):
    """ftray's Optuna searcher as Tune runs it for a sweep one trial at a time: SearchGenerator(ConcurrencyLimiter(...))."""
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    from ftray import Sweep, SyntheticTask
    from ftray.driver.searcher import searcher

    sweep = Sweep(name="s", task=SyntheticTask(n_train=8, n_valid=4, n_test=4), models=["tiny-xs"],
                  num_trials=num_trials)
    optuna = searcher(sweep)
    search = SearchGenerator(ConcurrencyLimiter(optuna, max_concurrent=1))
    search._total_samples = num_trials  # what Tune sets from the experiment's num_samples
    return search, optuna, sweep.objective


def _trial(trial_id, status, result=None):
    from ray.tune.experiment import Trial

    trial = Trial("__fake", config={}, trial_id=trial_id, stub=True)
    trial.set_status(status)
    trial.run_metadata.last_result = result or {}
    return trial


def test_a_search_state_a_snapshot_behind_its_trials_is_aligned_with_them():
    """The search state stored while the first trial ran, the trials' snapshot after the second began."""
    import optuna

    search, ot, objective = _search()
    limiter = search.searcher
    limiter.suggest("t1")
    search._counter = 1
    trials = [_trial("t1", "TERMINATED", {objective: 0.25, "step": 30}), _trial("t2", "PENDING")]
    said = raypatches.align_search(search, trials)
    assert "created 1 trial, the snapshot holds 2" in said and "t1 as running" in said
    assert search._counter == 2 and limiter.live_trials == set() and limiter.num_unfinished_live_trials == 0
    (told,) = ot._ot_study.trials  # Optuna heard the finished trial's result, as Tune would have told it
    assert told.state == optuna.trial.TrialState.COMPLETE and told.value == 0.25
    assert raypatches.align_search(search, trials) == ""  # aligned: nothing more to do
    assert limiter.suggest("t3") is not None  # the search goes on: the limit's slot is free


def test_a_search_state_ahead_of_its_trials_makes_the_lost_trial_again():
    """The search state stored after the second trial was made, the trials' snapshot before."""
    import optuna

    search, ot, _ = _search()
    limiter = search.searcher
    limiter.suggest("t2")
    search._counter = 2
    said = raypatches.align_search(search, [_trial("t1", "TERMINATED", {"step": 30})])
    assert "created 2 trials, the snapshot holds 1" in said and "t2 as running, which the snapshot lacks" in said
    assert search._counter == 1 and not search.is_finished()
    assert ot._ot_study.trials[0].state == optuna.trial.TrialState.FAIL and not limiter.live_trials


def test_the_alignment_runs_after_tunes_restore_of_the_trials(monkeypatch, capsys):
    import inspect

    from ray.tune.execution.tune_controller import TuneController

    # Tune's resume restores the search state, then requeues the restored trials: the patch runs after both.
    source = inspect.getsource(TuneController.resume)
    assert source.index("restore_from_dir") < source.index("self._requeue_restored_trials(")
    requeued = []
    monkeypatch.setattr(TuneController, "_requeue_restored_trials",
                        lambda self, trials, config: requeued.append(trials) or self._trials.extend(trials))
    raypatches.search_follows_restored_trials()
    raypatches.search_follows_restored_trials()  # installed once
    search, _, objective = _search()
    search.searcher.suggest("t1")
    search._counter = 1
    controller = _controller()
    controller._search_alg, controller._trials = search, []
    trials = [_trial("t1", "TERMINATED", {objective: 0.5}), _trial("t2", "PENDING")]
    TuneController._requeue_restored_trials(controller, trials, None)
    assert requeued == [trials] and search._counter == 2 and not search.searcher.live_trials
    assert capsys.readouterr().out.count("ftray: Tune's stored search state did not match") == 1


def test_asha_holds_replays_and_counts():
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    asha = AsyncHyperBandScheduler(metric="loss", mode="min", time_attr="step", grace_period=1, reduction_factor=2,
                                   max_t=8, brackets=1)
    before, after = SimpleNamespace(trial_id="before"), SimpleNamespace(trial_id="after")
    assert not raypatches.asha_holds(asha, before)
    asha.on_trial_add(None, before)
    assert raypatches.asha_holds(asha, before)
    raypatches.asha_replay_result(asha, before, 1, 0.5)  # what it reported before a resume
    assert raypatches.asha_stopped(asha) == 0
    asha.on_trial_add(None, after)
    # Judged against the replayed result (alone at the rung, it would go on), with the mode's sign.
    assert asha.on_trial_result(None, after, {"step": 1, "loss": 0.9}) == TrialScheduler.STOP
    assert raypatches.asha_stopped(asha) == 1
    asha.on_trial_remove(None, before)
    assert not raypatches.asha_holds(asha, before)


def test_trial_storage_is_where_tune_keeps_the_trials_files(tmp_path):
    from pyarrow.fs import LocalFileSystem
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from ftray.driver.schedulers import _reported

    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name="t1")
    trial = Trial("__fake", config={"model": "m"}, trial_id="t1", storage=storage, stub=True)
    fs, path = raypatches.trial_storage(trial)
    assert isinstance(fs, LocalFileSystem) and path == str(tmp_path / "exp" / "t1") == trial.path

    (tmp_path / "exp" / "t1").mkdir(parents=True)
    (tmp_path / "exp" / "t1" / "result.json").write_text(json.dumps({"step": 1, "eval_loss": 2.0}) + "\n")
    trial.run_metadata.last_result = {"step": 1}  # Tune's mark of a trial that reported
    assert _reported(trial) == [{"step": 1, "eval_loss": 2.0}]


def test_train_env_is_read_by_the_installed_ray_train_and_never_overrides_the_user(monkeypatch):
    from pathlib import Path

    import ray.train
    from ray.train.v2._internal import constants

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    env = raypatches.train_env(local=True)
    assert env == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    # A cluster may lose spot nodes: Train's preemption watcher stays on there.
    assert raypatches.train_env(local=False) == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    # Train still names each variable, reads it outside its constants module, and passes it on from a
    # trial's driver to its controller and workers.
    sources = {p: p.read_text() for p in Path(ray.train.__file__).parent.rglob("*.py")}
    for name in env:
        (constant,) = [k for k, v in vars(constants).items() if v == name and k.endswith("_ENV_VAR")]
        assert any(constant in text for p, text in sources.items() if p.name != "constants.py"), name
        assert name in constants.ENV_VARS_TO_PROPAGATE
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    assert raypatches.train_env(local=True) == {}


def test_train_report_lines_are_quieted_by_their_loggers_name():
    from ray.train.v2._internal.execution import context

    assert context.logger.name == context.__file__  # Train still names its logger after the file
    logger = logging.getLogger(context.__file__)
    level = logger.level
    try:
        raypatches.quiet_train_report_lines()
        assert logger.level == logging.WARNING
    finally:
        logger.setLevel(level)


def test_the_token_auth_notice_is_quieted_by_its_loggers_name():
    from ray._private.authentication import authentication_token_setup as auth

    assert auth.logger.name == auth.__name__ and "Token authentication is enabled" in inspect.getsource(auth)
    level = auth.logger.level
    try:
        raypatches.quiet_token_auth_notice()
        assert not auth.logger.isEnabledFor(logging.WARNING) and auth.logger.isEnabledFor(logging.ERROR)
    finally:
        auth.logger.setLevel(level)


def test_tunes_resume_hint_is_dropped_and_its_stop_line_kept():
    from ray.tune import tune

    source = inspect.getsource(tune)
    assert 'f"Experiment has been interrupted, but the most recent state was "' in source  # the text filtered
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    filters = list(tune.logger.filters)
    tune.logger.addHandler(handler)
    try:
        raypatches.quiet_tune_resume_hint()
        raypatches.quiet_tune_resume_hint()  # installed once
        assert tune.logger.name == "ray.tune.tune"
        assert sum(isinstance(f, raypatches._NoRestoreHint) for f in tune.logger.filters) == 1
        tune.logger.warning("Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run.")
        tune.logger.warning("Experiment has been interrupted, but the most recent state was saved.\nResume ...")
        assert seen == ["Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run."]
    finally:
        tune.logger.removeHandler(handler)
        tune.logger.filters[:] = filters


def test_trains_latest_checkpoint_is_read_from_the_snapshot_train_writes(tmp_path):
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (_CheckpointManagerState,
                                                                               _TrainingResultState)

    assert raypatches.train_latest_checkpoint(str(tmp_path)) is None  # a run Train stored nothing for
    older = _TrainingResultState(checkpoint_dir_name="checkpoint_a", metrics={"step": 100})
    latest = _TrainingResultState(checkpoint_dir_name="checkpoint_b", metrics={"step": 200, "eval_loss": 1.5})
    # The snapshot as Train's CheckpointManager writes it (its _save_state: the model's .json()).
    snapshot = _CheckpointManagerState(
        checkpoint_results=[older, latest], checkpoint_report_indices=[1, 2], latest_checkpoint_result=latest,
        pending_training_results=[], pending_validation_specs=[], current_report_index=3,
        validated_checkpoint_dir_names=[], timed_out_validation_checkpoint_dir_names=[],
        failed_validation_checkpoint_dir_names=[])
    (tmp_path / CHECKPOINT_MANAGER_SNAPSHOT_FILENAME).write_text(snapshot.json())
    assert raypatches.train_latest_checkpoint(str(tmp_path)) == ({"step": 200, "eval_loss": 1.5},
                                                                 str(tmp_path / "checkpoint_b"))
    (tmp_path / CHECKPOINT_MANAGER_SNAPSHOT_FILENAME).write_text("{not json")
    assert raypatches.train_latest_checkpoint(str(tmp_path)) is None


@pytest.mark.parametrize("module", ["ftray", "ftray.raypatches"])
def test_importing_ftray_does_not_import_ray(module):
    import subprocess
    import sys

    code = f"import sys, {module}; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
