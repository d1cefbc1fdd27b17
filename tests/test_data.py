"""Nested subsets, filters, completion-only labels, truncation, batches and padding."""

import copy

import pytest
import torch

from ftray.train.data import (batches, collate, filter_examples, nested_subset, padding_efficiency, select,
                        tokenize_examples)
from ftray.errors import FtrayInputError
from ftray.train.prompts import encode_prompt, end_of_answer_id, resolve_format, stop_token_ids
from ftray.tasks import Example, SyntheticTask


def test_subsets_nest_and_are_deterministic():
    subsets = [nested_subset(1000, f, seed=3) for f in (0.1, 0.25, 0.5, 1.0)]
    assert [len(s) for s in subsets] == [100, 250, 500, 1000]
    sets = [set(s) for s in subsets]
    assert sets[0] <= sets[1] <= sets[2] <= sets[3] == set(range(1000))
    assert all(s == sorted(s) for s in subsets)  # original order
    assert nested_subset(1000, 0.25, seed=3) == subsets[1]
    assert nested_subset(1000, 0.25, seed=4) != subsets[1]
    assert len(nested_subset(5, 0.01, seed=0)) == 1  # never empty
    assert len(nested_subset(100, 0.07, seed=0)) == 7  # no float noise (0.07 * 100 = 7.000000000000001)
    assert len(nested_subset(7, 0.5, seed=0)) == 4  # rounds up
    assert nested_subset(0, 0.5, seed=0) == []


EXAMPLES = [Example(f"p{i}", f" c{i}", {"act": act, "lang": lang})
            for i, (act, lang) in enumerate([("inform", "en"), ("request", "en"), ("inform", "de"),
                                             ("inform", "en"), ("confirm", "de")] * 20)]


def test_filters_then_nested_subsets():
    inform = select(EXAMPLES, 1.0, 0, {"act": "inform"})
    assert len(inform) == 60 and all(e.meta["act"] == "inform" for e in inform)
    assert filter_examples(EXAMPLES, {"act": "inform", "lang": "de"}) == EXAMPLES[2::5]
    assert filter_examples(EXAMPLES, None) == EXAMPLES == select(EXAMPLES, 1.0, 0, {})
    tenth, half = select(EXAMPLES, 0.1, 0, {"act": "inform"}), select(EXAMPLES, 0.5, 0, {"act": "inform"})
    assert len(tenth) == 6 and len(half) == 30
    assert set(map(id, tenth)) <= set(map(id, half)) <= set(map(id, inform))


def test_a_filter_that_keeps_nothing_says_which_and_what_there_is():
    with pytest.raises(FtrayInputError, match=r"act='nope'.*confirm, inform, request"):
        select(EXAMPLES, 1.0, 0, {"act": "nope"})
    # request rows are all "en": the second filter is the one that empties the set
    with pytest.raises(FtrayInputError, match=r"lang='de'.*values of 'lang' seen: en$"):
        select(EXAMPLES, 1.0, 0, {"act": "request", "lang": "de"})


def test_loss_only_on_the_completion(tiny_tokenizer):
    tok = tiny_tokenizer
    e = Example("Sentence: Did you mean Kalo Quest, made by Tor Games?\nMeaning representation:",
                " confirm(name[Kalo Quest], developer[Tor Games])")
    [t] = tokenize_examples([e], tok, max_length=256)
    prompt = tok(e.prompt, add_special_tokens=False)["input_ids"]
    completion = tok(e.completion, add_special_tokens=False)["input_ids"]
    assert t["input_ids"] == prompt + completion + [tok.eos_token_id]
    assert t["labels"] == [-100] * len(prompt) + completion + [tok.eos_token_id]
    assert tok.decode(t["input_ids"]) == e.prompt + e.completion + tok.eos_token
    assert tokenize_examples([], tok, 16) == []


def test_truncation_cuts_the_prompt_start_first_then_the_completion_end(tiny_tokenizer):
    tok = tiny_tokenizer
    long_prompt = "Sentence: " + "word " * 200 + "the end\nMeaning representation:"
    e = Example(long_prompt, " confirm(name[X])")
    [t] = tokenize_examples([e], tok, max_length=32)
    prompt = tok(e.prompt, add_special_tokens=False)["input_ids"]
    answer = tok(e.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(t["input_ids"]) == 32
    assert t["input_ids"] == prompt[-(32 - len(answer)):] + answer  # the prompt's end and the whole answer
    assert t["labels"] == [-100] * (32 - len(answer)) + answer

    long_answer = Example("Sentence: hi\nMeaning representation:", " inform(name[" + "Kalo " * 100 + "])")
    [t] = tokenize_examples([long_answer], tok, max_length=16)
    answer = tok(long_answer.completion, add_special_tokens=False)["input_ids"]
    assert len(t["input_ids"]) == 16
    # one prompt token stays so the first answer token is predicted from something; the answer loses its end
    assert t["labels"][0] == -100 and t["labels"][1:] == answer[:15]
    assert tok.eos_token_id not in t["input_ids"]


def test_batches_equal_per_rank_cover_data_and_pad_little(tiny_tokenizer):
    data = tokenize_examples(SyntheticTask(n_train=500).examples("train"), tiny_tokenizer, 128)
    per_rank = [batches(data, 8, seed=1, epoch=0, rank=r, world_size=3) for r in range(3)]
    assert len(per_rank[0]) == len(per_rank[1]) == len(per_rank[2]) == 500 // 8 // 3
    seen = [i for rank in per_rank for b in rank for i in b]
    assert len(seen) == len(set(seen)) == 20 * 3 * 8  # no example twice in an epoch
    assert all(len(b) == 8 for rank in per_rank for b in rank)
    one_rank = [i for b in batches(data, 8, 1, 0, 0, 1) for i in b]
    assert len(one_rank) == 496 and len(set(one_rank)) == 496  # one worker: all but the last partial batch
    assert per_rank[0] == batches(data, 8, 1, 0, 0, 3)  # deterministic
    assert batches(data, 8, 1, 1, 0, 3) != per_rank[0]  # a new order each epoch
    # At each step the ranks' batches are about as long as each other, so no rank waits long for the
    # others (dealt at random, as before 2026-11-25, this was 1.44).
    width = lambda b: max(len(data[i]["input_ids"]) for i in b)
    steps = list(zip(*per_rank))
    assert sum(max(map(width, s)) for s in steps) / sum(min(map(width, s)) for s in steps) < 1.1

    lengths = sorted(len(t["input_ids"]) for t in data)
    assert lengths[-1] / lengths[0] > 2  # lengths vary, so grouping them matters
    grouped = padding_efficiency([[data[i] for i in b] for rank in per_rank for b in rank])
    in_order = padding_efficiency([data[i : i + 8] for i in range(0, 496, 8)])
    assert grouped > 0.9 and grouped > in_order


def test_batches_with_fewer_examples_than_one_batch_per_worker(tiny_tokenizer):
    data = tokenize_examples(SyntheticTask(n_train=20).examples("train")[:3], tiny_tokenizer, 128)
    for rank in range(2):
        [batch] = batches(data, 8, seed=0, epoch=0, rank=rank, world_size=2)
        assert len(batch) == 8 and set(batch) == {0, 1, 2}
    assert batches(data, 2, 0, 0, 0, 1, drop_last=False)  # never an empty list


def test_collate_pads_to_the_longest_in_the_batch():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert all(t.dtype == torch.long and t.shape == (2, 3) for t in batch.values())
    assert padding_efficiency([[{"input_ids": [5, 6, 7]}, {"input_ids": [8]}]]) == pytest.approx(4 / 6)


# ---- prompt formats (ftray/train/prompts.py); the real SmolLM2 tokenizer: tests/test_real_model.py -------------
def _copy(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(tok.backend_tokenizer), eos_token=tok.eos_token,
                                   bos_token=tok.bos_token, pad_token=tok.pad_token)


def test_preset_tokenizer_prompts_are_unchanged_in_every_format(tiny_tokenizer):
    """The presets' tokenizer adds no special tokens and has no chat template: auto is plain is bare text."""
    tok = tiny_tokenizer
    e = Example("Sentence: Did you mean Kalo Quest?\nMeaning representation:", " confirm(name[Kalo Quest])")
    assert tok(e.prompt, add_special_tokens=True)["input_ids"] == tok(e.prompt, add_special_tokens=False)["input_ids"]
    assert resolve_format(tok, "auto") == "plain" and end_of_answer_id(tok) == tok.eos_token_id
    bare = tokenize_examples([e], tok, 256)
    assert tokenize_examples([e], tok, 256, fmt="auto") == tokenize_examples([e], tok, 256, fmt="plain") == bare
    assert encode_prompt(tok, e.prompt) == tok(e.prompt, add_special_tokens=False)["input_ids"]
    with pytest.raises(FtrayInputError, match="no chat template"):
        tokenize_examples([e], tok, 256, fmt="chat")
    with pytest.raises(FtrayInputError, match="prompt_format must be"):
        encode_prompt(tok, e.prompt, "chatml")


def test_plain_prompts_keep_a_bos_and_drop_a_trailing_eos(tiny_tokenizer):
    from tokenizers.processors import TemplateProcessing

    tok = _copy(tiny_tokenizer)
    bos, eos = tok.bos_token_id, tok.eos_token_id  # the same token here: a tokenizer that adds both
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A <|endoftext|>",
                                                              special_tokens=[("<|endoftext|>", eos)])
    e = Example("Sentence: " + "word " * 60 + "the end\nMeaning representation:", " confirm(name[X])")
    text = tok(e.prompt, add_special_tokens=False)["input_ids"]
    assert tok(e.prompt)["input_ids"] == [bos, *text, eos]
    assert encode_prompt(tok, e.prompt, "plain") == [bos, *text]
    [t] = tokenize_examples([e], tok, 1024)
    answer = tok(e.completion, add_special_tokens=False)["input_ids"] + [eos]
    assert t["input_ids"] == [bos, *text, *answer] and t["labels"] == [-100] * (1 + len(text)) + answer
    [cut] = tokenize_examples([e], tok, 24)  # too long: the BOS stays, the prompt's start goes
    keep = 24 - len(answer) - 1
    assert cut["input_ids"] == [bos, *text[-keep:], *answer]
    assert encode_prompt(tok, e.prompt, "plain", max_length=10) == [bos, *text[-9:]]


def test_chat_prompts_use_the_template_and_end_answers_with_its_end_of_turn(tiny_tokenizer):
    tok = _copy(tiny_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|end|>"]})
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|end|>{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    end = tok.convert_tokens_to_ids("<|end|>")
    e = Example("Sentence: " + "word " * 60 + "the end\nMeaning representation:", " confirm(name[X])")
    assert resolve_format(tok, "auto") == "chat" and end_of_answer_id(tok) == end != tok.eos_token_id
    assert stop_token_ids(tok) == [end, tok.eos_token_id] and stop_token_ids(tok, "plain") == [tok.eos_token_id]
    rendered = tok.apply_chat_template([{"role": "user", "content": e.prompt}], add_generation_prompt=True, tokenize=False)
    prompt = encode_prompt(tok, e.prompt)
    assert prompt == tok(rendered, add_special_tokens=False)["input_ids"]
    [t] = tokenize_examples([e], tok, 512, fmt="auto")
    answer = tok("confirm(name[X])", add_special_tokens=False)["input_ids"] + [end]  # no leading space in a chat
    assert t["input_ids"] == prompt + answer and t["labels"] == [-100] * len(prompt) + answer
    head = tok("[user] ", add_special_tokens=False)["input_ids"]
    [cut] = tokenize_examples([e], tok, 40, fmt="chat")  # the header and the end (generation prompt) stay
    assert cut["input_ids"][: len(head)] == head and cut["input_ids"][-len(answer):] == answer
    assert len(cut["input_ids"]) == 40 and cut["input_ids"][len(head):-len(answer)] == prompt[-(40 - len(head) - len(answer)):]
    assert tok.decode(cut["input_ids"][:-len(answer)]).endswith("Meaning representation:<|end|>[assistant] ")
