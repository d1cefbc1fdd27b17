"""Sweep validation: every wrong value is refused before Ray starts, with the field named."""

import textwrap

import pytest
from ray import tune

from ftray import ASHA, FtrayInputError, Sweep, SyntheticTask, WandB, load_sweep


def make(**overrides):
    kwargs = dict(name="t", task=SyntheticTask(n_train=50, n_valid=10, n_test=10), models=["tiny-xs", "tiny-s"])
    kwargs.update(overrides)
    return Sweep(**kwargs)


def test_defaults_sweep_the_whole_ladder_and_choose_the_mode():
    s = make(objective="slot_f1")
    assert s.mode == "max"
    assert sorted(s.space["model"].categories) == ["tiny-s", "tiny-xs"]
    assert make().mode == "min"  # eval_loss
    assert make(objective="parse_failure_rate").mode == "min"


def test_a_metrics_direction_is_declared_not_guessed_from_its_name():
    from dataclasses import dataclass

    from ftray.tasks.metrics import sign
    from ftray.driver.schedulers import scheduler

    # ASHA on a metric other than the objective stops trials by that metric's own direction.
    s = make(objective="slot_f1", asha=ASHA(grace_steps=50, metric="parse_failure_rate"), steps=100)
    assert (s.mode, s.asha_mode(), scheduler(s)._asha["mode"]) == ("max", "min", "min")
    assert make(objective="slot_f1", mode="min", asha=ASHA(grace_steps=50, metric="slot_f1"), steps=100).asha_mode() == "min"

    @dataclass(frozen=True)
    class Mine(SyntheticTask):  # a user's task with a metric ftray does not know: no guess from "_rate"
        @property
        def metric_names(self):
            return ("win_rate",)

    with pytest.raises(FtrayInputError, match="does not say whether a larger win_rate is better"):
        make(task=Mine(n_train=50, n_valid=10, n_test=10), objective="win_rate")
    assert make(task=Mine(n_train=50, n_valid=10, n_test=10), objective="win_rate", mode="max").mode == "max"
    assert (sign("max"), sign("min")) == (1.0, -1.0)
    with pytest.raises(ValueError, match="mode must be"):
        sign("up")


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(name="a b"), "name"),
        (dict(models=[]), "models"),
        (dict(models=["tiny-nope"]), "tiny-nope"),
        (dict(models=["tiny-xs", "tiny-xs"]), "twice"),
        (dict(num_trials=0), "num_trials"),
        (dict(workers=-1), "workers"),
        (dict(steps=0), "steps"),
        (dict(steps=10, epochs=1.0), "epochs"),
        (dict(gpus_per_worker=-1), "gpus_per_worker"),
        (dict(objective="bleu"), "objective"),
        (dict(mode="up"), "mode"),
        (dict(space={"learning_rate": tune.loguniform(1e-4, 1e-2)}), "learning_rate"),
        (dict(space={"lora_rnak": tune.choice([4, 8])}), "did you mean 'lora_rank'"),
        (dict(space={"lora_rank": tune.choice([])}), "lora_rank"),
        (dict(space={"lora_rank": tune.choice([8, 0])}), "lora_rank"),
        (dict(space={"data_fraction": tune.choice([0.5, 1.5])}), "data_fraction"),
        (dict(space={"data_fraction": 0}), "data_fraction"),
        (dict(space={"model": tune.choice(["tiny-xs", "tiny-m"])}), "model"),
        (dict(space={"lr": tune.loguniform(1e-2, 1e-4)}), "lr"),
        (dict(space={"lr": [1e-3, 1e-2]}), "lr"),
        (dict(lora_rank=0), "lora_rank"),
        (dict(asha=ASHA(grace_steps=500), steps=100), "grace_steps"),
        (dict(asha=ASHA(metric="bleu")), "asha.metric"),
        (dict(data_filter="inform"), "data_filter_column"),
        (dict(per_model=("nope",)), "per_model"),
        (dict(per_model=False), "per_model"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(FtrayInputError) as e:
        make(**overrides)
    assert field in str(e.value)


def test_bad_wandb_mode_names_the_field():
    with pytest.raises(FtrayInputError, match="wandb.mode"):
        WandB(mode="sometimes")


def test_a_trial_is_the_defaults_with_the_sampled_values_replaced():
    from ftray import ModelSpec, TrialConfig

    s = make(lora_rank=4, space={"lr": tune.loguniform(1e-4, 1e-2)},
             models=["tiny-xs", ModelSpec("tiny-s", batch_size=4)])
    c = s.trial_config({"model": "tiny-s", "lr": 3e-3})
    assert isinstance(c, TrialConfig)
    assert (c.model, c.lr, c.lora_rank, c.lora_alpha, c.data_fraction, c.batch_size) == ("tiny-s", 3e-3, 4, 8, 1.0, 4)
    assert s.trial_config({"model": "tiny-xs"}).batch_size == 16  # the rung's batch is its own
    # The shorthand and the group say the same thing.
    assert make(steps=30, lr=0.01).trial == make(trial=TrialConfig(steps=30, lr=0.01)).trial


def test_trial_config_checks_every_field_and_names_it():
    import numpy as np

    from ftray import TrialConfig

    for field, value in [("lora_rank", 0), ("lr", -1.0), ("warmup_ratio", 1.0), ("data_fraction", 0.0),
                         ("batch_size", 2.5), ("eval_base", "yes"), ("max_length", 1), ("seed", -1)]:
        with pytest.raises(FtrayInputError, match=rf"{field} must be .*got {value!r}"):
            TrialConfig(**{field: value})
    c = TrialConfig(lora_rank=np.int64(4), lr=np.float64(0.01))  # as Tune and Optuna sample them
    assert type(c.lora_rank) is int and type(c.lr) is float
    assert TrialConfig.from_dict(c.to_dict()) == c
    assert TrialConfig(epochs=2.0).steps is None and TrialConfig().steps == 200


def test_grouped_settings_and_a_misspelt_field():
    from ftray import ASHA, Failure, Scaling, Search

    s = make(scaling=Scaling(workers=1), search=Search(num_trials=3, asha=ASHA(grace_steps=50)),
             failure=Failure(max_restarts=0), steps=100)
    assert (s.scaling.workers, s.search.num_trials, s.failure.max_restarts, s.trial.steps) == (1, 3, 0, 100)
    assert make(search="random").search.algorithm == "random"
    with pytest.raises(FtrayInputError, match="no field 'lora_ranks'; did you mean 'lora_rank'"):
        make(lora_ranks=4)
    with pytest.raises(FtrayInputError, match="eval_every.*is set for the whole sweep"):
        make(space={"eval_every": tune.choice([5, 10])})


def test_grid_search_is_checked_and_cycled_with_the_ladder():
    import optuna

    from ftray.driver.searcher import DefineByRun

    with pytest.raises(FtrayInputError, match=r"space\['lora_rank'\]"):
        make(space={"lora_rank": tune.grid_search([4, 0])})
    s = make(space={"lora_rank": tune.grid_search([2, 8]), "lr": tune.loguniform(1e-4, 1e-2)})
    space = DefineByRun(s)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    cells = [(c["model"], c["lora_rank"]) for c in (space(study.ask()) for _ in range(8))]
    assert cells[:4] == [("tiny-xs", 2), ("tiny-xs", 8), ("tiny-s", 2), ("tiny-s", 8)] and cells[4:] == cells[:4]


def test_a_sweep_is_rebuilt_from_its_description():
    from ftray.spec.sweep import Sweep, diff_descriptions

    s = make(space={"lora_rank": tune.grid_search([2, 8]), "lr": tune.loguniform(1e-4, 1e-2),
                    "grad_accum": tune.qrandint(1, 4, 1), "data_fraction": tune.choice([0.5, 1.0])}, steps=30)
    rebuilt = Sweep.from_description(s.describe())
    assert rebuilt is not None and diff_descriptions(s.describe(), rebuilt.describe()) == []
    assert rebuilt.trial_config({"model": "tiny-s", "lr": 1e-3}) == s.trial_config({"model": "tiny-s", "lr": 1e-3})


def test_a_rung_with_numpy_ints_is_recorded_as_plain_json():
    import json

    import numpy as np

    from ftray import ModelSpec

    rung = ModelSpec("tiny-s", workers=np.int64(1), batch_size=np.int32(4), grad_accum=np.int64(2))
    assert [type(v) for v in (rung.workers, rung.batch_size, rung.grad_accum)] == [int, int, int]
    recorded = json.loads(json.dumps(make(models=["tiny-xs", rung]).describe()))
    assert Sweep.from_description(recorded).models[1] == rung


def test_a_run_made_before_a_setting_existed_resumes_as_it_ran():
    from ftray.driver.resuming import as_recorded
    from ftray.spec.sweep import diff_descriptions

    s = make(workers=1)
    old = s.describe()
    # As recorded before these settings existed (the four trial settings came with token budgets,
    # bounded packing, the fused loss and compile).
    for group, key in (("scaling", "one_worker_in_trial"), ("scaling", "gpu_memory_gb"), ("trial", "pack_length"),
                       ("trial", "batch_tokens"), ("trial", "fused_loss"), ("trial", "compile")):
        del old[group][key]
    assert diff_descriptions(old, s.describe())  # compared as they are, a change ...
    resumed, recorded = as_recorded(s, old)
    assert diff_descriptions(recorded, resumed.describe()) == []  # ... but not a different sweep,
    assert not resumed.in_trial_process("tiny-xs")  # and its one-worker trials stay on Train
    assert "one_worker_in_trial" not in old["scaling"]  # the record itself is left as it was
    now, _ = as_recorded(s, s.describe())  # a run made since: as it is
    assert now.in_trial_process("tiny-xs")


@pytest.mark.parametrize("pickled, missing", [(b"cftray.search\nDefineByRun\n.", "ftray.search"),
                                             (b"cftray.driver.schedulers\nFifo\n.", "ftray.driver.schedulers.Fifo")])
def test_a_run_folder_of_an_older_layout_is_refused_in_one_line_on_resume(tmp_path, pickled, missing):
    # Tune's tuner.pkl naming a module or class an older ftray had; Tuner.restore unpickles it first thing.
    from ftray.driver.tuner import Options, _restore

    (tmp_path / "tuner.pkl").write_bytes(pickled)
    with pytest.raises(FtrayInputError) as e:
        _restore(str(tmp_path), str(tmp_path), lambda config: None, Options())
    message = str(e.value)
    assert "\n" not in message and str(tmp_path) in message and missing in message
    assert "older ftray" in message and "`ftray report` still reads it" in message and "start the sweep again" in message


def test_only_ftrays_own_missing_names_count_as_an_older_layout():
    from ftray.driver.tuner import older_ftray_name

    assert older_ftray_name(ModuleNotFoundError("No module named 'ftray.search'", name="ftray.search")) == "ftray.search"
    assert older_ftray_name(ModuleNotFoundError("No module named 'ftrayx'", name="ftrayx")) is None
    assert older_ftray_name(ModuleNotFoundError("No module named 'optuna'", name="optuna")) is None
    assert older_ftray_name(AttributeError("Can't get attribute 'Fifo' on <module 'ftray.schedulers' from "
                                           "'/x/ftray/schedulers.py'>")) == "ftray.schedulers.Fifo"
    assert older_ftray_name(AttributeError("Can't get attribute 'X' on <module 'ray.tune' from '/x'>")) is None
    assert older_ftray_name(AttributeError("'NoneType' object has no attribute 'fit'")) is None


def test_load_sweep_errors_name_the_file(tmp_path):
    with pytest.raises(FtrayInputError, match="does not exist"):
        load_sweep(tmp_path / "missing.py")
    bad = tmp_path / "syntax.py"
    bad.write_text("sweep = (\n")
    with pytest.raises(FtrayInputError, match="syntax error at line"):
        load_sweep(bad)
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(FtrayInputError, match="does not define"):
        load_sweep(empty)
    wrong = tmp_path / "wrong.py"
    wrong.write_text(textwrap.dedent("""
        from ftray import Sweep, SyntheticTask
        sweep = Sweep(name="w", task=SyntheticTask(), models=["tiny-xs"], lora_rank=-2)
    """))
    with pytest.raises(FtrayInputError, match=r"wrong\.py.*lora_rank"):
        load_sweep(wrong)


def test_cli_validate_exit_status(tmp_path, capsys):
    from ftray.cli import main

    wrong = tmp_path / "wrong.py"
    wrong.write_text("from ftray import Sweep, SyntheticTask\n"
                     "sweep = Sweep(name='w', task=SyntheticTask(), models=['tiny-xs'], data_fraction=2.0)\n")
    assert main(["validate", str(wrong)]) == 2
    assert "data_fraction" in capsys.readouterr().err
    good = tmp_path / "good.py"
    good.write_text("from ftray import Sweep, SyntheticTask\n"
                    "sweep = Sweep(name='g', task=SyntheticTask(n_train=40, n_valid=8, n_test=8), models=['tiny-xs', 'tiny-s'])\n")
    assert main(["validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "tiny-xs" in out


def test_the_worker_loop_imports_without_ray_tune():
    """Every Train worker of every trial imports ftray.train.recipe: Ray Tune (seconds of imports) stays out."""
    import subprocess
    import sys

    code = "import sys, ftray.train.recipe, ftray; assert 'ray.tune' not in sys.modules; ftray.Sweep; assert 'ray.tune' in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_one_worker_trial_reserves_its_worker_in_tune_and_a_train_run_only_its_driver():
    from ftray import ModelSpec, Sweep, SyntheticTask
    from ftray.driver.resources import TRIAL_DRIVER_CPU, plan_resources, trial_request, trial_shapes

    models = ["tiny-xs", ModelSpec("tiny-s", workers=2), ModelSpec("tiny-m", gpus_per_worker=0.5)]
    sweep = Sweep(name="r", task=SyntheticTask(), models=models, workers=1, cpus_per_worker=1.0, num_trials=8)
    cluster = {"CPU": 4.0, "GPU": 1.0}
    r = plan_resources(sweep, cluster)
    assert trial_request(sweep, "tiny-xs", 1.0) == {"CPU": 1.0}  # trains in the Tune trial's process
    assert trial_request(sweep, "tiny-m", 1.0) == {"CPU": 1.0, "GPU": 0.5}
    assert trial_request(sweep, "tiny-s", 1.0) == {"CPU": TRIAL_DRIVER_CPU}  # Train reserves its 2 workers
    # The biggest trial, the 2-worker Train run, needs 2 + 0.01 CPUs: one of them fits on 4 at a time.
    assert r.max_concurrent_trials == 1
    assert trial_shapes(sweep, r) == ("1 worker in its Tune trial x 1 CPU or 1 worker in its Tune trial x 1 CPU x 0.5 GPU"
                                      " or 2 Train workers x 1 CPU")
    on_train = Sweep(name="r", task=SyntheticTask(), models=["tiny-xs"], workers=1, one_worker_in_trial=False)
    assert trial_request(on_train, "tiny-xs", 1.0) == {"CPU": TRIAL_DRIVER_CPU}
    assert plan_resources(on_train, {"CPU": 2.0}).cpus_per_worker == pytest.approx(1.0)
