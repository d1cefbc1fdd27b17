"""Checks before any Ray work, shared by `ftray run` and `ftray validate`: data, models and LoRA
targets, parameter counts, the presets' tokenizer, what `max_length` cuts off the rows, grid cells that
`num_trials` leaves out, storage, whether a trial fits the machine, and whether a GPU trial fits its
share of a GPU's memory."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from ftray import storage as st
from ftray.errors import FtrayInputError, HubUnavailable


@dataclass(frozen=True)
class Prepared:
    model_params: dict  # total parameters per model id (None: a hub id checked for form only)
    tokenizer_json: str | None  # the presets' tokenizer, trained on the task's text
    notes: list = field(default_factory=list)  # what could only be checked for form (no hub here)
    warnings: list = field(default_factory=list)  # inputs that run but may mean little (printed to stderr)
    memory: dict = field(default_factory=dict)  # a GPU trial's estimated peak memory per model id (MemoryEstimate)


def prepare(sweep, hub_optional: bool = False) -> Prepared:
    """Driver-side work before Ray: check the data and models, count parameters, build the tokenizer;
    warn (stderr) about settings that run but may mean little."""
    from ftray.train.lora import count_params
    from ftray.train.models import build_tokenizer, meta_model, model_config, tokenizer_to_json
    from ftray.train.steps import plain_head

    notes: list[str] = []
    try:
        sweep.task.check()
        data_ok = True
    except HubUnavailable as e:
        if not hub_optional:
            raise
        notes.append(f"data not checked: {e}")
        data_ok = False
    tokenizer, tokenizer_json, vocab = None, None, None
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
            shape = meta_model(m, vocab, lora, config)
            model_params[m.id], trainable = count_params(shape)
        except HubUnavailable:
            if not hub_optional:
                raise
            notes.append(f"{m.id}: id checked for form only (no hub here)")
            model_params[m.id] = None
            continue
        if sweep.gpus_for(m.id) and m.id in sweep.models_in_space():
            # A head that is more than a plain layer (LoRA on it, softcapped logits) keeps the full logits.
            memory[m.id] = _memory_estimate(sweep, m, config, model_params[m.id], trainable,
                                            plain_head=plain_head(shape) is not None)
    warnings = [w for w in [cells_left_out(sweep)] if w]
    if data_ok:
        warnings += check_lengths(sweep, _rung_tokenizers(sweep, tokenizer, model_params, hub_optional, notes))
    for w in warnings:
        print(f"ftray: warning: {w}", file=sys.stderr, flush=True)
    return Prepared(model_params, tokenizer_json, notes, warnings, memory)


def _memory_estimate(sweep, rung, config, params: int, trainable: int, plain_head: bool):
    """A GPU trial's peak memory at the largest micro-batch its settings and the space allow; `plain_head`:
    whether the fused loss can stand in for the model's own (FusedLossLM.wrap)."""
    from ftray.driver.resources import estimate_memory
    from ftray.spec.space import candidate_values

    defaults = sweep.trial_config({"model": rung.id})

    def largest(key: str) -> int:
        return max(candidate_values(key, sweep.space[key])) if key in sweep.space else getattr(defaults, key)

    text = config.get_text_config()
    # The widest rows the trial can have (packed rows, widths rounded up), and as many as a token budget
    # or batch_size allows: the biggest micro-batch.
    length = defaults.replace(max_length=largest("max_length")).row_width
    rows = -(-defaults.batch_tokens // length) if defaults.batch_tokens else largest("batch_size")
    return estimate_memory(params=params, trainable=trainable, hidden=text.hidden_size, layers=text.num_hidden_layers,
                           vocab=text.vocab_size, rows=rows, length=length, checkpointing=rung.gradient_checkpointing,
                           fused_loss=defaults.fused_loss != "off" and plain_head)


def cells_left_out(sweep) -> str | None:
    """The grid cells (rungs of a round-robin ladder x `tune.grid_search` values) that no trial reaches,
    as one line, or None when num_trials reaches every cell."""
    cells, n = sweep.grid_cells(), sweep.search.num_trials
    if n >= len(cells):
        return None
    left = cells[n:]  # trial i takes cell i
    shown = "; ".join(", ".join(f"{k}={v}" for k, v in c.items()) for c in left[:8])
    more = f"; ... ({len(left)} in all)" if len(left) > 8 else ""
    # The model varies slowest, so whole rungs can be left out: the frontier would have no point for them.
    run = {c.get("model") for c in cells[:n]}
    unrun = list(dict.fromkeys(c["model"] for c in left if "model" in c and c["model"] not in run))
    rungs = f" (no trial at all for {', '.join(unrun)})" if unrun else ""
    return (f"num_trials={n} runs {n} of the {len(cells)} grid cells ({' x '.join(cells[0])}); left out{rungs}: "
            f"{shown}{more}; num_trials={len(cells)} (or a multiple) runs every cell")


def check_lengths(sweep, tokenizers: list[tuple[list[str], object]]) -> list[str]:
    """What `max_length` cuts off the training and the evaluation rows, for each tokenizer (with the rungs
    that use it), prompt format and max_length a trial can have.

    An error where it cuts into the completion of every row of a split: then no row trains (or is
    scored) on a whole answer, nor on the end token that teaches the model to stop, and the sweep's
    numbers mean nothing. (Truncation always keeps some completion tokens, ftray/train/data.py's `truncate`,
    so "cut into" is the line to draw, not "cut away".) A warning with the counts and the longest row
    where it cuts some rows.
    """
    from ftray.train.data import encode_examples
    from ftray.spec.space import candidate_values

    def values(key):
        return candidate_values(key, sweep.space[key]) if key in sweep.space else [getattr(sweep.trial, key)]

    field_name = "space['max_length']" if "max_length" in sweep.space else "max_length"
    # The whole training split: the subset a trial trains on (data_fraction, data_filter) is among its rows.
    splits = {"training": sweep.task.examples("train"),
              "evaluation": sweep.task.examples("valid")[: sweep.trial.eval_samples]}
    warnings = []
    for models, tokenizer in tokenizers:
        for fmt in values("prompt_format"):
            whose = "".join([f" with the tokenizer of {', '.join(models)}" if len(tokenizers) > 1 else "",
                             f" in prompt_format {fmt!r}" if "prompt_format" in sweep.space else ""])
            try:
                encoded = {split: encode_examples(rows, tokenizer, fmt) for split, rows in splits.items()}
            except FtrayInputError as e:  # prompt_format "chat" for a tokenizer without a template
                raise FtrayInputError(f"model {models[0]!r}: {e}") from None
            longest = {split: max((len(p) + len(a) for p, _, a in rows), default=0) for split, rows in encoded.items()}
            for max_length in values("max_length"):
                counts = []
                for split, rows in encoded.items():
                    cut, into = _cuts(rows, max_length)
                    if rows and into == len(rows):
                        raise FtrayInputError(
                            f"{field_name}={max_length} cuts into the completion of all {len(rows)} {split} rows{whose} "
                            f"(the longest row is {longest[split]} tokens): no row "
                            f"{'trains' if split == 'training' else 'is scored'} on a whole answer and its end; "
                            f"set max_length to at least {longest[split]}")
                    where = f" ({into} into the completion)" if into else " (in the prompt only)" if cut else ""
                    counts.append((cut, f"{cut} of {len(rows)} {split} rows{where}"))
                if any(cut for cut, _ in counts):
                    warnings.append(f"{field_name}={max_length} cuts {' and '.join(text for _, text in counts)}{whose}; "
                                    f"the longest row is {max(longest.values())} tokens")
    return warnings


def _cuts(rows, max_length: int) -> tuple[int, int]:
    """How many of the encoded rows (encode_examples) `max_length` cuts, and how many into the completion."""
    from ftray.train.data import truncate

    cut = into = 0
    for prompt, head, answer in rows:
        kept_prompt, kept_answer = truncate(prompt, head, answer, max_length)
        cut += len(kept_prompt) + len(kept_answer) < len(prompt) + len(answer)
        into += len(kept_answer) < len(answer)
    return cut, into


def _rung_tokenizers(sweep, preset_tokenizer, model_params: dict, hub_optional: bool,
                     notes: list[str]) -> list[tuple[list[str], object]]:
    """The tokenizer of every rung a trial can use, once, with the rungs that use it: the presets share the
    sweep's; a pretrained rung loads its source's, which its depth rungs (and a random control made
    from the same files) share. Rungs whose models the hub could not be asked about are left out."""
    from ftray.train import pretrained
    from ftray.train.models import load_tokenizer

    shared: dict = {}
    for model_id in sweep.models_in_space():
        m = sweep.model(model_id)
        if not m.is_preset and model_params.get(m.id) is None:
            continue  # noted already: no hub here
        key = "presets" if m.is_preset else (pretrained.materialize(m), m.revision, m.trust_remote_code)
        if key not in shared:
            try:
                shared[key] = ([], preset_tokenizer if m.is_preset else load_tokenizer(m, None))
            except OSError as e:
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                if not hub_optional:
                    raise HubUnavailable(f"model {m.id!r}: cannot load its tokenizer ({first})") from None
                notes.append(f"{m.id}: max_length not checked (cannot load its tokenizer here: {first})")
                continue
        shared[key][0].append(m.id)
    return list(shared.values())


def check_storage(storage: str) -> None:
    """Fail at the start, not after hours of training, when results could not be saved."""
    if not st.is_uri(storage) and not os.path.isabs(os.path.expanduser(storage)) \
            and "runtime_resources" in os.getcwd():
        # Inside `ray job submit` the working directory is Ray's unpacked copy of --working-dir.
        print(f"ftray: warning: storage {st.redact(storage)!r} is relative, so results go into the job's copy of its "
              f"working directory ({os.getcwd()}), which Ray may delete; pass --storage with an absolute path "
              "on shared storage or a URI (s3://...)", file=sys.stderr, flush=True)
    st.check_writable(st.normalize(storage), field="storage")


def check_fits_here(sweep, ray_address: str | None) -> None:
    """On a local Ray, a trial that cannot fit this machine fails now; on a cluster, or a Ray this process
    started itself (`ray.init(num_gpus=...)` before `ftray.run`), the check runs once connected, against
    its resources."""
    import ray

    from ftray.driver.resources import local_resources, plan_resources

    if not (ray_address or os.environ.get("RAY_ADDRESS") or ray.is_initialized()):
        try:
            plan_resources(sweep, local_resources())
        except FtrayInputError as e:
            raise FtrayInputError(f"{e} (this machine; name a cluster with --address or RAY_ADDRESS)") from None


def check_run_name(name: str) -> str:
    """A run folder's name, as `--name` gives it: one folder inside the storage, never a path out of it."""
    from ftray.spec.sweep import is_folder_name

    if not is_folder_name(name):
        raise FtrayInputError(f"--name must be letters, digits, '_', '.', '-' (one folder name), got {name!r}")
    return name
