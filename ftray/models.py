"""The model ladder: Hugging Face ids and tiny offline presets, parameter counts, and LoRA.

A rung of the ladder is a `ModelSpec`: a model id plus what that size needs (workers, GPUs, batch,
gradient checkpointing), so a sweep mixing 0.5B and 7B models gives each its own resources.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable

import torch

from ftray.errors import FtrayInputError, HubUnavailable

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# Randomly initialised Llama configs for offline work (tests, quickstart, benchmarks). With a
# 512-token vocabulary they hold 53K / 148K / 788K / 2.9M parameters (counted by param_counts):
# 15x from xs to m and 54x from xs to l, so there is a frontier to map.
PRESETS: dict[str, dict] = {
    "tiny-xs": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2),
    "tiny-s": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    "tiny-m": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    "tiny-l": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8),
}
_PRESET_COMMON = dict(max_position_embeddings=512, tie_word_embeddings=False, rms_norm_eps=1e-5)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """One rung of the model ladder. Fields left None take the sweep's values."""

    id: str
    workers: int | None = None
    gpus_per_worker: float | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False  # only when you trust the model's repository: it runs its code
    # Train the embeddings and head beside LoRA (peft `modules_to_save`). Default: on for the presets
    # (random embeddings cap what LoRA alone can learn), off for pretrained models.
    train_embeddings: bool | None = None
    lora_targets: str | tuple[str, ...] | None = None  # default "all-linear"
    revision: str | None = None

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id.strip():
            raise FtrayInputError(f"model id must be a non-empty string, got {self.id!r}")
        for name in ("workers", "batch_size", "grad_accum"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise FtrayInputError(f"model {self.id!r}: {name} must be an int >= 1, got {v!r}")
        g = self.gpus_per_worker
        if g is not None and (not isinstance(g, (int, float)) or isinstance(g, bool) or g < 0):
            raise FtrayInputError(f"model {self.id!r}: gpus_per_worker must be >= 0, got {g!r}")
        for name in ("gradient_checkpointing", "trust_remote_code"):
            if not isinstance(getattr(self, name), bool):
                raise FtrayInputError(f"model {self.id!r}: {name} must be True or False, got {getattr(self, name)!r}")
        if self.train_embeddings is not None and not isinstance(self.train_embeddings, bool):
            raise FtrayInputError(f"model {self.id!r}: train_embeddings must be True, False or None")
        t = self.lora_targets
        if isinstance(t, list):
            object.__setattr__(self, "lora_targets", tuple(t))
            t = self.lora_targets
        if t is not None and not (isinstance(t, str) and t) and not (
            isinstance(t, tuple) and t and all(isinstance(x, str) and x for x in t)
        ):
            raise FtrayInputError(f"model {self.id!r}: lora_targets must be 'all-linear' or a list of layer names, got {t!r}")

    @property
    def is_preset(self) -> bool:
        return self.id in PRESETS

    @property
    def name(self) -> str:
        return self.id.rstrip("/").split("/")[-1]

    @property
    def trains_embeddings(self) -> bool:
        return self.is_preset if self.train_embeddings is None else self.train_embeddings


def as_model_spec(x) -> ModelSpec:
    if isinstance(x, ModelSpec):
        return x
    if isinstance(x, str):
        return ModelSpec(id=x)
    raise TypeError(f"not a model: {x!r}")


def preset_names() -> list[str]:
    return list(PRESETS)


def validate_model_id(spec: ModelSpec) -> None:
    """Presets, local folders with a config.json, and ids of the form org/name (checked for form only:
    there may be no hub to ask)."""
    mid = spec.id
    if spec.is_preset:
        return
    if os.path.isdir(mid):
        if not os.path.isfile(os.path.join(mid, "config.json")):
            raise FtrayInputError(f"model {mid!r}: the folder has no config.json")
        return
    if len(mid) <= 96 and ".." not in mid and _HUB_ID.match(mid):
        return
    raise FtrayInputError(
        f"unknown model {mid!r}: not a preset ({', '.join(PRESETS)}), a local folder with config.json, "
        "or a Hugging Face id 'org/name'"
    )


# ---- tokenizers --------------------------------------------------------------------------------
def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE trained on the task's own text: the presets' tokenizer, built with no hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)  # a list: the same order, the same merges
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
    if spec.is_preset:
        if tokenizer_json is None:
            raise ValueError(f"preset {spec.id!r} needs the tokenizer built for the sweep")
        return tokenizer_from_json(tokenizer_json)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec.id, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padded positions are masked out of the loss anyway
    return tok


# ---- models ------------------------------------------------------------------------------------
def _preset_config(spec: ModelSpec, vocab_size: int, tokenizer=None):
    from transformers import LlamaConfig

    ids = {}
    if tokenizer is not None:
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    return LlamaConfig(vocab_size=vocab_size, **PRESETS[spec.id], **_PRESET_COMMON, **ids)


def build_model(spec: ModelSpec, tokenizer, *, seed: int, dtype: torch.dtype = torch.float32):
    """The base model: a preset built from its config (random weights, seeded) or a pretrained one."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if spec.is_preset:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(_preset_config(spec, len(tokenizer), tokenizer)).to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            spec.id, revision=spec.revision, dtype=dtype, trust_remote_code=spec.trust_remote_code
        )
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    dropout: float = 0.05
    targets: str | tuple[str, ...] = "all-linear"


def linear_module_names(model) -> list[str]:
    """The distinct last names of the model's Linear layers (the names LoRA targets match)."""
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    names.discard("lm_head")
    return sorted(names)


def _lora_config(spec: ModelSpec, lora: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.targets if isinstance(lora.targets, str) else list(lora.targets),
        task_type="CAUSAL_LM",
        modules_to_save=["embed_tokens", "lm_head"] if spec.trains_embeddings else None,
    )


def apply_lora(model, spec: ModelSpec, lora: LoraSettings):
    """Wrap the model with LoRA adapters, and fail loudly when the targets match no layer.

    peft only errors when *no* target matches; a ladder mixing families (q_proj vs c_attn) can
    silently train far fewer layers on one model. Every named target must match in every model.
    """
    from peft import get_peft_model

    available = linear_module_names(model)
    if not isinstance(lora.targets, str):
        missing = [t for t in lora.targets if t not in available]
        if missing:
            raise FtrayInputError(
                f"LoRA targets {missing} match no layer of model {spec.id!r}; its linear layers are: {', '.join(available)}"
            )
    try:
        peft_model = get_peft_model(model, _lora_config(spec, lora))
    except ValueError as e:
        raise FtrayInputError(
            f"LoRA targets {lora.targets!r} match no layer of model {spec.id!r} ({e}); "
            f"its linear layers are: {', '.join(available)}"
        ) from None
    if not any("lora_" in n for n, _ in peft_model.named_parameters()):
        raise FtrayInputError(f"LoRA targets {lora.targets!r} created no adapter in model {spec.id!r}")
    return peft_model


def count_params(model) -> tuple[int, int]:
    """(base parameters, trainable parameters) of a (peft) model; adapter copies are not base."""
    total = sum(p.numel() for n, p in model.named_parameters()
                if "lora_" not in n and "modules_to_save" not in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def param_counts(spec: ModelSpec, vocab_size: int | None, lora: LoraSettings | None) -> tuple[int, int]:
    """(total, trainable) parameters without materialising any weights (built on the meta device).

    Also checks, before any Ray work, that the LoRA targets match this model's layers.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    with torch.device("meta"):
        if spec.is_preset:
            model = LlamaForCausalLM(_preset_config(spec, vocab_size or 512))
        else:
            try:
                config = AutoConfig.from_pretrained(spec.id, revision=spec.revision,
                                                    trust_remote_code=spec.trust_remote_code)
            except OSError as e:
                raise HubUnavailable(f"model {spec.id!r}: cannot read its config ({str(e).splitlines()[0][:200]})") from None
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
        if lora is None:
            total = sum(p.numel() for p in model.parameters())
            return total, total
        return count_params(apply_lora(model, spec, lora))
