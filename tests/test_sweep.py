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
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(FtrayInputError) as e:
        make(**overrides)
    assert field in str(e.value)


def test_bad_wandb_mode_names_the_field():
    with pytest.raises(FtrayInputError, match="wandb.mode"):
        WandB(mode="sometimes")


def test_resolve_fills_defaults_and_alpha():
    s = make(lora_rank=4, space={"lr": tune.loguniform(1e-4, 1e-2)})
    r = s.resolve({"model": "tiny-s", "lr": 3e-3})
    assert r["lr"] == 3e-3 and r["lora_rank"] == 4 and r["lora_alpha"] == 8 and r["data_fraction"] == 1.0


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


def test_train_env_speeds_up_trials_but_never_overrides_the_user(monkeypatch):
    from ftray.search import train_env

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    assert train_env(local=True) == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
                                     "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    # A cluster may lose spot nodes: Train's preemption watcher stays on there.
    assert train_env(local=False) == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    assert train_env(local=True) == {}


def test_the_worker_loop_imports_without_ray_tune():
    """Every Train worker of every trial imports ftray.train: Ray Tune (seconds of imports) stays out."""
    import subprocess
    import sys

    code = "import sys, ftray.train, ftray; assert 'ray.tune' not in sys.modules; ftray.Sweep; assert 'ray.tune' in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
