"""GPU benchmark: LoRA finetunes of randomly initialised models the shape of Qwen2.5-0.5B and 1.5B.

    python bench/gpu.py --data VIGGO_FOLDER [--out DIR] [--budget-s 480]
    python bench/gpu.py --sizes tiny         # checks every part on a CPU, about 6 minutes on 2 cores (no figures)
    python bench/gpu.py --data VIGGO_FOLDER --parts d,tuned_compile,share_2   # only these parts
    python bench/gpu.py --data VIGGO_FOLDER --parts a --reps 3 --profile    # where ftray's step loses to the bare one

One run, side by side, on one GPU (parts in this order; a part that would start past --budget-s is
skipped and said so, and every part's result is written as soon as it is measured):
  (a) default  -- the 1.5B model at 32 rows a step, ftray's recipe as a trial runs it (ftray.train.recipe.run_local:
                  the loop a one-worker trial runs in its Tune trial's process, without Ray), the same step in
                  a bare PyTorch loop, and Hugging Face's Trainer (bf16, its default sampler)
  (b) tuned    -- ftray with SPEED_SETTINGS (rows packed to bounded width, fused linear cross-entropy,
                  widths rounded to 64) and a token budget per step, against the same with the plain loss
                  (memory at the same tokens), with torch.compile, and a tuned Trainer (padding-free
                  DataCollatorWithFlattening and its Liger flag) at about the same tokens a step
  (c) share    -- `ftray run` of a sweep of 8 trials of the 0.5B model at 1, 4 and 2 trials per GPU
                  (gpus_per_worker 1, 0.25, 0.5): wall time from start to the report, tokens/s of all trials
  (d) score    -- held-out scoring (scoring.score_checkpoint: generation and metrics) of the adapters the
                  4-per-GPU sweep kept, on the GPU, against the same on the CPU with every core (rows per s);
                  on the GPU also without cuDNN's attention (below)
  (e) levers   -- each of SPEED_SETTINGS alone (fused loss, packing, widths rounded to 64, compile) at (a)'s 32
                  rows against ftray's defaults: tokens/s, peak memory and the final loss (the same batches, so
                  a lever that leaves training as it is leaves the loss too): what a GPU's defaults should be;
                  and the defaults without cuDNN's attention (SDPA's flash, memory-efficient or math kernels:
                  cuDNN's builds a graph per new input shape, which short trials pay again and again)
--parts names parts by letter or by their keys in the JSON (share_4, tuned_compile, ...): a run that
did not reach a part can measure it alone, without paying again for the ones it has; a key brings what
it needs (scoring: share_4 for its adapters; a fallback: the measurement it stands in for).
Warm-up: every training measurement takes 40 steps; the first 10 are left out and the rate is the
timed 30 steps' tokens over their seconds (ftray's: its reports at steps 20, 30 and 40, evaluation
excluded); `warmup_s` is what the first 10 steps took, which a short trial pays in full. Tokens are
non-padding tokens (prompt and completion). One run of each by default, medians over steps; --reps N
runs each training measurement of (a), (b) and (e) N times and keeps the median of each figure
(the runs' tokens/s beside it). --profile records, for those, the operators that took the most host and
device time (torch.profiler, over the whole measurement, its first run): its rates are then not figures.
Model FLOPs per token: 4 * N_linear (forward, and the backward through the frozen weights; no
weight gradients but LoRA's) + 12 * layers * d_model * T (attention, forward and backward, T the mean
example length, PaLM's count); MFU is that rate over 989 TFLOP/s (H100/H200 dense bf16).
The last stdout line is one JSON object; the same goes to DIR/gpu-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftray.spec.config import SPEED_SETTINGS, TrialConfig  # noqa: E402
from ftray.train.data import batches, collate, select, tokenize_examples  # noqa: E402
from ftray.spec.ladder import LoraSettings, ModelSpec  # noqa: E402
from ftray.train.lora import apply_lora  # noqa: E402
from ftray.train.models import build_tokenizer  # noqa: E402
from ftray.train.recipe import TrialJob, run_local  # noqa: E402
from ftray.train.steps import lr_lambda  # noqa: E402
from ftray.tasks import SyntheticTask, ViggoTask  # noqa: E402

PEAK_FLOPS = 989e12  # H100/H200 SXM dense bf16
# Qwen2.5's published shapes (config.json of Qwen/Qwen2.5-0.5B and -1.5B); "tiny" checks this script on a CPU.
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
}
WARMUP, TIMED = 10, 30  # steps left out of every timing, and steps timed
RANK, LR, ROWS, MAX_LENGTH = 16, 1e-4, 32, 256
SHARE_TRIALS, SHARE_STEPS = 8, 30
PROFILE_TOP = 15  # operators kept per ranking under --profile

SWEEP = """
from ray import tune
from ftray import ModelSpec, Sweep, WandB
from ftray.tasks import {task_class}
sweep = Sweep(name={name!r}, task={task}, models=[ModelSpec({folder!r}, workers=1, gpus_per_worker={gpus})],
              space={{"lora_rank": tune.grid_search([8, 16]), "lr": tune.grid_search([5e-5, 1e-4, 2e-4, 4e-4])}},
              num_trials={trials}, steps={steps}, eval_every={steps}, eval_samples=8, max_new_tokens=8,
              eval_base=False, batch_size={rows}, max_length={max_length}, test_samples=0, cpus_per_worker={cpus},
              wandb=WandB(mode="disabled"))
"""


def task_data(task, max_length: int):
    """The tokenizer built on the task's training text, and its training rows tokenized."""
    train = task.examples("train")
    tok = build_tokenizer(t for e in train for t in (e.prompt, e.completion))
    return tok, tokenize_examples(select(train, 1.0, 0), tok, max_length)


def make_model(folder: Path, shape: dict, tok, device: torch.device) -> dict:
    """A randomly initialised Qwen2 of the given shape, saved (bf16 on GPU) with the local tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1e6,
                         rms_norm_eps=1e-6, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with device:
        model = Qwen2ForCausalLM(config).to(torch.bfloat16 if device.type == "cuda" else torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    out = {"params": sum(p.numel() for p in model.parameters()), "n_linear": n_linear,
           "layers": config.num_hidden_layers, "d_model": config.hidden_size}
    del model
    _free(device)
    return out


def load_lora(folder: Path, device: torch.device):
    """As ftray's worker builds it: bf16 frozen base on GPU, LoRA on all linear layers, fp32 adapters."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = apply_lora(model, ModelSpec(str(folder)), LoraSettings(RANK, 2 * RANK))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model.to(device)


def _free(device):
    """Give cached GPU memory back, so the next measurement (another process, too) has all of it."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak(device) -> dict:
    return {"peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30} if device.type == "cuda" else {}


# ---- (a), (b) and (e): one model, one process ----------------------------------------------------------
def ftray_loop(folder: Path, task, device: torch.device, **settings) -> dict:
    """ftray's recipe (run_local: a one-worker trial's loop without Ray), WARMUP + TIMED steps; the rate
    of the reports after the warm-up one."""
    config = TrialConfig(model=str(folder), lora_rank=RANK, lr=LR, steps=WARMUP + TIMED, batch_size=ROWS,
                         max_length=MAX_LENGTH, eval_every=WARMUP, eval_samples=2, max_new_tokens=2,
                         eval_base=False, warmup_ratio=0.05, seed=0, **settings)
    job = TrialJob(config=config, task=task, model=ModelSpec(str(folder)), lora=LoraSettings(RANK, 2 * RANK),
                   threads=8)
    _free(device)
    reports = run_local(job, device=device)
    first, last = reports[0], reports[-1]
    tokens, seconds = last["tokens"] - first["tokens"], last["train_s"] - first["train_s"]
    out = {"tokens_per_s": tokens / seconds, "tokens_per_step": tokens / TIMED, "warmup_s": first["train_s"],
           "step_s": statistics.median(r["step_s"] for r in reports[1:]), "loss": last.get("train_loss"), **_peak(device)}
    _free(device)
    return out


def bare(folder: Path, data: list, tok, device: torch.device) -> dict:
    """ftray's training step in a plain loop: same batches, autocast, AdamW, clipping, schedule."""
    steps = WARMUP + TIMED
    model = load_lora(folder, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, **({"fused": True} if device.type == "cuda" else {}))  # as ftray's
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(0.05 * steps), steps))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    order = [b for epoch in range(100) for b in batches(data, ROWS, 0, epoch, 0, 1)]
    model.train()
    tokens, step_times = 0, []
    t0 = time.time()
    for step in range(steps):
        if step == WARMUP:
            _sync(device)
            t = time.time()
            warmup_s = t - t0
        t_step = time.perf_counter()
        cpu = collate([data[i] for i in order[step]], tok.pad_token_id)
        if step >= WARMUP:
            tokens += int(cpu["attention_mask"].sum())
        batch = {k: v.to(device, non_blocking=True) for k, v in cpu.items()}
        with autocast:
            loss = model(**batch, use_cache=False).loss  # as ftray's: no KV cache built in training
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        norm.item()  # ftray's loop waits once per step, for its divergence check
        if step >= WARMUP:
            step_times.append(time.perf_counter() - t_step)
    _sync(device)
    out = {"tokens_per_s": tokens / (time.time() - t), "step_s": statistics.median(step_times), "warmup_s": warmup_s,
           **_peak(device)}
    del model, opt, params
    _free(device)
    return out


def hf_trainer(folder: Path, data: list, tok, device: torch.device, rows: int = ROWS, tuned: bool = False,
               liger: bool = True) -> dict:
    """Hugging Face's Trainer on the same rows; `tuned`: its padding-free collator (examples end to end
    in one row, position_ids restarting) and, where liger_kernel imports, its Liger flag."""
    from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments

    model = load_lora(folder, device)
    sizes: list[int] = []  # non-padding tokens of each batch, in order
    flatten = DataCollatorWithFlattening(return_position_ids=True)

    def collator(samples):
        if tuned:
            batch = flatten([{"input_ids": s["input_ids"], "labels": s["labels"]} for s in samples])
            sizes.append(int(batch["input_ids"].numel()))
            return batch
        batch = collate(samples, tok.pad_token_id)
        sizes.append(int(batch["attention_mask"].sum()))
        return batch

    marks: dict[int, float] = {}
    steps = WARMUP + TIMED

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            marks[0] = time.time()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (WARMUP, steps):
                _sync(device)
                marks[state.global_step] = time.time()

    on_gpu = device.type == "cuda"
    if tuned and liger:
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            liger = False
    liger = liger and tuned and on_gpu
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=rows, max_steps=steps,
                                 learning_rate=LR, warmup_steps=int(0.05 * steps), lr_scheduler_type="cosine",
                                 max_grad_norm=1.0, bf16=on_gpu, use_cpu=not on_gpu, report_to=[],
                                 save_strategy="no", logging_strategy="no", dataloader_num_workers=0,
                                 disable_tqdm=True, seed=0, use_liger_kernel=liger, remove_unused_columns=False)
        Trainer(model=model, args=args, train_dataset=data, data_collator=collator, callbacks=[Clock()]).train()
    timed = sizes[WARMUP:steps]
    out = {"tokens_per_s": sum(timed) / (marks[steps] - marks[WARMUP]), "tokens_per_step": sum(timed) / len(timed),
           "warmup_s": marks[WARMUP] - marks[0],
           "liger": liger, **_peak(device)}
    del model
    _free(device)
    return out


# ---- (c) and (d): sweeps sharing the GPU, and held-out scoring ------------------------------------------
def share_sweep(folder: Path, data_dir: str | None, tmp: Path, per_gpu: int, on_gpu: bool, cpus: int) -> dict:
    """`ftray run` of SHARE_TRIALS trials, `per_gpu` of them on each GPU (on a CPU: that many at a time)."""
    name = f"share{per_gpu}"
    gpus = 1 / per_gpu if on_gpu else 0
    src = SWEEP.format(name=name, folder=str(folder), gpus=gpus, trials=SHARE_TRIALS, steps=SHARE_STEPS, rows=ROWS,
                       max_length=MAX_LENGTH, cpus=1 if on_gpu else round(cpus / per_gpu, 3), **task_src_fields(data_dir))
    sweep_file = tmp / f"{name}.py"
    sweep_file.write_text(textwrap.dedent(src))
    storage = tmp / "runs"
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "ftray.cli", "run", str(sweep_file), "--storage", str(storage)],
                          capture_output=True, text=True)
    wall = time.time() - t
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    reports = [[json.loads(line) for line in f.read_text().splitlines() if line.strip()]
               for f in sorted((storage / name).glob("*/result.json"))]
    tokens = sum(r[-1]["tokens"] for r in reports if r)
    # Where a trial's time went (its last report's totals; the rest of the wall is Ray, Tune and the report).
    phases = {k: statistics.median(r[-1][k] for r in reports if r and k in r[-1])
              for k in ("worker_start_s", "setup_s", "train_s", "eval_s") if any(r and k in r[-1] for r in reports)}
    # From the first trial's start to the last one's end (Tune's whole-second timestamps): the wall less this
    # is the sweep's own start and end (Ray, Tune, the report), paid once however the trials share the GPU.
    done = [r for r in reports if r]
    span = (max(r[-1]["timestamp"] for r in done) - min(r[-1]["timestamp"] - r[-1]["time_total_s"] for r in done)
            if done and all("timestamp" in r[-1] and "time_total_s" in r[-1] for r in done) else None)
    return {"trials": len(reports), "per_gpu": per_gpu, "wall_s": wall, "tokens_per_s": tokens / wall,
            "max_trial_peak_gib": max((r[-1].get("peak_gpu_mem_gib", 0.0) for r in reports if r), default=0.0),
            "trial_median_s": phases, "trials_span_s": span, "run_dir": str(storage / name)}


def kept_checkpoints(run_dir: str) -> list[str]:
    return sorted(str(p.parent) for p in Path(run_dir, "checkpoints").glob("*/*/adapter_config.json"))


def score_rate(checkpoints: list[str], task, folder: Path, rows: int, device: str) -> dict:
    """Rows scored per second by ftray's held-out scoring (generation and metrics) of these adapters."""
    from ftray.driver.scoring import score_checkpoint

    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)  # the CPU path at its best: every core on one adapter
    examples = task.examples("test")[:rows]
    t = time.time()
    for c in checkpoints:
        score_checkpoint(c, task, ModelSpec(str(folder)), examples, device=device)
    seconds = time.time() - t
    return {"adapters": len(checkpoints), "rows": rows, "seconds": seconds,
            "rows_per_s": len(checkpoints) * rows / seconds}


def task_src_fields(data: str | None) -> dict:
    if data:
        return {"task_class": "ViggoTask", "task": f"ViggoTask(path={data!r})"}
    return {"task_class": "SyntheticTask", "task": "SyntheticTask(n_train=4000, n_valid=64, n_test=64)"}


# ---- repeats and profiles of one training measurement -----------------------------------------------
def median_of(runs: list[dict]) -> dict:
    """One measurement from several runs of it: each number's median, and the runs' tokens/s in order."""
    out = {k: statistics.median(r[k] for r in runs) for k, v in runs[0].items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and all(k in r for r in runs)}
    out.update({k: v for k, v in runs[0].items() if k not in out})
    if len(runs) > 1:
        out["runs_tokens_per_s"] = [r.get("tokens_per_s") for r in runs]
    return out


def profiled(fn, *args, **kwargs) -> dict:
    """fn's result with `profile`: the PROFILE_TOP operators by self host time and by self device time
    (name, calls, milliseconds), and the host's waits for the device (synchronize calls)."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])) as prof:
        out = fn(*args, **kwargs)
    rows = [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3),
             "self_device_ms": round(getattr(e, "self_device_time_total", 0) / 1e3, 3)} for e in prof.key_averages()]
    top = lambda key: [r for r in sorted(rows, key=lambda r: -r[key])[:PROFILE_TOP] if r[key] > 0]  # noqa: E731
    out["profile"] = {"by_host": top("self_cpu_ms"), "by_device": top("self_device_ms"),
                      "syncs": sum(r["calls"] for r in rows if "Synchronize" in r["op"])}
    return out


def in_fresh_process(fn):
    """fn in a process of its own (spawned): the Trainer's Liger flag patches transformers' Qwen2 code for
    the whole process, which would change every model the bench builds after it."""

    def run(*args, **kwargs):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Not a Pool: a child that dies (a CUDA abort, the OOM killer) raises BrokenProcessPool, not a hang.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(fn, *args, **kwargs).result()

    return run


def without_cudnn_attention(fn):
    """fn with PyTorch's SDPA choosing among flash, memory-efficient and math attention only. cuDNN's,
    which recent GPUs prefer, builds a graph for each new input shape, so a short trial (and generation,
    whose key length grows each token) may pay set-up more than it gains: this measures it."""

    def run(*args, **kwargs):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return fn(*args, **kwargs)

    return run


def measured(fn, reps: int, profile: bool):
    """A training measurement `reps` times, the first under the profiler where asked: their medians."""

    def run(*args, **kwargs):
        runs = [profiled(fn, *args, **kwargs) if profile and i == 0 else fn(*args, **kwargs) for i in range(reps)]
        return median_of(runs)

    return run


# ---- the run ------------------------------------------------------------------------------------------
# The parts by letter, as the docstring names them, and the keys each measures.
PARTS = {"a": ("ftray_default", "bare_default", "hf_default"),
         "b": ("tuned", "tuned_chunked", "tuned_unfused", "hf_tuned", "hf_tuned_no_liger", "tuned_compile"),
         "c": ("share_1", "share_4", "share_2"),
         "d": ("share_4", "score_gpu", "score_gpu_no_cudnn", "score_cpu_check", "score_cpu"),
         "e": (*(f"lever_{name}" for name in SPEED_SETTINGS), "lever_no_cudnn_attention")}
KEYS = tuple(dict.fromkeys(k for keys in PARTS.values() for k in keys))
# The training measurements of one process, which --reps repeats and --profile profiles.
TRAINING = PARTS["a"] + PARTS["b"] + PARTS["e"]
# What a key cannot run without: the scoring needs the 4-per-GPU sweep's adapters; a fallback runs only
# where the measurement it stands in for failed; a lever is measured against the defaults.
NEEDS = {"score_gpu": "share_4", "score_gpu_no_cudnn": "share_4", "score_cpu_check": "share_4", "score_cpu": "share_4",
         "tuned_chunked": "tuned",
         "hf_tuned_no_liger": "hf_tuned", **{lever: "ftray_default" for lever in PARTS["e"]}}


def selected_keys(spec: str | None) -> set[str]:
    """--parts as the keys it selects: letters and keys, comma-separated; None: every part. ValueError
    names an unknown one."""
    if not spec:
        return set(KEYS)
    keys: set[str] = set()
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        if item not in PARTS and item not in KEYS:
            raise ValueError(f"--parts: unknown {item!r}; choose from {', '.join([*PARTS, *KEYS])}")
        keys.update(PARTS.get(item, (item,)))
    return keys | {NEEDS[k] for k in keys if k in NEEDS}


class Parts:
    """Runs each selected part unless the budget is spent; keeps what each measured (or why it did not)."""

    def __init__(self, results: dict, budget_s: float, out: Path, selected: set[str] = frozenset(KEYS),
                 reps: int = 1, profile: bool = False):
        self.results, self.budget_s, self.out, self.t0 = results, budget_s, out, time.time()
        self.selected, self.reps, self.profile = selected, reps, profile

    def run(self, key: str, fn, *args, **kwargs):
        if key not in self.selected:
            return None
        elapsed = time.time() - self.t0
        if elapsed > self.budget_s:
            self.results["skipped"].append(f"{key}: the budget of {self.budget_s:g} s was spent ({elapsed:.0f} s)")
            print(f"bench: skipped {key} (budget spent)", flush=True)
            return None
        _free(torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # nothing of a failed part stays
        t = time.time()
        if key in TRAINING and (self.reps > 1 or self.profile):
            fn = measured(fn, self.reps, self.profile)
        try:
            value = fn(*args, **kwargs)
        except Exception as e:  # one part's failure must not lose the others' figures
            value = {"error": f"{type(e).__name__}: {str(e)[-1500:]}"}
        if isinstance(value, dict):
            value["part_s"] = round(time.time() - t, 1)
        self.results["measured"][key] = value
        print(f"bench: {key}: {json.dumps(value)}", flush=True)
        self.save()
        return value

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"gpu-{self.results['date']}.json").write_text(json.dumps(self.results, indent=2))


def ratio(m: dict, a: str, b: str, key: str = "tokens_per_s") -> float | None:
    x, y = m.get(a) or {}, m.get(b) or {}
    return x[key] / y[key] if key in x and key in y and y[key] else None


def summary(results: dict, flops: dict) -> dict:
    m = results["measured"]
    big, small = flops.get("1.5b") or flops.get("tiny"), flops.get("0.5b") or flops.get("tiny")
    mfu = lambda k: m[k]["tokens_per_s"] * big / PEAK_FLOPS if "tokens_per_s" in (m.get(k) or {}) else None
    best_tuned = max((k for k in ("tuned", "tuned_chunked", "tuned_compile") if "tokens_per_s" in (m.get(k) or {})),
                     key=lambda k: m[k]["tokens_per_s"], default=None)
    share1, share4 = m.get("share_1") or {}, m.get("share_4") or {}
    return {
        "ftray_vs_bare_default": ratio(m, "ftray_default", "bare_default"),
        "ftray_vs_hf_default": ratio(m, "ftray_default", "hf_default"),
        "best_tuned": best_tuned,
        "tuned_vs_hf_default": ratio(m, best_tuned, "hf_default") if best_tuned else None,
        "tuned_vs_hf_tuned": ratio(m, best_tuned, "hf_tuned" if "hf_tuned" in m and "error" not in m["hf_tuned"]
                                   else "hf_tuned_no_liger") if best_tuned else None,
        "tuned_vs_ftray_default": ratio(m, best_tuned, "ftray_default") if best_tuned else None,
        "mfu_ftray_default": mfu("ftray_default"), "mfu_tuned": mfu(best_tuned) if best_tuned else None,
        "mfu_hf_default": mfu("hf_default"), "mfu_hf_tuned": mfu("hf_tuned"),
        "tuned_peak_vs_unfused": ratio(m, "tuned" if "peak_mem_gib" in (m.get("tuned") or {}) else "tuned_chunked",
                                       "tuned_unfused", "peak_mem_gib"),
        "share_4_vs_1_wall": share1["wall_s"] / share4["wall_s"] if "wall_s" in share1 and "wall_s" in share4 else None,
        # The same without the sweep's own start and end (paid once at any sharing).
        "share_4_vs_1_span": (share1["trials_span_s"] / share4["trials_span_s"]
                              if share1.get("trials_span_s") and share4.get("trials_span_s") else None),
        "share_2_vs_1_wall": (share1["wall_s"] / m["share_2"]["wall_s"]
                              if "wall_s" in share1 and "wall_s" in (m.get("share_2") or {}) else None),
        "score_gpu_vs_cpu": ratio(m, "score_gpu", "score_cpu", "rows_per_s"),
        "score_gpu_no_cudnn_vs_cudnn": ratio(m, "score_gpu_no_cudnn", "score_gpu", "rows_per_s"),
        # Each lever alone against the defaults: speed and peak memory as ratios, the final loss as a difference.
        "levers": {key[len("lever_"):]: {"speed": ratio(m, key, "ftray_default"),
                                         "peak": ratio(m, key, "ftray_default", "peak_mem_gib"),
                                         "warmup": ratio(m, key, "ftray_default", "warmup_s"),
                                         "loss_change": (m[key]["loss"] - m["ftray_default"]["loss"]
                                                         if (m[key].get("loss") is not None
                                                             and (m.get("ftray_default") or {}).get("loss") is not None)
                                                         else None)}
                   for key in PARTS["e"] if "tokens_per_s" in (m.get(key) or {})},
        "flops_per_token": {"1.5b": big, "0.5b": small},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="0.5b,1.5b", help="0.5b,1.5b on a GPU; tiny checks the script on a CPU")
    ap.add_argument("--data", default=None, help="a ViGGO folder (train/valid/test.csv); default: synthetic data")
    ap.add_argument("--batch-tokens", type=int, default=None,
                    help="the tuned path's token budget per step (default 16384; 2048 for --sizes tiny, whose "
                         "check on a CPU would spend minutes on the tuned Trainer's one 16k-token row)")
    ap.add_argument("--budget-s", type=float, default=480, help="no part starts after this many seconds")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--parts", default=None, help="only these parts: letters a-e or keys, e.g. d,tuned_compile,share_2")
    ap.add_argument("--reps", type=int, default=1, help="runs of each training measurement of (a), (b) and (e); their medians")
    ap.add_argument("--profile", action="store_true",
                    help="the top operators of each training measurement of (a), (b) and (e) (rates then not figures)")
    args = ap.parse_args()
    if args.reps < 1:
        ap.error(f"--reps must be 1 or more, got {args.reps}")
    try:
        selected = selected_keys(args.parts)
    except ValueError as e:
        ap.error(str(e))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = args.sizes.split(",")
    if unknown := [x for x in sizes if x not in SHAPES]:
        ap.error(f"--sizes: unknown {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    if device.type == "cpu" and sizes != ["tiny"]:
        ap.error("no GPU here: this benchmark measures on a GPU; `--sizes tiny` checks the script on a CPU")
    big, small = ("tiny", "tiny") if sizes == ["tiny"] else ("1.5b", "0.5b")
    if args.batch_tokens is None:
        args.batch_tokens = 2048 if big == "tiny" else 16384
    task = ViggoTask(path=args.data) if args.data else SyntheticTask(n_train=4000, n_valid=64, n_test=64)
    tok, data = task_data(task, MAX_LENGTH)
    mean_len = statistics.mean(len(d["input_ids"]) for d in data)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    results: dict = {"date": str(date.today()), "device": name, "torch": torch.__version__,
                     "liger_kernel": _version("liger-kernel"),
                     "data": "ViGGO train" if args.data else "synthetic", "mean_tokens_per_example": mean_len,
                     "settings": {"lora_rank": RANK, "lora_targets": "all-linear", "lr": LR, "rows": ROWS,
                                  "max_length": MAX_LENGTH, "warmup_steps": WARMUP, "timed_steps": TIMED,
                                  # (b)'s tuned path; tuned_compile adds compile=True
                                  "tuned": dict(SPEED_SETTINGS, compile=False, batch_tokens=args.batch_tokens),
                                  "share": {"trials": SHARE_TRIALS, "steps": SHARE_STEPS},
                                  "reps": args.reps, "profiled": args.profile,
                                  "dtype": "bf16 base, fp32 adapters, autocast bf16" if device.type == "cuda" else "fp32"},
                     "parts": sorted(selected, key=KEYS.index), "measured": {}, "skipped": [], "models": {}}
    parts = Parts(results, args.budget_s, args.out, selected, args.reps, args.profile)
    tmp = Path(tempfile.mkdtemp(prefix="ftray-gpu-"))
    folders, flops = {}, {}
    # Only the models the selected parts train: (a), (b) and (e) the big one, (c) and (d) the small one.
    wanted = [size for size, part in ((big, TRAINING), (small, PARTS["c"] + PARTS["d"]))
              if selected & set(part)]
    for size in dict.fromkeys(wanted):
        folders[size] = tmp / f"qwen2.5-{size}-shaped"
        shape = make_model(folders[size], SHAPES[size], tok, device)
        flops[size] = 4 * shape["n_linear"] + 12 * shape["layers"] * shape["d_model"] * mean_len
        results["models"][size] = dict(shape, flops_per_token=flops[size])
    tuned = results["settings"]["tuned"]
    rows_for_budget = max(1, round(args.batch_tokens / mean_len))
    # (a) today's comparison, then (b) the tuned path, on the big model.
    parts.run("ftray_default", ftray_loop, folders[big], task, device)
    parts.run("bare_default", bare, folders[big], data, tok, device)
    parts.run("hf_default", hf_trainer, folders[big], data, tok, device)
    if "error" in (parts.run("tuned", ftray_loop, folders[big], task, device, **tuned) or {}):
        # fused_loss "auto" is Liger's kernel on CUDA: where it fails, ftray's own chunked loss.
        parts.run("tuned_chunked", ftray_loop, folders[big], task, device, **dict(tuned, fused_loss="chunked"))
    parts.run("tuned_unfused", ftray_loop, folders[big], task, device, **dict(tuned, fused_loss="off"))
    if "error" in (parts.run("hf_tuned", in_fresh_process(hf_trainer), folders[big], data, tok, device,
                             rows=rows_for_budget, tuned=True) or {}):
        parts.run("hf_tuned_no_liger", hf_trainer, folders[big], data, tok, device, rows=rows_for_budget, tuned=True,
                  liger=False)
    # (c) sweeps sharing the GPU, then (d) scoring their kept adapters; the optional parts last.
    cpus = os.cpu_count() or 1
    parts.run("share_1", share_sweep, folders[small], args.data, tmp, 1, device.type == "cuda", cpus)
    share4 = parts.run("share_4", share_sweep, folders[small], args.data, tmp, 4, device.type == "cuda", cpus)
    kept = kept_checkpoints(share4["run_dir"]) if share4 and "run_dir" in share4 else []
    if kept:
        score_rows = 32 if device.type == "cuda" else 4
        parts.run("score_gpu" if device.type == "cuda" else "score_cpu_check", score_rate, kept, task,
                  folders[small], score_rows, device.type)
        if device.type == "cuda":
            parts.run("score_gpu_no_cudnn", without_cudnn_attention(score_rate), kept, task, folders[small],
                      score_rows, device.type)
        parts.run("score_cpu", score_rate, kept[:1], task, folders[small], 4, "cpu")
    parts.run("tuned_compile", ftray_loop, folders[big], task, device, **dict(tuned, compile=True))
    parts.run("share_2", share_sweep, folders[small], args.data, tmp, 2, device.type == "cuda", cpus)
    # (e) each speed lever alone, at the defaults' batch.
    for name, value in SPEED_SETTINGS.items():
        parts.run(f"lever_{name}", ftray_loop, folders[big], task, device, **{name: value})
    parts.run("lever_no_cudnn_attention", without_cudnn_attention(ftray_loop), folders[big], task, device)
    results["summary"] = summary(results, flops)
    parts.save()
    print_table(results)
    print(json.dumps(results["summary"]))


def print_table(results: dict) -> None:
    m, s = results["measured"], results["summary"]
    print(f"\nftray on GPU ({results['device']}, torch {results['torch']}, {results['data']}, LoRA r{RANK} all-linear,"
          f" {WARMUP} warm-up + {TIMED} timed steps each; run_local = a one-worker trial's loop without Ray)")
    print(f"  {'measurement':16} {'tokens/s':>10} {'tokens/step':>12} {'peak GiB':>9}")
    for key, v in m.items():
        if isinstance(v, dict) and "tokens_per_s" in v:
            print(f"  {key:16} {v['tokens_per_s']:10.0f} {v.get('tokens_per_step', float('nan')):12.0f} "
                  f"{v.get('peak_mem_gib', v.get('max_trial_peak_gib', 0.0)):9.1f}"
                  + (f"   wall {v['wall_s']:.1f} s, {v['trials']} trials" if "wall_s" in v else ""))
        elif isinstance(v, dict) and "error" in v:
            print(f"  {key:16} error: {v['error'][:200]}")
    for k, v in s.items():
        if k not in ("flops_per_token", "levers"):
            print(f"  {k:24} {v if not isinstance(v, float) else round(v, 3)}")
    for name, v in s.get("levers", {}).items():
        fmt = lambda x, spec: "n/a" if x is None else format(x, spec)  # noqa: E731
        print(f"  lever {name:18} {fmt(v['speed'], '.3f')}x the defaults' tokens/s, peak {fmt(v['peak'], '.3f')}x, "
              f"first {WARMUP} steps' time {fmt(v.get('warmup'), '.3f')}x, final loss {fmt(v['loss_change'], '+.2e')}")
    print("  FLOPs/token = 4*N_linear + 12*layers*d_model*T (T = mean tokens per example); MFU over 989 TFLOP/s bf16")
    for line in results["skipped"]:
        print(f"  skipped: {line}")
    for key, v in m.items():
        if isinstance(v, dict) and "profile" in v:
            p = v["profile"]
            print(f"\n  {key}: host waits for the device {p['syncs']}; top operators (calls, self ms)")
            for side, ms in (("by_host", "self_cpu_ms"), ("by_device", "self_device_ms")):
                if p[side]:
                    print(f"    {side}: " + "; ".join(f"{r['op']} ({r['calls']}, {r[ms]:.0f})" for r in p[side][:8]))


if __name__ == "__main__":
    main()
