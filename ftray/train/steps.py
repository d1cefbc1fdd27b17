"""The optimizer, its learning-rate schedule and one micro-batch's forward and backward, for ftray/train/recipe.py; and
the training speed levers that work on the model: the loss without the full logits, compiled layers."""

from __future__ import annotations

import math
from typing import Callable, ContextManager

import torch

from ftray.spec.config import TrialConfig
from ftray.errors import FtrayInputError


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
            # would not read packed rows' restarting position_ids as boundaries (ftray.train.data.collate_packed).
            loss = on_loss(model(**batch, use_cache=False).loss)
        # Outside autocast, as PyTorch advises: backward ops run in the dtypes their forward ops chose.
        (loss / accum).backward()
    return loss


# ---- the loss without the full logits ------------------------------------------------------------------
# Logits per chunk of the fused loss: a chunk's fp32 logits and softmax take 4 bytes each, so this keeps
# them near 256 MiB whatever the vocabulary (about 440 positions of a 152k vocabulary, 2^17 of a tiny one).
LOGITS_PER_CHUNK = 2**26


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden[i] @ weight.T + bias, target[i]), computed chunk by chunk of rows.

    The gradients are computed in the forward pass too, chunk by chunk, and kept (they are the size of
    `hidden` and of `weight`): so no chunk's logits outlive it and the backward pass only scales them.
    Logits and softmax are fp32, as transformers' own loss upcasts them.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, chunk: int):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if hidden.requires_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and bias.requires_grad else None
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start : start + chunk], target[start : start + chunk]
            logits = torch.nn.functional.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            # d(loss)/d(logits) = softmax - one_hot(target), made in place of the logits.
            g = logits.sub_(lse[:, None]).exp_()
            g[torch.arange(len(t), device=t.device), t] -= 1
            if grad_hidden is not None:
                grad_hidden[start : start + chunk] = g.to(h.dtype) @ weight.to(h.dtype)
            if grad_weight is not None:
                grad_weight += g.t() @ h.float()
            if grad_bias is not None:
                grad_bias += g.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = lambda g, dtype=None: None if g is None else (g * grad_total).to(dtype or g.dtype)  # noqa: E731
        return scale(grad_hidden), scale(grad_weight, ctx.dtypes[0]), scale(grad_bias, ctx.dtypes[1]), None, None


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                 target: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy of `hidden @ weight.T + bias` against `target` (rows x hidden, rows), without
    materialising all rows' logits at once, in the forward or the backward pass."""
    chunk = max(1, LOGITS_PER_CHUNK // weight.shape[0])
    return ChunkedLinearCrossEntropy.apply(hidden, weight, bias, target, chunk) / target.numel()


def liger_missing() -> str | None:
    """Why Liger Kernel's fused loss cannot be used here, or None when it can."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # noqa: F401
    except ImportError:
        return "liger_kernel is not installed: pip install 'ftray[gpu]'"
    except Exception as e:  # installed, but not with the Triton or torch it needs
        return f"liger_kernel failed to import: {type(e).__name__}: {str(e)[:200]}"
    return None


def _liger_loss():
    """Liger Kernel's fused linear cross-entropy (mean over the rows), or None where it cannot be used."""
    if liger_missing() is not None:
        return None
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss()

    def loss(hidden, weight, bias, target):
        # Its kernels take the input's dtype: under autocast, fp32 adapters' head weights are cast as a
        # Linear layer would.
        out = fused(weight.to(hidden.dtype), hidden, target, None if bias is None else bias.to(hidden.dtype))
        return out[0] if isinstance(out, tuple) else out

    return loss


def _base(model):
    """The transformers model inside a peft one (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def changes_its_logits(config) -> bool:
    """Whether a model of this config does more to its logits than its head computes (softcapping, a
    scale), so that the fused loss, which computes them itself, cannot stand in for its own."""
    return (getattr(config, "final_logit_softcapping", None) is not None
            or getattr(config, "logit_scale", None) is not None)


def plain_head(model) -> torch.nn.Linear | None:
    """The output layer a (peft) causal LM computes its logits with, when it is a plain Linear layer
    (frozen, or trained as a whole through peft's modules_to_save); None when it is anything else (a
    LoRA-adapted head) or when the model does more to its logits than the head (softcapping, scaling)."""
    from peft.utils.other import ModulesToSaveWrapper

    base = _base(model)
    if changes_its_logits(getattr(base, "config", None)):
        return None
    head = base.get_output_embeddings()
    if isinstance(head, ModulesToSaveWrapper):
        active = head.active_adapters
        head = head.original_module if head.disable_adapters or not active else head.modules_to_save[active[0]]
    return head if isinstance(head, torch.nn.Linear) else None


class FusedLossLM(torch.nn.Module):
    """A (peft) causal LM whose training loss is computed from its decoder's hidden states at the
    completion positions only, without the full [tokens x vocabulary] logits: the head and the
    cross-entropy together, chunk by chunk (`chunked_linear_cross_entropy`) or in Liger Kernel's fused
    kernel. The same loss as the model's own (mean over the tokens with labels) to float rounding.

    It is a module that holds the model, so DDP can wrap it (DDP's gradient hooks need its forward).
    Use `FusedLossLM.wrap`: it leaves models whose head it cannot take as they are.
    """

    def __init__(self, model, head: torch.nn.Linear, loss):
        super().__init__()
        self.model, self._loss = model, loss
        self._head = [head]  # not a submodule: it is the model's own, registered there
        base = _base(model)
        self._decoder = [base.get_decoder()]

    @classmethod
    def wrap(cls, model, mode: str, on_gpu: bool) -> tuple[torch.nn.Module, str]:
        """(the module to train through, the loss it computes: "model", "chunked" or "liger")."""
        if mode == "off":
            return model, "model"
        head = plain_head(model)
        if head is None:
            return model, "model"
        liger = _liger_loss() if mode == "auto" and on_gpu else None
        return cls(model, head, liger or chunked_linear_cross_entropy), "liger" if liger else "chunked"

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None, use_cache=False):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        hidden = self._decoder[0](input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state
        # Position t predicts token t + 1; only positions with a label need logits at all.
        targets = labels[:, 1:]
        keep = targets != -100
        head = self._head[0]
        loss = self._loss(hidden[:, :-1][keep], head.weight, head.bias, targets[keep])
        return CausalLMOutputWithPast(loss=loss)


def loss_note(kind: str, fused_loss: str, on_gpu: bool) -> str:
    """What a trial trains with (FusedLossLM.wrap's kind), where fused_loss asked for more than the model's
    own loss: a line for its log."""
    if kind == "liger":
        return "Liger Kernel's fused linear cross-entropy"
    if kind == "chunked":
        why = liger_missing() if fused_loss == "auto" and on_gpu else None
        return "ftray's chunked loss" + (f" ({why})" if why else "")
    return ("this model's head is not a plain linear layer (a LoRA-adapted head, or logits softcapped or "
            "scaled): the model's own loss is used")


COMPILE_BACKEND = "inductor"  # torch.compile's own default; the tests trace with "eager" (inductor takes a minute on a CPU)


def compile_layers(model) -> int:
    """torch.compile each decoder layer of a (peft) causal LM in place, for training; returns how many.

    Layer by layer, not the whole model: the layers are alike, so their compiled code is shared and
    compiling is quick; the mask building, the data-dependent loss and peft's wrappers stay eager. Run
    evaluation and generation under `torch.compiler.set_stance("force_eager")`: their shapes (a KV
    cache growing token by token) would compile again and again.
    """
    if not hasattr(torch.compiler, "set_stance"):
        raise FtrayInputError(f"compile=True needs torch >= 2.6 (to run evaluation eagerly), this is {torch.__version__}")
    # A trial process Tune reuses keeps the code compiled for the last trial: a new LoRA rank recompiles,
    # and past torch's recompile limit a layer would run eagerly without a word. Each trial starts afresh.
    torch.compiler.reset()
    base = _base(model)
    layers = getattr(base.get_decoder(), "layers", None) or []
    for layer in layers:
        layer.compile(backend=COMPILE_BACKEND)
    return len(layers)
