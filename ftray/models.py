"""The model ladder: Hugging Face ids and tiny offline presets, parameter counts, and LoRA.

A rung of the ladder is a `ModelSpec`: a model id plus what that size needs (workers, GPUs, batch,
gradient checkpointing), so a sweep mixing 0.5B and 7B models gives each its own resources.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import warnings
from dataclasses import dataclass, fields
from typing import Iterable

import torch

from ftray.errors import FtrayInputError, HubUnavailable

EOS = "<|endoftext|>"
PAD = "<|pad|>"
ALL_LINEAR = "all-linear"

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


def preset_names() -> list[str]:
    return list(PRESETS)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _targets(value, where: str):
    """LoRA targets as peft takes them: "all-linear", another string (a regex peft fullmatches
    against module paths), or a tuple of layer names (lists become tuples, so specs stay hashable)."""
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, str) and value:
        return value
    if isinstance(value, tuple) and value and all(isinstance(x, str) and x for x in value):
        return value
    raise FtrayInputError(
        f"{where}: lora_targets must be 'all-linear' or a list of layer names such as ['q_proj', 'v_proj'], got {value!r}"
    )


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
    lora_targets: str | tuple[str, ...] | None = None  # None: "all-linear"
    revision: str | None = None  # a branch, tag or commit of a hub model

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id.strip():
            raise FtrayInputError(f"model id must be a non-empty string, got {self.id!r}")
        where = f"model {self.id!r}"
        for name in ("workers", "batch_size", "grad_accum"):
            v = getattr(self, name)
            if v is not None and not (_is_int(v) and v >= 1):
                raise FtrayInputError(f"{where}: {name} must be an int >= 1, got {v!r}")
        g = self.gpus_per_worker
        if g is not None and not (_is_number(g) and g >= 0):
            raise FtrayInputError(f"{where}: gpus_per_worker must be a number >= 0, got {g!r}")
        for name in ("gradient_checkpointing", "trust_remote_code"):
            if not isinstance(getattr(self, name), bool):
                raise FtrayInputError(f"{where}: {name} must be True or False, got {getattr(self, name)!r}")
        if self.train_embeddings is not None and not isinstance(self.train_embeddings, bool):
            raise FtrayInputError(f"{where}: train_embeddings must be True, False or None, got {self.train_embeddings!r}")
        if self.lora_targets is not None:
            object.__setattr__(self, "lora_targets", _targets(self.lora_targets, where))
        if self.revision is not None and not (isinstance(self.revision, str) and self.revision.strip()):
            raise FtrayInputError(f"{where}: revision must be a branch, tag or commit (a non-empty string), got {self.revision!r}")

    @property
    def is_preset(self) -> bool:
        return self.id in PRESETS

    @property
    def name(self) -> str:
        """A short display name: the last part of the id or path."""
        return self.id.rstrip("/").split("/")[-1] or self.id

    @property
    def trains_embeddings(self) -> bool:
        return self.is_preset if self.train_embeddings is None else self.train_embeddings


def as_model_spec(x) -> ModelSpec:
    if isinstance(x, ModelSpec):
        return x
    if isinstance(x, str):
        return ModelSpec(id=x)
    raise TypeError(f"not a model id or ModelSpec: {x!r}")


def validate_model_id(spec: ModelSpec) -> None:
    """Presets, local folders with a config.json, and ids of the form org/name.

    Hub ids are checked for form only: the driver may have no hub to ask (param_counts asks later).
    """
    mid = spec.id
    if spec.is_preset:
        return
    if os.path.isdir(mid):
        if not os.path.isfile(os.path.join(mid, "config.json")):
            raise FtrayInputError(f"model {mid!r}: the folder has no config.json, so it is not a saved model")
        return
    if len(mid) <= _HUB_ID_MAX and ".." not in mid and _HUB_ID.match(mid):
        return
    raise FtrayInputError(
        f"unknown model {mid!r}: not a preset ({', '.join(PRESETS)}), a local folder with config.json, "
        "or a Hugging Face id 'org/name'"
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
    """The presets' tokenizer is the one the driver built for the sweep; other models bring theirs."""
    if spec.is_preset:
        if tokenizer_json is None:
            # A bug in the caller, not bad user input: the driver always builds one for presets.
            raise ValueError(f"preset {spec.id!r} needs the tokenizer built for the sweep (tokenizer_json)")
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
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:  # transformers before the rename
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # The frozen embeddings' output needs a grad, or checkpointed layers pass none back to LoRA.
        model.enable_input_require_grads()
    return model


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    dropout: float = 0.05
    targets: str | tuple[str, ...] = ALL_LINEAR

    def __post_init__(self):
        if not (_is_int(self.rank) and self.rank >= 1):
            raise FtrayInputError(f"lora_rank must be an int >= 1, got {self.rank!r}")
        if not (_is_number(self.alpha) and self.alpha > 0):
            raise FtrayInputError(f"lora_alpha must be a number > 0, got {self.alpha!r}")
        if not (_is_number(self.dropout) and 0 <= self.dropout < 1):
            raise FtrayInputError(f"lora_dropout must be a number in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "rank", int(self.rank))  # Tune may sample numpy ints
        object.__setattr__(self, "targets", _targets(self.targets, "LoRA settings"))


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
        with warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing`: noise in every trial's log.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
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


def count_params(model) -> tuple[int, int]:
    """(base parameters, trainable parameters) of a (peft) model.

    Adapters and peft's trainable copies of embeddings/head (modules_to_save) are not base parameters;
    shared (tied) tensors count once.
    """
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and "modules_to_save" not in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


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


def param_counts(spec: ModelSpec, vocab_size: int | None, lora: LoraSettings | None) -> tuple[int, int]:
    """(total base parameters, trainable parameters), without materialising any weights.

    The model is built on the meta device (shapes only; peft wraps meta models too), so this costs
    a config download at most. With `lora` None the whole model trains: trainable == total.
    Presets count with `vocab_size` (default 512). With LoRA this also checks, before any Ray work,
    that the targets match this model's layers.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    with torch.device("meta"):
        if spec.is_preset:
            model = LlamaForCausalLM(_preset_config(spec, vocab_size or 512))
        else:
            try:
                config = AutoConfig.from_pretrained(spec.id, revision=spec.revision,
                                                    trust_remote_code=spec.trust_remote_code)
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
            except OSError as e:
                raise _hub_error(spec, e) from None
            except ValueError as e:  # an unknown architecture, or one that needs trust_remote_code
                raise FtrayInputError(f"model {spec.id!r}: {str(e).strip().splitlines()[0][:300]}") from None
        if lora is None:
            total = sum(p.numel() for p in model.parameters())
            return total, total
        return count_params(apply_lora(model, spec, lora))
