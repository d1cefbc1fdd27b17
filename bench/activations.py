"""How many bytes does autograd keep for backward, per token, per hidden unit, per decoder layer of a LoRA
finetune? The figure behind ftray.driver.resources.ACTIVATION_BYTES, and what torch.compile and LoRA dropout
change in it: one Qwen2.5-shaped decoder (bf16 base, LoRA r16 on every linear layer, fp32 adapters, bf16
autocast, as a GPU trial runs), eager against ftray's compiled layers (ftray.train.steps.compile_layers),
LoRA dropout 0.05 (ftray's default) against 0, side by side in one run.

    python bench/activations.py [--size 1.5b] [--tokens 128] [--out FILE]     # CPU or GPU

Method: every tensor autograd saves during the decoder's forward is seen through
torch.autograd.graph.saved_tensors_hooks and counted once per storage, the model's parameters left out (the
frozen weights are kept anyway). A model of 2 layers less the same of 1 layer is one layer's bytes, divided
by tokens x hidden size. The second forward and backward is the one counted (the first compiles). Attention
keeps different things on a CPU (its SDPA kernels) than on a GPU, so a CPU's figure is a check of the
ratios, not of ACTIVATION_BYTES, which was fitted to peaks measured on an H200 (bench/gpu_memory.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gpu import SHAPES  # noqa: E402
from ftray.driver.resources import ACTIVATION_BYTES  # noqa: E402
from ftray.spec.ladder import LoraSettings, ModelSpec  # noqa: E402
from ftray.train import steps  # noqa: E402
from ftray.train.lora import apply_lora  # noqa: E402


def kept_bytes(shape: dict, layers: int, dropout: float, compiled: bool, tokens: int, device: torch.device) -> int:
    """Bytes autograd keeps for one forward of the decoder over `tokens` tokens (parameters left out)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**dict(shape, num_hidden_layers=layers, vocab_size=256), tie_word_embeddings=True)
    torch.manual_seed(0)
    with device:
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model = apply_lora(model, ModelSpec("bench"), LoraSettings(16, 32, dropout=dropout))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if compiled:
        steps.compile_layers(model)
    model.train()
    decoder = steps._base(model).get_decoder()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids = torch.randint(0, 256, (1, tokens), device=device)
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    for _ in range(2):  # the first forward compiles
        kept.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
        hidden.float().sum().backward()
    return sum(kept.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1.5b", choices=[s for s in SHAPES if s != "tiny"])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None, help="a JSON file for the results")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = SHAPES[args.size]
    rows = []
    for dropout in (0.05, 0.0):
        for compiled in (False, True):
            t = time.time()
            one_layer = (kept_bytes(shape, 2, dropout, compiled, args.tokens, device)
                         - kept_bytes(shape, 1, dropout, compiled, args.tokens, device))
            row = {"lora_dropout": dropout, "compiled": compiled,
                   "bytes_per_token_hidden_layer": round(one_layer / (args.tokens * shape["hidden_size"]), 1),
                   "seconds": round(time.time() - t, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]["bytes_per_token_hidden_layer"]
    for row in rows:
        row["vs_eager_dropout"] = round(row["bytes_per_token_hidden_layer"] / base, 3)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})",
              "torch": torch.__version__, "size": args.size, "tokens": args.tokens, "lora_rank": 16,
              "activation_bytes_in_ftray": ACTIVATION_BYTES, "rows": rows}
    print("bytes kept for backward per token, hidden unit and decoder layer (bf16 autocast, LoRA r16 all-linear):")
    for row in rows:
        print(f"  dropout {row['lora_dropout']:<5} {'compiled' if row['compiled'] else 'eager':9} "
              f"{row['bytes_per_token_hidden_layer']:7.1f}  ({row['vs_eager_dropout']:.2f}x eager with dropout)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
