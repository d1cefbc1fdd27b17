"""ftray's ASHA keeps rungs per model size: a small model is judged against its own size only."""

import json
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from ftray.driver.schedulers import PerModelASHA


def _run(per_model: bool) -> dict[str, str]:
    """Two large-model trials reach step 10 with a loss of 1.0, then a small-model trial with 2.0."""
    asha = PerModelASHA(metric="eval_loss", mode="min", grace_period=10, reduction_factor=2, max_t=40,
                        per_model=per_model)
    assert asha.set_search_properties("slot_f1", "max")  # the sweep's objective does not override it
    trials = [SimpleNamespace(trial_id=i, config={"model": m}) for i, m in (("L1", "large"), ("L2", "large"),
                                                                          ("S1", "small"), ("L3", "large"))]
    for t in trials:
        asha.on_trial_add(None, t)
    losses = {"L1": 1.0, "L2": 1.1, "S1": 2.0, "L3": 3.0}
    return {t.trial_id: asha.on_trial_result(None, t, {"step": 10, "eval_loss": losses[t.trial_id]}) for t in trials}


def test_small_model_is_compared_with_its_own_size():
    decisions = _run(per_model=True)
    assert decisions["S1"] == TrialScheduler.CONTINUE  # first of its size at this rung
    assert decisions["L3"] == TrialScheduler.STOP  # worse than the other large trials


def test_shared_rungs_stop_the_small_model():
    decisions = _run(per_model=False)
    assert decisions["S1"] == TrialScheduler.STOP


def test_results_without_the_metric_never_stop_a_trial():
    asha = PerModelASHA(metric="eval_loss", mode="min", grace_period=1, reduction_factor=2, max_t=10)
    t = SimpleNamespace(trial_id="x", config={"model": "m"})
    asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, t, {"step": 5, "diverged": 1}) == TrialScheduler.CONTINUE
    asha.on_trial_error(None, t)
    assert "0 trials stopped" in asha.debug_string()


@pytest.mark.parametrize("bad", ["yes", 1])
def test_per_model_must_be_a_bool(bad):
    from ftray import ASHA, FtrayInputError

    with pytest.raises(FtrayInputError, match="asha.per_model"):
        ASHA(per_model=bad)


def test_a_resumed_sweep_judges_new_trials_against_what_restored_trials_reported(tmp_path):
    """Tune restores no scheduler state; ftray's ASHA reads the restored trials' result.json back."""
    from pyarrow.fs import LocalFileSystem

    def trial(trial_id, losses=()):
        folder = tmp_path / trial_id
        folder.mkdir()
        if losses:
            (folder / "result.json").write_text(
                "".join(json.dumps({"step": s, "eval_loss": v, "train_loss": 9.0}) + "\n" for s, v in losses))
        storage = SimpleNamespace(storage_filesystem=LocalFileSystem(), trial_fs_path=str(folder))
        return SimpleNamespace(trial_id=trial_id, config={"model": "large"}, storage=storage,
                               has_reported_at_least_once=bool(losses))

    def fresh():
        return PerModelASHA(metric="eval_loss", mode="min", grace_period=10, reduction_factor=2, max_t=40)

    restored = [trial("L1", [(5, 2.0), (10, 1.0), (20, 0.9)]), trial("L2", [(10, 1.1)])]
    new = trial("L3")
    asha = fresh()
    for t in restored + [new]:
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, new, {"step": 10, "eval_loss": 3.0}) == TrialScheduler.STOP
    # Without the restored results the same trial would be the first at its rung and go on.
    empty = fresh()
    blank = trial("L4")
    empty.on_trial_add(None, blank)
    assert empty.on_trial_result(None, blank, {"step": 10, "eval_loss": 3.0}) == TrialScheduler.CONTINUE


@pytest.mark.e2e
def test_rungs_come_back_when_tune_restores_the_sweep(tmp_path):
    """Real Tune: run trials under the scheduler, restore the experiment, and find the rungs refilled."""
    import ray
    from ray import tune

    def trainable(config):
        for step in (1, 2, 4):
            tune.report({"step": step, "loss": config["loss"] * (5 - step)})

    def scheduler():
        return PerModelASHA(metric="loss", mode="min", grace_period=1, reduction_factor=2, max_t=4)

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        first = scheduler()
        tune.Tuner(trainable, param_space={"model": tune.grid_search(["s", "m"]), "loss": tune.grid_search([1.0, 2.0])},
                   tune_config=tune.TuneConfig(scheduler=first),
                   run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path), verbose=0)).fit()
        restored = tune.Tuner.restore(str(tmp_path / "asha"), trainable)
        again = restored._local_tuner._tune_config.scheduler
        assert again is not first and not again._by_group  # Tune hands back the scheduler as it was at the start
        restored.fit()
    finally:
        ray.shutdown()
    recorded = {g: [sorted(r.values()) for _, r in s._brackets[0]._rungs] for g, s in again._by_group.items()}
    original = {g: [sorted(r.values()) for _, r in s._brackets[0]._rungs] for g, s in first._by_group.items()}
    assert set(recorded) == {"s", "m"}
    assert recorded == original and any(any(r) for r in recorded["s"])


def test_a_trial_optuna_never_suggested_is_kept_from_it():
    # `ftray resume --restart-errored` runs an errored trial again as a new Tune trial, with a new id:
    # Tune's OptunaSearch failed on it (KeyError), and the resumed sweep with it.
    from ftray import Sweep, SyntheticTask
    from ftray.driver.searcher import searcher

    search = searcher(Sweep(name="s", task=SyntheticTask(n_train=8, n_valid=4, n_test=4), models=["tiny-xs"],
                            num_trials=2))
    assert search.suggest("known")["model"] == "tiny-xs"
    for trial_id in ("known", "restarted"):
        search.on_trial_result(trial_id, {"eval_loss": 1.0, "training_iteration": 1})
        search.on_trial_complete(trial_id, {"eval_loss": 0.5, "training_iteration": 2})
    (told,) = search._ot_study.trials
    assert told.state.name == "COMPLETE" and told.value == 0.5 and told.intermediate_values == {1: 1.0}
