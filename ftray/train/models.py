"""The model ladder built: tiny offline presets and their tokenizer, pretrained models, parameter counts.

A rung of the ladder is a `ModelSpec` (ftray/spec/ladder.py, with the presets' shapes and the check of
a model id): a model id plus what that size needs (workers, GPUs, batch,
gradient checkpointing), so a sweep mixing 0.5B and 7B models gives each its own resources. Where
pretrained weights come from is ftray/train/pretrained.py; depth rungs ("@kL") are ftray/train/depth.py;
LoRA is ftray/train/lora.py.
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch

from ftray.errors import FtrayInputError, HubUnavailable
from ftray.spec.ladder import PRESET_COMMON, PRESETS, LoraSettings, ModelSpec
from ftray.train import pretrained
from ftray.train.lora import apply_lora, count_params

EOS = "<|endoftext|>"
PAD = "<|pad|>"


# ---- tokenizers --------------------------------------------------------------------------------
def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE trained on the task's own text: the presets' tokenizer, built with no hub.

    The same texts in the same order give the same tokenizer, also across processes (the trainer
    breaks ties between equally frequent pairs by their ids, not by hash order).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],  # ids 0 and 1
        show_progress=False,
        # Every byte, seen in the texts or not: any later text (a test split, a user prompt) encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)


def tokenizer_to_json(tokenizer) -> str:
    return tokenizer.backend_tokenizer.to_str()


def tokenizer_from_json(text: str):
    from tokenizers import Tokenizer

    return _wrap(Tokenizer.from_str(text))


def load_tokenizer(spec: ModelSpec, tokenizer_json: str | None):
    """The presets' tokenizer is the one the driver built for the sweep; other models bring theirs (with a
    pad token: eos, else unk, where they have none). Save it beside an adapter with `save_pretrained`."""
    if spec.is_preset:
        if tokenizer_json is None:
            # A bug in the caller, not bad user input: the driver always builds one for presets.
            raise ValueError(f"preset {spec.id!r} needs the tokenizer built for the sweep (tokenizer_json)")
        return tokenizer_from_json(tokenizer_json)
    return pretrained.load_pretrained_tokenizer(spec)


# ---- models ------------------------------------------------------------------------------------
def _preset_config(spec: ModelSpec, vocab_size: int, tokenizer=None):
    from transformers import LlamaConfig

    ids = {}
    if tokenizer is not None:
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    shape = dict(PRESETS[spec.source])
    if spec.layers is not None:  # random weights: a shallower preset is simply one with fewer layers
        shape["num_hidden_layers"] = spec.layers
    return LlamaConfig(vocab_size=vocab_size, **shape, **PRESET_COMMON, **ids)


def base_dtype(device: torch.device) -> torch.dtype:
    """The frozen base weights' dtype on `device`: bf16 on a GPU, fp32 elsewhere. A trial trains in it,
    and its adapter is scored in it again (ftray/driver/scoring.py), so both see the same numbers."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def autocast(device: torch.device):
    """The context the model runs in on `device`: bf16 autocast on a GPU (the LoRA weights stay fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def build_model(spec: ModelSpec, tokenizer, *, seed: int, dtype: torch.dtype = torch.float32):
    """The base model: a preset built from its config (random weights, seeded), or what
    ftray/train/pretrained.py loads: pretrained weights (pruned for a "@kL" rung) or a seeded random control."""
    from transformers import LlamaForCausalLM

    if spec.is_preset:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(_preset_config(spec, len(tokenizer), tokenizer)).to(dtype)
    else:
        model = pretrained.load_model(spec, seed=seed, dtype=dtype)
    if spec.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:  # transformers before the rename
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # The frozen embeddings' output needs a grad, or checkpointed layers pass none back to LoRA.
        model.enable_input_require_grads()
    return model


def _hub_error(spec: ModelSpec, e: Exception) -> FtrayInputError:
    """Tell "this model or revision does not exist / is gated" (the user's to fix) from "no hub here"."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    cause = e
    while cause is not None:
        if isinstance(cause, GatedRepoError):
            return FtrayInputError(f"model {spec.id!r} is gated: accept its terms on the hub and log in (hf auth login)")
        if isinstance(cause, RevisionNotFoundError):
            return FtrayInputError(f"model {spec.id!r} has no revision {spec.revision!r}")
        if isinstance(cause, RepositoryNotFoundError):
            return FtrayInputError(f"model {spec.id!r} is not on the Hugging Face hub (or is private: log in)")
        cause = cause.__cause__
    return HubUnavailable(f"model {spec.id!r}: cannot read its config ({first})")


def model_config(spec: ModelSpec, vocab_size: int | None):
    """The rung's transformers config, pruned for a "@kL" rung, without any weights: a preset's from code
    (with `vocab_size`, default 512), another's read (a config download at most; a GGUF source converts
    here, once: `pretrained.materialize`)."""
    if spec.is_preset:
        return _preset_config(spec, vocab_size or 512)
    try:
        return pretrained.load_config(spec)
    except FtrayInputError:
        raise
    except OSError as e:
        raise _hub_error(spec, e) from None
    except ValueError as e:  # an unknown architecture, or one that needs trust_remote_code
        raise FtrayInputError(f"model {spec.id!r}: {str(e).strip().splitlines()[0][:300]}") from None


def param_counts(spec: ModelSpec, vocab_size: int | None, lora: LoraSettings | None, config=None) -> tuple[int, int]:
    """(total base parameters, trainable parameters), without materialising any weights (`meta_model`).
    With `lora` None the whole model trains: trainable == total."""
    return count_params(meta_model(spec, vocab_size, lora, config))


def meta_model(spec: ModelSpec, vocab_size: int | None, lora: LoraSettings | None, config=None):
    """The rung's model, with LoRA where given, built on the meta device (shapes only; peft wraps meta
    models too) from `config` (default: `model_config(spec, vocab_size)`). A "@kL" rung has the pruned
    shape, exactly what `build_model` gives. With LoRA this also checks, before any Ray work, that the
    targets match this model's layers."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    config = config or model_config(spec, vocab_size)  # outside the meta device: a GGUF source converts with real tensors
    with torch.device("meta"):
        if spec.is_preset:
            model = LlamaForCausalLM(config)
        else:
            try:
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
            except ValueError as e:
                raise FtrayInputError(f"model {spec.id!r}: {str(e).strip().splitlines()[0][:300]}") from None
        return model if lora is None else apply_lora(model, spec, lora)
