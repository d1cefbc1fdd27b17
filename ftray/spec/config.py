"""`TrialConfig`: every setting of one trial, in one place.

It is the one list of per-trial settings. The search space's keys, the W&B config of a trial, the
report's JSON and CSV columns and the resume check all derive from its fields. A sweep holds one as
its defaults (`Sweep.trial`); a sampled trial is those defaults with the sampled values replaced;
the trial's workers receive it as it is, and it is written into the trial's folder.

Adding a setting is one field here (with its meaning and its check) plus the code that uses it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from ftray.errors import FtrayInputError
from ftray.checks import is_int, is_number


def round_up(n: int, multiple: int) -> int:
    """`n` rounded up to a multiple of `multiple`: a row's width under pad_to_multiple."""
    return -(-n // multiple) * multiple


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v, low)


def _number(ok: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: is_number(v) and ok(v)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _setting(default, meaning: str, accepts: str, check: Callable[[Any], bool], searchable: bool = True):
    """A field of TrialConfig: its default, a one-line meaning, what it accepts and the check of that."""
    return field(default=default, metadata={"meaning": meaning, "accepts": accepts, "check": check,
                                            "searchable": searchable})


_str = lambda v: isinstance(v, str) and bool(v)  # noqa: E731
_bool = lambda v: isinstance(v, bool)  # noqa: E731


@dataclass(frozen=True)
class TrialConfig:
    """The settings of one trial. Every field is checked at construction; an error names it and its value."""

    # ---- what is trained
    model: str | None = _setting(None, "the ladder rung this trial trains (set per trial)", "a model id of the ladder",
                                 _optional(_str))
    lora_rank: int = _setting(8, "LoRA rank", "an int > 0", _int_at_least(1))
    lora_alpha: float | None = _setting(None, "LoRA alpha (None: 2 x lora_rank)", "a number > 0 or None",
                                        _optional(_number(lambda v: v > 0)))
    lora_dropout: float = _setting(0.05, "dropout on the LoRA path", "a number in [0, 1)",
                                   _number(lambda v: 0 <= v < 1))
    lr: float = _setting(1e-3, "peak learning rate of AdamW", "a number > 0", _number(lambda v: v > 0))
    weight_decay: float = _setting(0.0, "AdamW weight decay", "a number >= 0", _number(lambda v: v >= 0))
    warmup_ratio: float = _setting(0.05, "share of the steps spent warming the learning rate up", "a number in [0, 1)",
                                   _number(lambda v: 0 <= v < 1))
    data_fraction: float = _setting(1.0, "nested share of the training rows (the 25% subset holds the 10% one)",
                                    "a number in (0, 1]", _number(lambda v: 0 < v <= 1))
    data_filter: str | None = _setting(None, "keep only training rows whose `data_filter_column` has this value",
                                       "None or a value of the task's `data_filter_column`", _optional(_str))
    data_filter_column: str | None = _setting(None, "the column `data_filter` reads, e.g. ViGGO's dialogue_act",
                                              "None or a column name", _optional(_str), searchable=False)
    seed: int = _setting(0, "seed of the data subset, batch order and random weights (and of the searcher)",
                         "an int >= 0", _int_at_least(0))
    # ---- the budget
    batch_size: int = _setting(16, "rows per worker per micro-batch", "an int > 0", _int_at_least(1))
    grad_accum: int = _setting(1, "micro-batches per optimizer step", "an int > 0", _int_at_least(1))
    steps: int | None = _setting(None, "optimizer steps (default 200 when epochs is not set either)", "an int > 0",
                                 _optional(_int_at_least(1)), searchable=False)
    epochs: float | None = _setting(None, "passes over the (subset of the) training rows, instead of steps",
                                    "a number > 0", _optional(_number(lambda v: v > 0)), searchable=False)
    max_length: int = _setting(256, "tokens per example at most (prompt + completion)", "an int > 1",
                               _int_at_least(2))
    prompt_format: str = _setting("auto", "how a prompt reaches the model: the tokenizer's chat template ('chat'), "
                                  "plain text ('plain'), or chat where the tokenizer has a template ('auto')",
                                  "'auto', 'chat' or 'plain'", lambda v: v in ("auto", "chat", "plain"))
    # ---- speed: how batches are laid out (the loss is the same either way, to float rounding)
    pad_to_multiple: int = _setting(1, "training batch widths rounded up to a multiple of this (64 suits GPUs whose "
                                    "attention kernels are built per input shape; 1: the batch's longest row)",
                                    "an int > 0", _int_at_least(1), searchable=False)
    pack: bool = _setting(False, "each micro-batch's examples end to end in rows of `pack_length` tokens, each "
                          "example attending to itself only (evaluation stays unpacked)", "True or False", _bool,
                          searchable=False)
    pack_length: int | None = _setting(None, "tokens per packed row (None: max_length); attention costs the row's "
                                       "length per token, so the cost is linear in the tokens packed",
                                       "None or an int >= max_length", _optional(_int_at_least(2)), searchable=False)
    batch_tokens: int | None = _setting(None, "tokens per worker per micro-batch, padding included, instead of "
                                        "batch_size rows: rows are added until the next would overflow it (None: "
                                        "batch_size rows)", "None or an int >= max_length",
                                        _optional(_int_at_least(2)), searchable=False)
    fused_loss: str = _setting("off", "the loss without the full logits: 'chunked' (the head and cross-entropy chunk "
                               "by chunk over the completion tokens, plain PyTorch), 'auto' (Liger Kernel's fused "
                               "kernel on CUDA where it is installed, else 'chunked'), 'off' (the model's own loss)",
                               "'off', 'chunked' or 'auto'", lambda v: v in ("off", "chunked", "auto"),
                               searchable=False)
    compile: bool = _setting(False, "torch.compile each decoder layer for training (evaluation and generation run "
                             "them uncompiled)", "True or False", _bool, searchable=False)
    # ---- evaluation
    eval_every: int = _setting(50, "optimizer steps between evaluations (and checkpoints)", "an int > 0",
                               _int_at_least(1), searchable=False)
    eval_samples: int = _setting(64, "validation rows scored at each evaluation", "an int > 0", _int_at_least(1),
                                 searchable=False)
    max_new_tokens: int = _setting(64, "tokens generated per validation row at most", "an int > 0",
                                   _int_at_least(1), searchable=False)
    test_samples: int = _setting(200, "held-out test rows each trial is scored on at the end of the sweep "
                                 "(0: none; fewer when the split has fewer)", "an int >= 0", _int_at_least(0),
                                 searchable=False)
    eval_base: bool = _setting(True, "also score the model before finetuning (the gain finetuning buys)",
                               "True or False", _bool, searchable=False)

    def __post_init__(self):
        for f in fields(self):
            value = _plain(getattr(self, f.name))  # Tune and Optuna may sample numpy numbers
            object.__setattr__(self, f.name, value)
            check_setting(f.name, value, where=f.name)
        if self.steps is not None and self.epochs is not None:
            raise FtrayInputError(f"set exactly one of steps and epochs, got steps={self.steps!r}, epochs={self.epochs!r}")
        if self.steps is None and self.epochs is None:
            object.__setattr__(self, "steps", 200)
        # Every example must fit a packed row and a micro-batch whole.
        for name in ("pack_length", "batch_tokens"):
            value = getattr(self, name)
            if value is not None and value < self.max_length:
                raise FtrayInputError(f"{name} must be None or an int >= max_length ({self.max_length}), got {value!r}")
        if self.pack_length is not None and not self.pack:
            raise FtrayInputError(f"pack_length={self.pack_length!r} is set but pack is False: set pack=True or "
                                  "leave pack_length None")
        if self.batch_tokens is not None and self.batch_tokens < self.row_width:
            raise FtrayInputError(f"batch_tokens={self.batch_tokens} is under one row's width ({self.row_width}: "
                                  f"{'pack_length' if self.pack else 'max_length'} rounded up to pad_to_multiple="
                                  f"{self.pad_to_multiple}), so every micro-batch would break the budget: raise it")

    @property
    def row_width(self) -> int:
        """The widest row a micro-batch can have: a packed row, or an example of max_length, rounded up
        (the width of ftray.train.data.Layout.of(self) for an example of max_length)."""
        longest = (self.pack_length or self.max_length) if self.pack else self.max_length
        return round_up(longest, self.pad_to_multiple)

    @property
    def alpha(self) -> float:
        return 2 * self.lora_rank if self.lora_alpha is None else self.lora_alpha

    def replace(self, **changes) -> TrialConfig:
        """A copy with `changes`; a changed budget replaces the other one (steps=... drops epochs)."""
        if "epochs" in changes and "steps" not in changes:
            changes["steps"] = None
        if "steps" in changes and changes["steps"] is not None and "epochs" not in changes:
            changes["epochs"] = None
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> TrialConfig:
        """From `to_dict()`'s output; keys this version does not know (a newer writer) are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# The speed levers that leave the loss as it is (to float rounding), all on: what a GPU run turns on to
# compare against the defaults. batch_tokens is not among them: a token budget changes which examples
# share a step, and so the training itself; choose it per model and GPU.
SPEED_SETTINGS = {"pack": True, "fused_loss": "auto", "compile": True, "pad_to_multiple": 64}

SETTINGS = {f.name: f for f in fields(TrialConfig)}
# The names a sweep's `space` may sample.
SEARCHABLE = tuple(f.name for f in fields(TrialConfig) if f.metadata["searchable"])


def check_setting(name: str, value: Any, where: str) -> None:
    """Raise FtrayInputError naming `where` unless `value` is acceptable for setting `name`."""
    meta = SETTINGS[name].metadata
    if not meta["check"](_plain(value)):
        raise FtrayInputError(f"{where} must be {meta['accepts']}, got {value!r}")


def describe_settings() -> str:
    """One line per setting: name, default, meaning (for `ftray run --help`-style listings and errors)."""
    return "\n".join(f"  {f.name:<20} {f.default!r:<8} {f.metadata['meaning']}" for f in fields(TrialConfig))


def _plain(v):
    """numpy scalars (sampled by Tune or Optuna) as Python numbers, so configs compare and serialise."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return v
