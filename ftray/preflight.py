"""Checks before any Ray work, shared by `ftray run` and `ftray validate`: data, models and LoRA
targets, parameter counts, the presets' tokenizer, storage, whether a trial fits the machine, and
whether a GPU trial fits its share of a GPU's memory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ftray import storage as st
from ftray.errors import FtrayInputError, HubUnavailable


@dataclass(frozen=True)
class Prepared:
    model_params: dict  # total parameters per model id (None: a hub id checked for form only)
    tokenizer_json: str | None  # the presets' tokenizer, trained on the task's text
    notes: list = field(default_factory=list)  # what could only be checked for form (no hub here)
    memory: dict = field(default_factory=dict)  # a GPU trial's estimated peak memory per model id (MemoryEstimate)


def prepare(sweep, hub_optional: bool = False) -> Prepared:
    """Driver-side work before Ray: check the data and models, count parameters, build the tokenizer."""
    from ftray.models import build_tokenizer, model_config, param_counts, tokenizer_to_json

    notes: list[str] = []
    try:
        sweep.task.check()
        data_ok = True
    except HubUnavailable as e:
        if not hub_optional:
            raise
        notes.append(f"data not checked: {e}")
        data_ok = False
    tokenizer_json, vocab = None, None
    if data_ok and any(m.is_preset for m in sweep.models):
        # One tokenizer for the whole ladder, trained on the task's text, shipped to every worker.
        tokenizer = build_tokenizer(t for e in sweep.task.examples("train") for t in (e.prompt, e.completion))
        tokenizer_json, vocab = tokenizer_to_json(tokenizer), len(tokenizer)
    model_params: dict[str, int | None] = {}
    memory = {}
    for m in sweep.models:
        try:
            config = model_config(m, vocab if m.is_preset else None)
            # Counting with LoRA also checks that its targets match this model's layers.
            lora = sweep.lora(sweep.trial_config({"model": m.id}))
            model_params[m.id], trainable = param_counts(m, vocab, lora, config)
        except HubUnavailable:
            if not hub_optional:
                raise
            notes.append(f"{m.id}: id checked for form only (no hub here)")
            model_params[m.id] = None
            continue
        if sweep.gpus_for(m.id) and m.id in sweep.models_in_space():
            memory[m.id] = _memory_estimate(sweep, m, config, model_params[m.id], trainable)
    return Prepared(model_params, tokenizer_json, notes, memory)


def _memory_estimate(sweep, rung, config, params: int, trainable: int):
    """A GPU trial's peak memory at the largest micro-batch its settings and the space allow."""
    from ftray.resources import estimate_memory
    from ftray.space import candidate_values

    defaults = sweep.trial_config({"model": rung.id})

    def largest(key: str) -> int:
        return max(candidate_values(key, sweep.space[key])) if key in sweep.space else getattr(defaults, key)

    text = config.get_text_config()
    return estimate_memory(params=params, trainable=trainable, hidden=text.hidden_size, layers=text.num_hidden_layers,
                           vocab=text.vocab_size, rows=largest("batch_size"), length=largest("max_length"),
                           checkpointing=rung.gradient_checkpointing)



def check_storage(storage: str) -> None:
    """Fail at the start, not after hours of training, when results could not be saved."""
    if not st.is_uri(storage) and not os.path.isabs(os.path.expanduser(storage)) \
            and "runtime_resources" in os.getcwd():
        # Inside `ray job submit` the working directory is Ray's unpacked copy of --working-dir.
        print(f"ftray: warning: storage {st.redact(storage)!r} is relative, so results go into the job's copy of its "
              f"working directory ({os.getcwd()}), which Ray may delete; pass --storage with an absolute path "
              "on shared storage or a URI (s3://...)", flush=True)
    st.check_writable(st.normalize(storage), field="storage")


def check_fits_here(sweep, ray_address: str | None) -> None:
    """On a local Ray, a trial that cannot fit this machine fails now; on a cluster, or a Ray this process
    started itself (`ray.init(num_gpus=...)` before `ftray.run`), the check runs once connected, against
    its resources."""
    import ray

    from ftray.resources import local_resources, plan_resources

    if not (ray_address or os.environ.get("RAY_ADDRESS") or ray.is_initialized()):
        try:
            plan_resources(sweep, local_resources())
        except FtrayInputError as e:
            raise FtrayInputError(f"{e} (this machine; name a cluster with --address or RAY_ADDRESS)") from None


def check_run_name(name: str) -> str:
    """A run folder's name, as `--name` gives it: one folder inside the storage, never a path out of it."""
    from ftray.sweep import is_folder_name

    if not is_folder_name(name):
        raise FtrayInputError(f"--name must be letters, digits, '_', '.', '-' (one folder name), got {name!r}")
    return name
