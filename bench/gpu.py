"""GPU benchmark: LoRA finetunes of randomly initialised models the size of Qwen2.5-0.5B and 1.5B.

    python bench/gpu.py [--sizes 0.5b,1.5b] [--data VIGGO_FOLDER] [--out DIR]

For each size, on one GPU, the same model, data, batch and LoRA settings three ways:
  ftray  -- `ftray run` of a sweep of 3 trials (Ray Train, one GPU worker, bf16, W&B offline), run
            first; the rate is each trial's last report (the steps after the first eval), as ftray logs it
  bare   -- the same step in a plain PyTorch loop (no Ray), timed after 10 warm-up steps
  hf     -- Hugging Face Trainer (bf16=True, its default sampler), timed after 10 warm-up steps
Tokens are non-padding tokens (prompt and completion). Model FLOPs per token, stated in the output:
4 * N_linear (forward, and the backward through the frozen weights; no weight gradients but LoRA's)
+ 12 * layers * d_model * T (attention scores and mixing, forward and backward, T the mean sequence
length, PaLM's count); MFU is that rate over the H100's 989 TFLOP/s dense bf16 peak.
The last stdout line is one JSON object; the same goes to DIR/gpu-<date>.json.
"""

from __future__ import annotations

import argparse
import json
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

from ftray.data import batches, collate, select, tokenize_examples  # noqa: E402
from ftray.models import LoraSettings, ModelSpec, apply_lora, build_tokenizer  # noqa: E402
from ftray.tasks import SyntheticTask, ViggoTask  # noqa: E402
from ftray.recipe import lr_lambda  # noqa: E402

PEAK_FLOPS = 989e12  # H100 SXM dense bf16
# Qwen2.5's published shapes (config.json of Qwen/Qwen2.5-0.5B and -1.5B); "tiny" checks this script on a CPU.
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
}
WARMUP = 10  # steps left out of the bare and HF timings

SWEEP = """
from ftray import ModelSpec, Sweep, WandB
from ftray.tasks import {task_class}
sweep = Sweep(name="gpu", task={task}, models=[ModelSpec({folder!r}, workers=1, gpus_per_worker={gpus})],
              space={{"lora_rank": {rank}, "lr": {lr}}}, num_trials=3, steps={steps}, eval_every={eval_every},
              eval_samples=8, max_new_tokens=8, eval_base=False, batch_size={batch}, max_length={max_length},
              warmup_ratio=0.05, wandb=WandB(mode="offline"))
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


def load_lora(folder: Path, rank: int, device: torch.device):
    """As ftray's worker builds it: bf16 frozen base on GPU, LoRA on all linear layers, fp32 adapters."""
    from transformers import AutoModelForCausalLM

    on_gpu = device.type == "cuda"
    spec = ModelSpec(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if on_gpu else torch.float32)
    model = apply_lora(model, spec, LoraSettings(rank, 2 * rank))
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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare(folder: Path, data: list, tok, cfg: dict, device: torch.device) -> dict:
    """ftray's training step in a plain loop: same batches, autocast, AdamW, clipping, schedule."""
    model = load_lora(folder, cfg["rank"], device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(0.05 * cfg["steps"]), cfg["steps"]))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    order = [b for epoch in range(100) for b in batches(data, cfg["batch"], 0, epoch, 0, 1)]
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens = 0
    step_times = []
    for step in range(cfg["steps"]):
        if step == WARMUP:
            _sync(device)
            t = time.time()
        t_step = time.perf_counter()
        cpu = collate([data[i] for i in order[step]], tok.pad_token_id)
        if step >= WARMUP:
            tokens += int(cpu["attention_mask"].sum())
        batch = {k: v.to(device, non_blocking=True) for k, v in cpu.items()}
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        norm.item()  # ftray's loop waits once per step, for its divergence check
        if step >= WARMUP:
            step_times.append(time.perf_counter() - t_step)
    _sync(device)
    out = {"tokens_per_s": tokens / (time.time() - t), "step_s": statistics.median(step_times), **_peak(device)}
    del model, opt, params
    _free(device)
    return out


def hf_trainer(folder: Path, data: list, tok, cfg: dict, device: torch.device) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = load_lora(folder, cfg["rank"], device)
    sizes: list[tuple[int, int]] = []  # (non-padding, padded) tokens of each batch, in order

    def collator(samples):
        batch = collate(samples, tok.pad_token_id)
        sizes.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel()))
        return batch

    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (WARMUP, cfg["steps"]):
                _sync(device)
                marks[state.global_step] = time.time()

    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=cfg["batch"], max_steps=cfg["steps"],
                                 learning_rate=cfg["lr"], warmup_steps=int(0.05 * cfg["steps"]),
                                 lr_scheduler_type="cosine", max_grad_norm=1.0, bf16=on_gpu, use_cpu=not on_gpu,
                                 report_to=[], save_strategy="no", logging_strategy="no", dataloader_num_workers=0,
                                 disable_tqdm=True, seed=0)
        Trainer(model=model, args=args, train_dataset=data, data_collator=collator, callbacks=[Clock()]).train()
    timed = sizes[WARMUP : cfg["steps"]]
    out = {"tokens_per_s": sum(r for r, _ in timed) / (marks[cfg["steps"]] - marks[WARMUP]),
           "padding_efficiency": sum(r for r, _ in timed) / sum(a for _, a in timed), **_peak(device)}
    del model
    _free(device)
    return out


def _peak(device) -> dict:
    return {"peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30} if device.type == "cuda" else {}


def ftray_sweep(folder: Path, task_src: str, cfg: dict, tmp: Path, gpus: float) -> list[dict]:
    sweep_file = tmp / f"gpu_{time.time_ns()}.py"
    sweep_file.write_text(textwrap.dedent(SWEEP.format(folder=str(folder), gpus=gpus, eval_every=cfg["steps"] // 2,
                                                       **task_src_fields(task_src), **cfg)))
    storage = tmp / "runs"
    proc = subprocess.run([sys.executable, "-m", "ftray.cli", "run", str(sweep_file), "--storage", str(storage),
                           "--name", sweep_file.stem], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-4000:] + proc.stderr[-4000:])
    # Each trial's reports: the first covers the warm-up steps, the last is the steady rate.
    return [[json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            for f in sorted((storage / sweep_file.stem).glob("run_trial_*/result.json"))]


def task_src_fields(data: str | None) -> dict:
    if data:
        return {"task_class": "ViggoTask", "task": f"ViggoTask(path={data!r})"}
    return {"task_class": "SyntheticTask", "task": "SyntheticTask(n_train=4000, n_valid=64, n_test=8)"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="0.5b,1.5b", help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--data", default=None, help="a ViGGO folder (train/valid/test.csv); default: synthetic data")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = args.sizes.split(",")
    if unknown := [x for x in sizes if x not in SHAPES]:
        ap.error(f"--sizes: unknown {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    if args.steps <= WARMUP:
        ap.error(f"--steps must be more than the {WARMUP} warm-up steps left out of the timings, got {args.steps}")
    if device.type == "cpu" and sizes != ["tiny"]:
        ap.error("no GPU here: this benchmark measures on a GPU; `--sizes tiny` checks the script on a CPU")
    task = ViggoTask(path=args.data) if args.data else SyntheticTask(n_train=4000, n_valid=64, n_test=8)
    cfg = dict(rank=16, lr=1e-4, steps=args.steps, batch=args.batch, max_length=256)
    tok, data = task_data(task, cfg["max_length"])
    mean_len = statistics.mean(len(d["input_ids"]) for d in data)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    results: dict = {"date": str(date.today()), "device": name, "torch": torch.__version__,
                     "data": "ViGGO train" if args.data else "synthetic", "mean_tokens_per_example": mean_len,
                     "settings": dict(cfg, lora_targets="all-linear", lora_alpha=2 * cfg["rank"],
                                      dtype="bf16 base, fp32 adapters, autocast bf16" if device.type == "cuda" else "fp32"),
                     "sizes": {}}
    tmp = Path(tempfile.mkdtemp(prefix="ftray-gpu-"))
    for size in sizes:
        folder = tmp / f"qwen2.5-{size}-shaped"
        shape = make_model(folder, SHAPES[size], tok, device)
        flops_per_token = 4 * shape["n_linear"] + 12 * shape["layers"] * shape["d_model"] * mean_len
        # One sweep of 3 trials (Ray starts once), then bare and HF Trainer in turns.
        reports = ftray_sweep(folder, args.data, cfg, tmp, gpus=1 if device.type == "cuda" else 0)
        sweep = [r[-1] for r in reports]
        bares, hfs = [], []
        for _ in range(args.reps):
            bares.append(bare(folder, data, tok, cfg, device))
            hfs.append(hf_trainer(folder, data, tok, cfg, device))
        ftray_rate = statistics.median(t["train_tokens_per_s"] for t in sweep)
        bare_rate = statistics.median(b["tokens_per_s"] for b in bares)
        hf_rate = statistics.median(h["tokens_per_s"] for h in hfs)
        row = {**shape, "flops_per_token": flops_per_token,
               "ftray_tokens_per_s": ftray_rate, "bare_tokens_per_s": bare_rate, "hf_trainer_tokens_per_s": hf_rate,
               "ftray_mfu": ftray_rate * flops_per_token / PEAK_FLOPS, "bare_mfu": bare_rate * flops_per_token / PEAK_FLOPS,
               "hf_trainer_mfu": hf_rate * flops_per_token / PEAK_FLOPS,
               "ftray_step_s": statistics.median(t["step_s"] for t in sweep),
               "bare_step_s": statistics.median(b["step_s"] for b in bares),
               "ftray_first_report_tokens_per_s": statistics.median(r[0]["train_tokens_per_s"] for r in reports),
               "ftray_vs_hf_trainer": ftray_rate / hf_rate, "ftray_vs_bare": ftray_rate / bare_rate,
               "hf_trainer_padding_efficiency": statistics.median(h["padding_efficiency"] for h in hfs),
               "ftray_peak_gpu_mem_gib": max((t.get("peak_gpu_mem_gib", 0.0) for t in sweep), default=0.0),
               "bare_peak_mem_gib": max((b.get("peak_mem_gib", 0.0) for b in bares), default=0.0),
               "hf_trainer_peak_mem_gib": max((h.get("peak_mem_gib", 0.0) for h in hfs), default=0.0),
               "ftray_trial_setup_s": statistics.median(t["setup_s"] for t in sweep),
               "ftray_worker_start_s": statistics.median(t["worker_start_s"] for t in sweep)}
        results["sizes"][size] = row
        print(f"{size}: {json.dumps(row)}", flush=True)
        for f in folder.iterdir():
            f.unlink()

    print(f"\nftray on GPU ({name}, torch {torch.__version__}, {results['data']}, batch {cfg['batch']}, "
          f"LoRA r{cfg['rank']} all-linear, {cfg['steps']} steps, {WARMUP} warm-up)")
    print(f"  {'size':6} {'params':>8} {'ftray tok/s':>12} {'bare tok/s':>11} {'HF tok/s':>10} {'ftray/HF':>9} "
          f"{'ftray/bare':>10} {'MFU ftray':>9} {'MFU HF':>7} {'peak GiB':>9}")
    for size, r in results["sizes"].items():
        print(f"  {size:6} {r['params'] / 1e9:7.2f}B {r['ftray_tokens_per_s']:12.0f} {r['bare_tokens_per_s']:11.0f} "
              f"{r['hf_trainer_tokens_per_s']:10.0f} {r['ftray_vs_hf_trainer']:9.2f} {r['ftray_vs_bare']:10.2f} "
              f"{r['ftray_mfu']:9.3f} {r['hf_trainer_mfu']:7.3f} {r['ftray_peak_gpu_mem_gib']:9.1f}")
    print("  FLOPs/token = 4*N_linear + 12*layers*d_model*T (T = mean tokens per example); MFU over 989 TFLOP/s bf16")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"gpu-{results['date']}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
