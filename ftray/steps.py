"""The optimizer, its learning-rate schedule and one micro-batch's forward and backward, for ftray/recipe.py."""

from __future__ import annotations

import math
from typing import Callable, ContextManager

import torch

from ftray.config import TrialConfig


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to 10% of the peak (not to 0: the last steps still learn)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrialConfig, on_gpu: bool) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; on CUDA the fused kernel (one launch for all the adapters'
    updates, not several per tensor), which the fp32 adapters there allow."""
    extra = {"fused": True} if on_gpu else {}
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def forward_backward(model, batch: dict[str, torch.Tensor], *, autocast: ContextManager, no_sync: ContextManager,
                     accum: int, on_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss) -> torch.Tensor:
    """The loss of one micro-batch (its mean over the completion tokens), with its share of the step's
    gradient (1 / accum) added to the parameters' .grad. `on_loss` may change the loss (fault injection)."""
    with no_sync:  # DDP's gradient all-reduce hooks run in backward: it must be inside
        with autocast:
            # No KV cache: nothing is generated here, building one costs memory, and with one transformers
            # would not read packed rows' restarting position_ids as boundaries (ftray.data.collate_packed).
            loss = on_loss(model(**batch, use_cache=False).loss)
        # Outside autocast, as PyTorch advises: backward ops run in the dtypes their forward ops chose.
        (loss / accum).backward()
    return loss
