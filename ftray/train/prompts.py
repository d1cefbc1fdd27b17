"""How a prompt and its completion become token ids: the one formatting used in training, evaluation
and generation, so a model is scored on exactly the text shape it was trained on.

Formats (TrialConfig.prompt_format):
- "chat": the tokenizer's chat template, the prompt as the user's turn, ending in the template's
  generation prompt (the assistant's header); the completion is the assistant's answer, followed by
  the token the template closes an assistant turn with (`<|im_end|>` for SmolLM2 and Qwen2.5).
- "plain": the prompt as text with the tokenizer's own leading special tokens (a BOS where the
  tokenizer adds one, never a trailing EOS); the completion follows, then the tokenizer's EOS.
- "auto" (the default): "chat" where the tokenizer has a chat template, else "plain". The tiny
  presets' tokenizer has none and adds no special tokens, so their prompts are the bare text.
"""

from __future__ import annotations

from typing import Sequence

from ftray.errors import FtrayInputError

FORMATS = ("auto", "chat", "plain")
# An assistant answer no template rewrites: where it ends in the rendered chat, the end-of-turn begins.
_MARKER = "ftray-answer-marker"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_format(tokenizer, fmt: str) -> str:
    """"chat" or "plain": what `fmt` ("auto", "chat" or "plain") means for this tokenizer."""
    if fmt not in FORMATS:
        raise FtrayInputError(f"prompt_format must be 'auto', 'chat' or 'plain', got {fmt!r}")
    if fmt == "auto":
        return "chat" if has_chat_template(tokenizer) else "plain"
    if fmt == "chat" and not has_chat_template(tokenizer):
        raise FtrayInputError("prompt_format is 'chat' but the model's tokenizer has no chat template; "
                              "use 'plain' or 'auto'")
    return fmt


def _chat_texts(tokenizer, prompts: Sequence[str]) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts]


def _chat_prompts(tokenizer, prompts: Sequence[str]) -> list[tuple[list[int], int]]:
    # The rendered text already holds every special token, so tokenizing adds none (as
    # apply_chat_template(tokenize=True) does).
    texts = _chat_texts(tokenizer, prompts)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    heads = [t[: t.rfind(p)] if p and p in t else "" for t, p in zip(texts, prompts)]
    head_ids = tokenizer(heads, add_special_tokens=False)["input_ids"]
    return [(i, len(h) if i[: len(h)] == h else 0) for i, h in zip(ids, head_ids)]


def _plain_prompts(tokenizer, prompts: Sequence[str]) -> list[tuple[list[int], int]]:
    """Each prompt with the tokenizer's leading special tokens and without any trailing one."""
    full = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    bare = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    out = []
    for f, b in zip(full, bare):
        at = next((i for i in range(len(f) - len(b) + 1) if f[i : i + len(b)] == b), None)
        if at is None:  # special tokens that merge into the text: keep all but a trailing EOS
            eos = tokenizer.eos_token_id
            out.append((f[:-1] if f and f[-1] == eos and (not b or b[-1] != eos) else f, 0))
        else:
            out.append((f[: at + len(b)], at))
    return out


def encode_prompts(tokenizer, prompts: Sequence[str], fmt: str) -> list[tuple[list[int], int]]:
    """(ids, head) of each prompt: `head` leading ids (a BOS, a chat template's system turn and user
    header) that truncation keeps. `fmt` must be resolved ("chat" or "plain")."""
    if not prompts:
        return []
    return _chat_prompts(tokenizer, prompts) if fmt == "chat" else _plain_prompts(tokenizer, prompts)


def cut_prompt(ids: list[int], head: int, keep: int) -> list[int]:
    """`keep` ids of a prompt: its head and its end (the question, the generation prompt); the middle goes."""
    if len(ids) <= keep:
        return ids
    if keep > head:
        return ids[:head] + ids[len(ids) - (keep - head) :]
    return ids[len(ids) - keep :]


def encode_prompt(tokenizer, prompt: str, fmt: str = "auto", max_length: int | None = None) -> list[int]:
    """The ids a model sees for `prompt` (in generation too), at most `max_length` of them."""
    [(ids, head)] = encode_prompts(tokenizer, [prompt], resolve_format(tokenizer, fmt))
    return ids if max_length is None else cut_prompt(ids, head, max_length)


def _is_special(tokenizer, token_id: int) -> bool:
    if token_id in set(tokenizer.all_special_ids):
        return True
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return token_id in added and bool(getattr(added[token_id], "special", False))


def _turn_end(tokenizer) -> int | None:
    """The special token the chat template puts right after an assistant's answer, if any."""
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _MARKER}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # a template may refuse this conversation (its own checks): then EOS ends answers
        return None
    at = text.rfind(_MARKER)
    if at < 0:
        return None
    tail = tokenizer(text[at + len(_MARKER) :], add_special_tokens=False)["input_ids"]
    return tail[0] if tail and _is_special(tokenizer, tail[0]) else None


def end_of_answer_id(tokenizer, fmt: str = "auto") -> int:
    """The token that ends an answer: what training appends to completions and generation stops on."""
    if resolve_format(tokenizer, fmt) == "chat":
        end = _turn_end(tokenizer)
        if end is not None:
            return end
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: completions could never be taught to stop")
    return tokenizer.eos_token_id


def stop_token_ids(tokenizer, fmt: str = "auto") -> list[int]:
    """Ids generation stops at: the end of an answer, and EOS too where that differs (a chat model
    may still close with EOS)."""
    end = end_of_answer_id(tokenizer, fmt)
    eos = tokenizer.eos_token_id
    return [end] if eos is None or eos == end else [end, eos]


def encode_completions(tokenizer, completions: Sequence[str], fmt: str) -> list[list[int]]:
    """Completion ids, each followed by the end of an answer. `fmt` must be resolved.

    In a chat the answer starts right after the assistant's header, so a completion's leading
    whitespace (there for plain-text continuation, " inform(...)") is dropped.
    """
    if not completions:
        return []
    end = end_of_answer_id(tokenizer, fmt)
    texts = [c.lstrip() for c in completions] if fmt == "chat" else list(completions)
    return [ids + [end] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
