"""ftray's benchmarks, side by side in one run: `python bench/run.py [--quick]`.

Each ratio is measured A B A B ... (median of 3 repeats; 1 with --quick, whose figures are not to be
quoted) on this machine with tiny models on CPU. The method of each is printed beside its number; the last
stdout line is one JSON object. Results go to bench/results/<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from datetime import date
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftray.train.data import batches, collate, padding_efficiency, select, tokenize_examples  # noqa: E402
from ftray.spec.ladder import LoraSettings, ModelSpec  # noqa: E402
from ftray.train.lora import apply_lora  # noqa: E402
from ftray.train.models import build_model, build_tokenizer  # noqa: E402
from ftray import raypatches  # noqa: E402
from ftray.tasks import SyntheticTask  # noqa: E402
from ftray.train.evaluate import evaluate  # noqa: E402
from ftray.train.steps import lr_lambda  # noqa: E402


# ---- one trial as a bare PyTorch loop (no Ray): the baseline ---------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bare_worker(rank, world, port, cfg, queue, own_group=True):
    t0 = time.time()
    torch.set_num_threads(1)
    if world > 1 and own_group:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    task = SyntheticTask(n_train=cfg["n_train"], n_valid=cfg["eval_samples"], n_test=8, seed=cfg["seed"])
    tok = build_tokenizer(t for e in task.examples("train") for t in (e.prompt, e.completion))
    data = tokenize_examples(select(task.examples("train"), cfg["data_fraction"], 0), tok, cfg["max_length"])
    valid_ex = task.examples("valid")
    valid = tokenize_examples(valid_ex, tok, cfg["max_length"])
    spec = ModelSpec(cfg["model"])
    model = apply_lora(build_model(spec, tok, seed=0), spec, LoraSettings(cfg["rank"], 2 * cfg["rank"]))
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(0.05 * cfg["steps"]), cfg["steps"]))
    setup_s = time.time() - t0
    order = [b for epoch in range(1000) for b in batches(data, cfg["batch_size"], 0, epoch, rank, world)]
    train_s = eval_s = 0.0
    tokens = 0
    curve = []
    for step in range(1, cfg["steps"] + 1):
        t = time.time()
        batch = collate([data[i] for i in order[step - 1]], tok.pad_token_id)
        loss = ddp(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        tokens += int(batch["attention_mask"].sum())
        train_s += time.time() - t
        if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
            t = time.time()
            m = evaluate(model=model, tokenizer=tok, task=task, examples=valid_ex, data=valid,
                         batch_size=cfg["batch_size"], max_length=cfg["max_length"],
                         max_new_tokens=cfg["max_new_tokens"], rank=rank, world=world) \
                if cfg["generate"] else {"eval_loss": _eval_loss(model, valid, tok)}
            curve.append((step, m["eval_loss"]))
            model.train()
            eval_s += time.time() - t
    if rank == 0:
        queue.put({"setup_s": setup_s, "train_s": train_s, "eval_s": eval_s, "tokens": tokens * world,
                   "curve": curve, "wall_s": time.time() - t0})
    if world > 1 and own_group:
        dist.destroy_process_group()


def _eval_loss(model, valid, tok) -> float:
    model.eval()
    total = n = 0.0
    with torch.no_grad():
        for i in range(0, len(valid), 16):
            batch = collate(valid[i : i + 16], tok.pad_token_id)
            k = int((batch["labels"][:, 1:] != -100).sum())
            total += model(**batch).loss.item() * k
            n += k
    return total / max(n, 1)


def bare_trial(cfg: dict, world: int) -> dict:
    """One trial as plain torch.distributed DDP processes (spawned, gloo), timed from the outside; a
    one-worker trial runs in this process (no process start to pay for each of the grid's configs)."""
    import torch.multiprocessing as mp

    t = time.time()
    if world == 1:
        out: list = []
        _bare_worker(0, 1, 0, cfg, types.SimpleNamespace(put=out.append))
        return dict(out[0], outer_wall_s=time.time() - t)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_bare_worker, args=(r, world, port, cfg, queue)) for r in range(world)]
    for p in procs:
        p.start()
    out = queue.get()
    for p in procs:
        p.join()
    out["outer_wall_s"] = time.time() - t
    return out


# ---- the same trials through ftray ---------------------------------------------------------------------
SWEEP = """
from ftray import Sweep, SyntheticTask, WandB
sweep = Sweep(name="bench", task=SyntheticTask(n_train={n_train}, n_valid={eval_samples}, n_test=8, seed={seed}),
              models=["{model}"], space={{"lora_rank": {rank}, "lr": {lr}, "data_fraction": {data_fraction}}},
              num_trials={k}, workers={world}, steps={steps}, eval_every={eval_every}, eval_samples={eval_samples},
              batch_size={batch_size}, max_length={max_length}, max_new_tokens={max_new_tokens}, eval_base=False,
              warmup_ratio=0.05, wandb=WandB(mode="offline"))
"""


def ftray_sweep(cfg: dict, k: int, world: int, tmp: Path) -> dict:
    sweep_file = tmp / f"bench_{time.time_ns()}.py"
    sweep_file.write_text(textwrap.dedent(SWEEP.format(k=k, world=world, **cfg)))
    storage = tmp / "runs"
    name = sweep_file.stem
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "ftray.cli", "run", str(sweep_file), "--storage", str(storage),
                           "--name", name], capture_output=True, text=True)
    wall = time.time() - t
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    rows = []
    for result in (storage / name).glob("run_trial_*/result.json"):
        rows.append([json.loads(line) for line in result.read_text().splitlines() if line.strip()][-1])
    return {"wall_s": wall, "trials": rows}


# ---- the same trials as Ray Tune trials of Ray Train, without ftray: Ray's own floor ---------------------------
def ray_floor_sweep(cfg: dict, k: int, world: int, tmp: Path) -> dict:
    """The bare loop above run by plain Ray: Tune runs K trials one at a time, each a TorchTrainer of `world`
    gloo workers (0.995 CPU each, as ftray sizes them here), reporting once at the end. No ftray, no Optuna,
    W&B or checkpoints; Ray's own settings but for workers at nice 0, as ftray's local Ray runs them. What any
    sweep on Ray pays; ftray's own share is the rest. Timed from the outside, Ray's start included, like
    `ftray run`."""
    t = time.time()
    proc = subprocess.run([sys.executable, __file__, "--ray-floor-child",
                           json.dumps({"cfg": cfg, "k": k, "world": world, "storage": str(tmp / "ray-floor")})],
                          capture_output=True, text=True)
    wall = time.time() - t
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return {"wall_s": wall, "trials": json.loads(proc.stdout.strip().splitlines()[-1])}


def _ray_floor_child(job: dict) -> None:
    import ray
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg, world = job["cfg"], job["world"]

    def worker(config):  # this module is __main__ here: Ray ships the function (and _bare_worker) by value
        started = time.time()
        ctx = ray.train.get_context()
        out: list = []
        _bare_worker(ctx.get_world_rank(), ctx.get_world_size(), None, cfg, types.SimpleNamespace(put=out.append),
                     own_group=False)
        metrics = {key: v for key, v in (out[0] if out else {}).items() if key != "curve"}
        ray.train.report(dict(metrics, worker_start_s=started - config["launched_at"]))

    def trial(config):
        TorchTrainer(worker, train_loop_config={"launched_at": time.time()}, torch_config=TorchConfig(backend="gloo"),
                     scaling_config=ray.train.ScalingConfig(num_workers=world, resources_per_worker={"CPU": 0.995}),
                     run_config=ray.train.RunConfig(name=tune.get_context().get_trial_id(), storage_path=job["storage"],
                                                    callbacks=[TuneReportCallback()])).fit()

    ray.init(log_to_driver=False, logging_level="WARNING", **raypatches.workers_not_niced())  # as ftray starts its Ray
    results = tune.Tuner(tune.with_resources(trial, {"CPU": 0.01}),
                         param_space={"i": tune.grid_search(list(range(job["k"])))},
                         tune_config=tune.TuneConfig(max_concurrent_trials=1),
                         run_config=tune.RunConfig(storage_path=job["storage"], verbose=0)).fit()
    ray.shutdown()
    rows = [r.metrics for r in results]
    if any(r.error for r in results) or not all("train_s" in m for m in rows):
        raise SystemExit(f"ray floor: a trial failed: {[r.error for r in results]}")
    print(json.dumps([{key: m[key] for key in ("setup_s", "train_s", "eval_s", "worker_start_s", "time_total_s")}
                      for m in rows]))


# ---- ftray's own worker loop, in this process, against Hugging Face Trainer ---------------------------------
def ftray_loop_tokens_per_s(cfg: dict) -> float:
    """Non-padding tokens/s of ftray's training recipe (the loop a Train worker runs), in this process as rank
    0 of 1 on this CPU, one report at the end (its evaluation is outside the timed loop, as in ftray's own
    train_s; no checkpoint is kept)."""
    from ftray.spec.config import TrialConfig
    from ftray.train.models import tokenizer_to_json
    from ftray.train.recipe import TrialJob, run_local

    task = SyntheticTask(n_train=cfg["n_train"], n_valid=8, n_test=8, seed=cfg["seed"])
    tok = build_tokenizer(t for e in task.examples("train") for t in (e.prompt, e.completion))
    config = TrialConfig(model=cfg["model"], lora_rank=cfg["rank"], lr=cfg["lr"], steps=cfg["steps"],
                         batch_size=cfg["batch_size"], max_length=cfg["max_length"], seed=0, eval_every=cfg["steps"],
                         eval_samples=8, max_new_tokens=8, eval_base=False)
    job = TrialJob(config=config, task=task, model=ModelSpec(cfg["model"]), tokenizer_json=tokenizer_to_json(tok),
                   lora=LoraSettings(cfg["rank"], 2 * cfg["rank"]), threads=1)
    reports = run_local(job)
    return reports[-1]["tokens"] / reports[-1]["train_s"]


# ---- Hugging Face Trainer on the same model, data, batch and LoRA ----------------------------------------
def hf_trainer_tokens_per_s(cfg: dict) -> float:
    from transformers import Trainer, TrainingArguments

    torch.set_num_threads(1)
    task = SyntheticTask(n_train=cfg["n_train"], n_valid=8, n_test=8, seed=cfg["seed"])
    tok = build_tokenizer(t for e in task.examples("train") for t in (e.prompt, e.completion))
    data = tokenize_examples(task.examples("train"), tok, cfg["max_length"])
    spec = ModelSpec(cfg["model"])
    model = apply_lora(build_model(spec, tok, seed=0), spec, LoraSettings(cfg["rank"], 2 * cfg["rank"]))
    seen = []

    def collator(samples):  # pads to the longest in the batch, as Trainer's own padding collators do
        seen.append(sum(len(s["input_ids"]) for s in samples))
        return collate(samples, tok.pad_token_id)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=cfg["batch_size"], max_steps=cfg["steps"],
                                 learning_rate=cfg["lr"], warmup_steps=int(0.05 * cfg["steps"]), lr_scheduler_type="cosine",
                                 max_grad_norm=1.0, report_to=[], save_strategy="no", logging_strategy="no",
                                 use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
        t = time.time()
        trainer.train()
        elapsed = time.time() - t
    return sum(seen[: cfg["steps"]]) / elapsed


# ---- search efficiency: Optuna + ASHA against the full grid, replayed on cached curves ------------------
def grid_curves(grid: list[dict], base: dict) -> list[dict]:
    out = []
    for g in grid:
        cfg = dict(base, **g)
        r = bare_trial(cfg, world=1)
        out.append({"config": g, "curve": r["curve"], "params": _params(g["model"])})
    return out


_PARAMS: dict = {}


def _params(model: str) -> int:
    if model not in _PARAMS:
        from ftray.train.models import param_counts

        _PARAMS[model] = param_counts(ModelSpec(model), 512, None)[0]
    return _PARAMS[model]


def _hv(points, ref) -> float:
    from ftray.results.frontier import front_hypervolume
    from ftray.results.trialresult import TrialResult

    trials = [TrialResult(id=str(i), status="TERMINATED", objective=v, params=p) for i, (v, p) in enumerate(points)]
    return front_hypervolume(trials, "min", ref)


def replay_sweep(curves: list[dict], seed: int, strategy: str, max_trials: int):
    """The grid as a ftray Sweep: the space of its settings, searched and stopped as `strategy` says."""
    from ray import tune

    from ftray import ASHA, Sweep

    values = {k: sorted({c["config"][k] for c in curves}, key=str) for k in ("model", "rank", "lr", "data_fraction")}
    steps = max(c["curve"][-1][0] for c in curves)
    first = min(c["curve"][0][0] for c in curves)
    asha = None
    if "asha" in strategy:
        asha = ASHA(grace_steps=first, reduction_factor=3, per_model=strategy.endswith("per-model"))
    return Sweep(name="replay", task=SyntheticTask(n_train=8, n_valid=4, n_test=4), models=values["model"],
                 space={"lora_rank": tune.choice(values["rank"]), "lr": tune.choice(values["lr"]),
                        "data_fraction": tune.choice(values["data_fraction"])},
                 num_trials=max_trials, search="random" if strategy == "random" else "optuna", seed=seed,
                 steps=steps, eval_every=first, asha=asha)


def replay(curves: list[dict], seed: int, strategy: str, max_trials: int) -> float:
    """Compute (training steps) until the searched front reaches 95% of the grid front's hypervolume.

    The trials are chosen by ftray's own searcher set-up (ftray.driver.searcher: the define-by-run space with the
    models round-robin and the learning rate per model, the seeded sampler) and stopped by ftray's own
    scheduler (PerModelASHA), fed the grid's cached learning curves instead of training.
    """
    import optuna

    from ftray.driver.schedulers import scheduler
    from ftray.driver.searcher import DefineByRun, sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    full = [(c["curve"][-1][1], c["params"]) for c in curves]
    ref = (max(v for v, _ in full) * 1.05, 2 * max(p for _, p in full))
    target = 0.95 * _hv(full, ref)
    by_config = {(c["config"]["model"], c["config"]["rank"], c["config"]["lr"], c["config"]["data_fraction"]): c
                 for c in curves}
    sweep = replay_sweep(curves, seed, strategy, max_trials)
    space, stopper = DefineByRun(sweep), scheduler(sweep)  # the sweep's own: PerModelASHA, or FIFOKeepingErrors (stops nothing)
    study = optuna.create_study(direction="minimize", sampler=sampler(sweep))
    spent = 0
    found = []
    for number in range(max_trials):
        trial = study.ask()
        config = space(trial)
        c = by_config[(config["model"], config["lora_rank"], config["lr"], config["data_fraction"])]
        tune_trial = types.SimpleNamespace(trial_id=str(number), config=config, has_reported_at_least_once=False)
        stopper.on_trial_add(None, tune_trial)
        for step, value in c["curve"]:
            last = {"step": step, "eval_loss": value}
            if stopper.on_trial_result(None, tune_trial, last) == "STOP":
                break
        stopper.on_trial_complete(None, tune_trial, last)
        spent += last["step"]
        study.tell(trial, last["eval_loss"])
        found.append((last["eval_loss"], c["params"]))
        if _hv(found, ref) >= target:
            return spent
    return spent


PARTS = ("overhead", "throughput", "search")


# ---- main -----------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small K and few steps (CI)")
    ap.add_argument("--only", default=None, help=f"some of {','.join(PARTS)} (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON files go")
    ap.add_argument("--ray-floor-child", default=None, help=argparse.SUPPRESS)  # one side of the overhead part
    args = ap.parse_args()
    if args.ray_floor_child:
        return _ray_floor_child(json.loads(args.ray_floor_child))
    quick = args.quick
    # --quick (CI) checks that every part runs: one repeat, one trial per sweep; its figures are not to be quoted
    reps, k = (1, 1) if quick else (3, 3)
    cfg = dict(model="tiny-s" if quick else "tiny-m", rank=8, lr=5e-3, data_fraction=1.0, n_train=400 if quick else 2000,
               steps=20 if quick else 300, eval_every=10 if quick else 100, eval_samples=16, batch_size=16,
               max_length=96, max_new_tokens=40, seed=0, generate=True)
    world = 2
    results: dict = {"date": str(date.today()), "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}",
                     "quick": quick}
    tmp = Path(tempfile.mkdtemp(prefix="ftray-bench-"))
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.only.split(",") if args.only else PARTS
    if not set(parts) <= set(PARTS):
        ap.error(f"--only takes some of {','.join(PARTS)}, got {args.only!r}")
    grid_models = ["tiny-xs", "tiny-s", "tiny-m"]
    grid = [{"model": m, "rank": r, "lr": lr, "data_fraction": f}
            for m in grid_models for r in (4, 16) for lr in (2e-3, 1e-2) for f in ((1.0,) if quick else (0.25, 1.0))]

    if "overhead" in parts:
        # A B C A B C: ftray sweep of K trials, the same K trials as bare DDP loops, and as plain Ray Tune
        # trials of Ray Train running the bare loop (Ray's floor), all at the same concurrency (one trial at
        # a time: on this machine a 2-worker trial fills the cores).
        sweeps, bares, floors = [], [], []
        for _ in range(reps):
            sweeps.append(ftray_sweep(cfg, k, world, tmp))
            t = time.time()
            trials = [bare_trial(cfg, world) for _ in range(k)]
            bares.append({"wall_s": time.time() - t, "trials": trials})
            floors.append(ray_floor_sweep(cfg, k, world, tmp))
        sweep_wall = statistics.median(s["wall_s"] for s in sweeps)
        bare_wall = statistics.median(b["wall_s"] for b in bares)
        floor_wall = statistics.median(f["wall_s"] for f in floors)
        results["overhead_ratio"] = sweep_wall / bare_wall
        results["ray_floor_overhead_ratio"] = floor_wall / bare_wall
        results["overhead_ratio_vs_ray_floor"] = sweep_wall / floor_wall

        mid = sorted(sweeps, key=lambda s: s["wall_s"])[len(sweeps) // 2]
        tr = mid["trials"]
        train = sum(t["train_s"] for t in tr)
        evals = sum(t.get("eval_s", 0.0) for t in tr)
        setup = sum(t["setup_s"] for t in tr)
        in_trial = sum(t["time_total_s"] for t in tr)
        results["per_trial_overhead_s"] = (mid["wall_s"] - train) / k
        started = sum(t["worker_start_s"] for t in tr)
        results["per_trial_overhead_split_s"] = {
            # Ray's start, Tune's scheduling between trials, the report and W&B summary at the end
            "ray_start_tune_and_report": (mid["wall_s"] - in_trial) / k,
            # Train controller and worker processes starting, their imports, the process group
            "worker_group_start": started / k,
            "model_and_data_setup": setup / k,
            "evaluation": evals / k,
            # adapter checkpoints written and reported, Train shutting the workers down
            "checkpoints_and_shutdown": (in_trial - started - setup - train - evals) / k,
        }
        ftray_steps = [[t["train_s"] / t["step"] for t in s["trials"]] for s in sweeps]
        bare_steps = [[t["train_s"] / cfg["steps"] for t in b["trials"]] for b in bares]
        floor_steps = [[t["train_s"] / cfg["steps"] for t in f["trials"]] for f in floors]
        bare_step = statistics.median(x for run in bare_steps for x in run)
        results["step_ratio_vs_bare"] = statistics.median(x for run in ftray_steps for x in run) / bare_step
        results["ray_floor_step_ratio"] = statistics.median(x for run in floor_steps for x in run) / bare_step
        results["ray_floor_per_trial_s"] = {  # the same parts for plain Ray: the median over its trials
            "worker_group_start": statistics.median(t["worker_start_s"] for f in floors for t in f["trials"]),
            "model_and_data_setup": statistics.median(t["setup_s"] for f in floors for t in f["trials"]),
        }
        results["overhead_runs"] = {  # every repeat, in the order run, for whoever checks the medians
            "sweep_wall_s": [s["wall_s"] for s in sweeps], "bare_wall_s": [b["wall_s"] for b in bares],
            "ray_floor_wall_s": [f["wall_s"] for f in floors],
            "ftray_step_s": ftray_steps, "bare_step_s": bare_steps, "ray_floor_step_s": floor_steps,
        }

    if "throughput" in parts:
        # ftray's worker loop (one process, no evaluation in the timed loop) against Hugging Face
        # Trainer, A B A B.
        single = dict(cfg, steps=30 if quick else 200)
        ours, theirs = [], []
        for _ in range(reps):
            ours.append(ftray_loop_tokens_per_s(single))
            theirs.append(hf_trainer_tokens_per_s(single))
        results["tokens_per_s_ratio_vs_hf_trainer"] = statistics.median(ours) / statistics.median(theirs)

        task = SyntheticTask(n_train=cfg["n_train"], seed=0)
        tok = build_tokenizer(t for e in task.examples("train") for t in (e.prompt, e.completion))
        data = tokenize_examples(task.examples("train"), tok, cfg["max_length"])
        epoch = batches(data, cfg["batch_size"], 0, 0, 0, world)
        results["padding_efficiency"] = padding_efficiency([[data[i] for i in b] for b in epoch])

    if "search" in parts:
        # Search: the full grid's learning curves, run once, then replayed under each strategy.
        # --quick (CI) checks that the replay runs on a 12-config grid; the figure to quote comes from the full 24.
        base = dict(cfg, steps=40 if quick else 120, eval_every=10 if quick else 30, generate=False)
        curves = grid_curves(grid, base)
        (args.out / f"grid_curves{'-quick' if quick else ''}.json").write_text(json.dumps(curves))
        grid_compute = sum(c["curve"][-1][0] for c in curves)
        seeds = range(5)
        tpe = [replay(curves, s, "optuna", 4 * len(grid)) / grid_compute for s in seeds]
        tpe_asha = [replay(curves, s, "optuna+asha", 4 * len(grid)) / grid_compute for s in seeds]
        tpe_asha_pm = [replay(curves, s, "optuna+asha-per-model", 4 * len(grid)) / grid_compute for s in seeds]
        rnd = [replay(curves, s, "random", 4 * len(grid)) / grid_compute for s in seeds]
        results["search_compute_ratio"] = statistics.median(tpe)
        results["search_compute_ratio_with_asha"] = statistics.median(tpe_asha)
        results["search_compute_ratio_with_asha_per_model"] = statistics.median(tpe_asha_pm)
        results["search_compute_ratio_random"] = statistics.median(rnd)
        results["search_compute_ratio_per_seed"] = tpe

    methods = {
        "overhead_ratio": f"wall of `ftray run` ({k} trials x {world} Train workers, Tune+Optuna, W&B offline, Ray start "
                          f"included) / wall of the same {k} trials as bare torch.distributed DDP loops ({world} spawned "
                          f"gloo processes each, same steps, data and evals), one trial at a time both; median of {reps}, A B C A B C",
        "ray_floor_overhead_ratio": f"wall of the same {k} trials as plain Ray Tune trials of Ray Train (the bare loop in "
                                    f"{world} Train workers, no ftray, Optuna, W&B or checkpoints, Ray start included) / "
                                    f"the bare wall; median of {reps}, run third in each A B C",
        "overhead_ratio_vs_ray_floor": "ftray's wall / plain Ray's wall: what ftray adds to what any sweep on Ray pays",
        "per_trial_overhead_s": "(sweep wall - training compute) / K, split by the trials' own timings",
        "step_ratio_vs_bare": "median train seconds per step inside Ray Train DDP / the same in bare DDP (same runs)",
        "ray_floor_step_ratio": "the same for the bare loop inside plain Ray Train / bare DDP (same runs)",
        "tokens_per_s_ratio_vs_hf_trainer": "non-padding tokens/s, one process, same model/LoRA/batch/steps: ftray's worker "
                                            "loop (ftray.train.recipe.run_local: the Train workers' loop without Ray, "
                                            "length-grouped batches) / "
                                            f"transformers Trainer; median of {reps}, A B A B",
        "padding_efficiency": "non-padding / all tokens in one epoch of ftray's batches (rank 0 of 2)",
        "search_compute_ratio": f"training steps ftray's default search (Optuna TPE, models round-robin, lr per model) "
                                f"spends until its front reaches 95% of the full {len(grid)}-config grid's hypervolume "
                                "(eval_loss vs log10 params), / the grid's steps; replayed on the grid's cached curves, "
                                "median of 5 seeds",
    }
    results["methods"] = methods
    print(f"\nftray benchmarks ({results['machine']}, {results['date']}{', quick' if quick else ''})")
    extra = {"search_compute_ratio_with_asha": "the same with ftray's ASHA over all models (per_model=False, as Tune's)",
             "search_compute_ratio_with_asha_per_model": "the same with ftray's ASHA (rungs per model size)",
             "search_compute_ratio_random": "the same, random search without ASHA"}
    for key, method in {**methods, **extra}.items():
        if key in results:
            print(f"  {key:34} {results[key]:8.3f}   {method}")
    if "per_trial_overhead_split_s" in results:
        split = ", ".join(f"{k} {v:.1f}s" for k, v in results["per_trial_overhead_split_s"].items())
        print(f"  per-trial overhead split: {split}")
        floor = ", ".join(f"{k} {v:.1f}s" for k, v in results["ray_floor_per_trial_s"].items())
        print(f"  plain Ray, per trial: {floor}")
    out = write_results(results, args.out, parts, quick)
    print(f"  written to {out}")
    shutil.rmtree(tmp, ignore_errors=True)  # the sweeps' run folders and checkpoints (kept if a part failed)
    print(json.dumps(headline(results)))


# The figures of the last stdout line, in order.
KEYS = ("overhead_ratio", "per_trial_overhead_s", "step_ratio_vs_bare", "tokens_per_s_ratio_vs_hf_trainer",
        "padding_efficiency", "search_compute_ratio", "ray_floor_overhead_ratio", "overhead_ratio_vs_ray_floor",
        "ray_floor_step_ratio")


def headline(results: dict) -> dict:
    return {k: results[k] for k in KEYS if k in results}


def write_results(results: dict, out_dir: Path, parts, quick: bool) -> Path:
    """bench/results/<date>[-quick][-only-PARTS][-N].json: an earlier run's file of the same day is kept."""
    only = "" if tuple(parts) == PARTS else "-only-" + "-".join(parts)
    stem = f"{results['date']}{'-quick' if quick else ''}{only}"
    out = out_dir / f"{stem}.json"
    for n in range(2, 1000):
        if not out.exists():
            break
        out = out_dir / f"{stem}-{n}.json"
    out.write_text(json.dumps(results, indent=2))
    return out


if __name__ == "__main__":
    main()
