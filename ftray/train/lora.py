"""LoRA on any model of the ladder: the check that every target reaches a layer, and counts. Its settings
(`LoraSettings`, the targets) are the spec's: ftray/spec/ladder.py."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import fields

import torch

from ftray.errors import FtrayInputError
from ftray.spec.ladder import ALL_LINEAR, LoraSettings, ModelSpec


def _linear_modules(model) -> list[str]:
    """Full names of the layers "all-linear" can reach: nn.Linear, and GPT-2 style Conv1D."""
    from transformers.pytorch_utils import Conv1D

    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]


def linear_module_names(model) -> list[str]:
    """The distinct last names of the model's linear layers, the head left out (what LoRA targets name)."""
    names = {n.split(".")[-1] for n in _linear_modules(model)}
    names.discard("lm_head")
    return sorted(names)


def _matches(target: str, module_name: str) -> bool:
    # peft's rule for a list of targets: the module's full name, or a suffix of it at a dot.
    return module_name == target or module_name.endswith("." + target)


def _embedding_module_names(model) -> list[str]:
    """The names of the input embeddings and the head, whatever the architecture calls them."""
    wanted = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    return sorted({n.split(".")[-1] for n, m in model.named_modules() if any(m is w for w in wanted)})


def _ties_embeddings(model) -> bool:
    head = model.get_output_embeddings()
    return head is not None and getattr(head, "weight", None) is model.get_input_embeddings().weight


def _lora_config(model, spec: ModelSpec, lora: LoraSettings):
    from peft import LoraConfig

    extra = {}
    if spec.trains_embeddings:
        # The presets start from random weights: frozen random embeddings and head cap what LoRA can
        # learn (the loss barely moves), so they train in full beside the adapters.
        extra["modules_to_save"] = _embedding_module_names(model)
        if _ties_embeddings(model) and "ensure_weight_tying" in {f.name for f in fields(LoraConfig)}:
            # Otherwise peft gives the embeddings and the head separate trainable copies, untying them.
            extra["ensure_weight_tying"] = True
    return LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.targets if isinstance(lora.targets, str) else list(lora.targets),
        task_type="CAUSAL_LM", **extra,
    )


def _no_match(spec: ModelSpec, targets, layer_names: list[str], peft_said: str = "") -> FtrayInputError:
    hint = ""
    if isinstance(targets, str) and targets != ALL_LINEAR:
        hint = " (a string other than 'all-linear' is a regular expression over full module paths; give a list for layer names)"
    said = f" (peft: {peft_said})" if peft_said else ""
    return FtrayInputError(
        f"LoRA targets {targets!r} match no layer of model {spec.id!r}{hint}; "
        f"its linear layers are: {', '.join(layer_names)}{said}"
    )


@contextlib.contextmanager
def peft_quietly():
    """peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps or loads a model: noise
    in every trial's and every scoring task's log, printed after the report."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def apply_lora(model, spec: ModelSpec, lora: LoraSettings):
    """Wrap the model with LoRA adapters (in place), and fail clearly when a target matches no layer.

    peft only errors when *no* target matches anything; a ladder mixing families (q_proj vs c_attn)
    would then silently train far fewer layers on one of its models. So every named target must
    reach a layer of every model: checked before peft (a clear message) and after it (what was built).
    """
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    layer_names = linear_module_names(model)  # before peft adds its own lora_A/lora_B layers
    if not isinstance(lora.targets, str):
        linear = _linear_modules(model)
        missing = [t for t in lora.targets if not any(_matches(t, n) for n in linear)]
        if missing:
            raise _no_match(spec, missing, layer_names)
    try:
        with peft_quietly():
            peft_model = get_peft_model(model, _lora_config(model, spec, lora))
    except ValueError as e:  # peft's "Target modules ... not found in the base model", and the like
        if isinstance(e, FtrayInputError):
            raise
        raise _no_match(spec, lora.targets, layer_names, str(e).strip().splitlines()[0][:200]) from None

    adapted = [n for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
    if isinstance(lora.targets, str):
        if not adapted:
            raise _no_match(spec, lora.targets, layer_names)
    else:  # e.g. a target that is also in modules_to_save, which peft leaves without adapter, silently
        missing = [t for t in lora.targets if not any(_matches(t, n) for n in adapted)]
        if missing:
            raise _no_match(spec, missing, layer_names)
    return peft_model


def _is_adapter(name: str) -> bool:
    """A parameter of the adapter, not of the base: LoRA's matrices and peft's trainable copies of the
    embeddings/head (modules_to_save)."""
    return "lora_" in name or "modules_to_save" in name


def adapters_to_fp32(model) -> None:
    """The adapter's parameters in fp32 over a bf16 base: how a trial trains on a GPU (fp32 master
    weights), and so how its adapter is scored. peft itself upcasts LoRA's matrices when it loads an
    adapter, but not the trained embeddings and head, which carry the residual stream."""
    for name, p in model.named_parameters():
        if _is_adapter(name) and p.dtype != torch.float32:
            p.data = p.data.float()


def count_params(model) -> tuple[int, int]:
    """(base parameters, trainable parameters) of a (peft) model.

    Adapters and peft's trainable copies of embeddings/head (modules_to_save) are not base parameters;
    shared (tied) tensors count once.
    """
    total = sum(p.numel() for n, p in model.named_parameters() if not _is_adapter(n))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
