"""How close is ftray's GPU memory estimate (ftray.driver.resources.estimate_memory) to a real training step?

    python bench/gpu_memory.py [--out FILE]

On one GPU, randomly initialised models of Qwen2.5-0.5B's and 1.5B's shapes (bench/gpu.py's SHAPES), built
as the recipe builds them (bf16 frozen base, LoRA r16 on all linear layers in fp32, fused AdamW, bf16
autocast, ftray.train.steps.forward_backward), train 2 steps on micro-batches of every row at full length;
the peak of torch.cuda.max_memory_allocated is set beside the estimate. One JSON object per line.
Its figures (bench/results/gpu-memory-2026-12-04.json) fitted ftray.driver.resources' ACTIVATION_BYTES and LOGIT_BYTES.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftray.spec.ladder import LoraSettings, ModelSpec  # noqa: E402
from ftray.train.lora import apply_lora, count_params  # noqa: E402
from ftray.driver.resources import CUDA_CONTEXT_BYTES, GIB, estimate_memory  # noqa: E402
from ftray.train.steps import forward_backward  # noqa: E402
from bench.gpu import SHAPES  # noqa: E402  (Qwen2.5's published shapes, as the GPU benchmark builds them)

CASES = [("0.5b", 8, 256, False), ("0.5b", 32, 256, False), ("0.5b", 32, 128, False), ("0.5b", 64, 256, False),
         ("0.5b", 32, 256, True), ("1.5b", 16, 256, False), ("1.5b", 32, 256, False), ("1.5b", 32, 256, True)]


def measure(size: str, rows: int, length: int, checkpointing: bool) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    device = torch.device("cuda")
    shape = SHAPES[size]
    config = Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=32768)
    torch.manual_seed(0)
    with device:
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = apply_lora(model, ModelSpec("bench"), LoraSettings(16, 32))
    params, trainable = count_params(model)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    ids = torch.randint(0, shape["vocab_size"], (rows, length), device=device)
    labels = ids.clone()
    labels[:, : length // 4] = -100  # the prompt: no loss there
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    model.train()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        forward_backward(model, batch, autocast=torch.autocast("cuda", dtype=torch.bfloat16),
                         no_sync=contextlib.nullcontext(), accum=1)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    est = estimate_memory(params=params, trainable=trainable, hidden=shape["hidden_size"],
                          layers=shape["num_hidden_layers"], vocab=shape["vocab_size"], rows=rows, length=length,
                          checkpointing=checkpointing)
    del model, opt, batch
    gc.collect()
    torch.cuda.empty_cache()
    # max_memory_allocated leaves out the CUDA context, which the estimate adds: compared without it.
    without_context = est.total - CUDA_CONTEXT_BYTES
    return {"size": size, "rows": rows, "length": length, "checkpointing": checkpointing, "params": params,
            "trainable": trainable, "peak_gib": round(peak / GIB, 2), "estimate_gib": round(without_context / GIB, 2),
            "ratio": round(without_context / peak, 3), "parts": est.parts()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for case in CASES:
        try:
            row = measure(*case)
        except torch.OutOfMemoryError:
            row = {"size": case[0], "rows": case[1], "length": case[2], "checkpointing": case[3], "oom": True}
        # Outside the except: its traceback holds the failed case's tensors until the block ends.
        gc.collect()
        torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                        "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
