"""The model ladder: tiny offline presets, pretrained models, depth rungs, parameter counts, tokenizers.

A rung of the ladder is a `ModelSpec`: a model id plus what that size needs (workers, GPUs, batch,
gradient checkpointing), so a sweep mixing 0.5B and 7B models gives each its own resources. Where
pretrained weights come from is ftray/train/pretrained.py; depth rungs ("@kL") are ftray/train/depth.py; LoRA
is ftray/train/lora.py (its names are importable from here too).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Iterable

import torch

from ftray.train import pretrained
from ftray.errors import FtrayInputError, HubUnavailable
from ftray.spec.checks import check_gpus_per_worker, is_int
from ftray.train.lora import (ALL_LINEAR, LoraSettings, _targets, apply_lora, count_params,  # noqa: F401
                        linear_module_names)

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# Randomly initialised Llama configs for offline work (tests, quickstart, benchmarks). With a
# 512-token vocabulary they hold 53,408 / 147,776 / 787,584 / 2,885,888 parameters (tiny-xs / s / m / l,
# measured with param_counts and with the built models): 2.8x, 15x and 54x the smallest, so a sweep
# over them has a size axis to map. Half of tiny-xs is its (untied) embeddings and head.
PRESETS: dict[str, dict] = {
    "tiny-xs": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2),
    "tiny-s": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    "tiny-m": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    "tiny-l": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8),
}
_PRESET_COMMON = dict(max_position_embeddings=512, tie_word_embeddings=False, rms_norm_eps=1e-5)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_ID_MAX = 96
_DEPTH = re.compile(r"^(?P<source>.+)@(?P<layers>[0-9]+)L$")


def preset_names() -> list[str]:
    return list(PRESETS)


@dataclass(frozen=True)
class ModelSpec:
    """One rung of the model ladder. Fields left None take the sweep's values.

    `id` names the source: a tiny preset, a named pretrained preset ("smollm2-135m", or its random-init
    control "smollm2-135m-random"), a .gguf file, a local Hugging Face folder or a hub id; with
    "@<k>L" (or `layers=k`) it is a depth rung that keeps k of the source's decoder layers
    (ftray/train/depth.py says which). The depth is part of the id, so the report, the search space and
    every per-model setting tell the rungs of one source apart: ModelSpec("smollm2-135m", layers=12)
    is ModelSpec("smollm2-135m@12L").
    """

    id: str
    workers: int | None = None
    gpus_per_worker: float | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False  # only when you trust the model's repository: it runs its code
    # Train the embeddings and head beside LoRA (peft `modules_to_save`). Default: on for randomly
    # initialised models (random embeddings cap what LoRA alone can learn), off for pretrained ones.
    train_embeddings: bool | None = None
    lora_targets: str | tuple[str, ...] | None = None  # None: "all-linear"
    revision: str | None = None  # a branch, tag or commit of a hub model
    layers: int | None = None  # keep this many decoder layers of the source (None: all)

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id.strip():
            raise FtrayInputError(f"model id must be a non-empty string, got {self.id!r}")
        where = f"model {self.id!r}"
        for name in ("workers", "batch_size", "grad_accum", "layers"):
            v = getattr(self, name)
            if v is not None and not is_int(v, 1):
                raise FtrayInputError(f"{where}: {name} must be an int >= 1, got {v!r}")
        if self.gpus_per_worker is not None:
            check_gpus_per_worker(self.gpus_per_worker, f"{where}: gpus_per_worker")
        for name in ("gradient_checkpointing", "trust_remote_code"):
            if not isinstance(getattr(self, name), bool):
                raise FtrayInputError(f"{where}: {name} must be True or False, got {getattr(self, name)!r}")
        if self.train_embeddings is not None and not isinstance(self.train_embeddings, bool):
            raise FtrayInputError(f"{where}: train_embeddings must be True, False or None, got {self.train_embeddings!r}")
        if self.lora_targets is not None:
            object.__setattr__(self, "lora_targets", _targets(self.lora_targets, where))
        if self.revision is not None and not (isinstance(self.revision, str) and self.revision.strip()):
            raise FtrayInputError(f"{where}: revision must be a branch, tag or commit (a non-empty string), got {self.revision!r}")
        self._normalise_depth(where)

    def _normalise_depth(self, where: str) -> None:
        m = _DEPTH.match(self.id)
        source, in_id = (m["source"], int(m["layers"])) if m else (self.id, None)
        if in_id is not None and in_id < 1:
            raise FtrayInputError(f"{where}: layers must be an int >= 1, got '@{m['layers']}L'")
        if in_id is not None and self.layers is not None and in_id != self.layers:
            raise FtrayInputError(f"{where}: layers={self.layers} disagrees with the id's '@{in_id}L'")
        layers = int(self.layers) if self.layers is not None else in_id
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "id", source if layers is None else f"{source}@{layers}L")

    @property
    def source(self) -> str:
        """The id without its depth: the model the rung is derived from."""
        m = _DEPTH.match(self.id)
        return m["source"] if m else self.id

    @property
    def is_preset(self) -> bool:
        """A tiny preset: built from code, with the tokenizer the driver trains for the sweep."""
        return self.source in PRESETS

    @property
    def random_init(self) -> bool:
        return self.is_preset or pretrained.is_random_init(self.source)

    @property
    def name(self) -> str:
        """A short display name: the last part of the id or path (with its depth)."""
        return self.id.rstrip("/").split("/")[-1] or self.id

    @property
    def trains_embeddings(self) -> bool:
        return self.random_init if self.train_embeddings is None else self.train_embeddings


def as_model_spec(x) -> ModelSpec:
    if isinstance(x, ModelSpec):
        return x
    if isinstance(x, str):
        return ModelSpec(id=x)
    raise TypeError(f"not a model id or ModelSpec: {x!r}")


def validate_model_id(spec: ModelSpec) -> None:
    """Presets, named pretrained presets, .gguf files, local folders with a config.json, and ids of the
    form org/name; each with or without "@<k>L".

    Hub ids are checked for form only: the driver may have no hub to ask (param_counts asks later,
    and checks a depth against the model's own). Named presets must be installed.
    """
    source = spec.source
    total = PRESETS[source]["num_hidden_layers"] if spec.is_preset else pretrained.known_depth(source)
    if total is not None and spec.layers is not None and spec.layers > total:
        raise FtrayInputError(f"model {spec.id!r}: layers={spec.layers} but {source!r} has {total} decoder layers")
    if spec.is_preset:
        return
    if source in pretrained.NAMED:
        pretrained.bundled_file(source)
        return
    if source.endswith(".gguf"):
        if not os.path.isfile(os.path.expanduser(source)):
            raise FtrayInputError(f"model {spec.id!r}: no GGUF file at {source}")
        return
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise FtrayInputError(f"model {source!r}: the folder has no config.json, so it is not a saved model")
        return
    if len(source) <= _HUB_ID_MAX and ".." not in source and _HUB_ID.match(source):
        return
    raise FtrayInputError(
        f"unknown model {spec.id!r}: not a preset ({', '.join([*PRESETS, *pretrained.NAMED])}), a .gguf file, "
        "a local folder with config.json, or a Hugging Face id 'org/name' (any of them with '@<k>L' to keep k layers)"
    )


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
    return LlamaConfig(vocab_size=vocab_size, **shape, **_PRESET_COMMON, **ids)


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
    """(total base parameters, trainable parameters), without materialising any weights.

    The model is built on the meta device (shapes only; peft wraps meta models too) from `config`
    (default: `model_config(spec, vocab_size)`). A "@kL" rung counts the pruned shape, exactly what
    `build_model` gives. With `lora` None the whole model trains: trainable == total. With LoRA this
    also checks, before any Ray work, that the targets match this model's layers.
    """
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
        if lora is None:
            total = sum(p.numel() for p in model.parameters())
            return total, total
        return count_params(apply_lora(model, spec, lora))
