"""Nested subsets, filters, completion-only labels, and batches."""

import pytest

from ftray.data import batches, collate, nested_subset, padding_efficiency, select, tokenize_examples
from ftray.errors import FtrayInputError
from ftray.tasks import Example, SyntheticTask


def test_subsets_nest_and_are_deterministic():
    sets = [set(nested_subset(1000, f, seed=3)) for f in (0.1, 0.25, 0.5, 1.0)]
    assert [len(s) for s in sets] == [100, 250, 500, 1000]
    assert sets[0] <= sets[1] <= sets[2] <= sets[3]
    assert nested_subset(1000, 0.25, seed=3) == nested_subset(1000, 0.25, seed=3)
    assert nested_subset(1000, 0.25, seed=4) != nested_subset(1000, 0.25, seed=3)
    assert len(nested_subset(5, 0.01, seed=0)) == 1  # never empty


def test_filters_then_subset():
    ex = SyntheticTask(n_train=400).examples("train")
    confirm = select(ex, 1.0, 0, {"dialogue_act": "confirm"})
    assert confirm and all(e.meta["dialogue_act"] == "confirm" for e in confirm)
    half = select(ex, 0.5, 0, {"dialogue_act": "confirm"})
    assert set(map(id, half)) <= set(map(id, confirm))
    with pytest.raises(FtrayInputError, match="dialogue_act='nope'.*confirm"):
        select(ex, 1.0, 0, {"dialogue_act": "nope"})


def test_loss_only_on_the_completion(tiny_tokenizer):
    tok = tiny_tokenizer
    e = Example("Sentence: Was Kalo Quest made by Tor Games?\nMeaning representation:",
                " confirm(name[Kalo Quest], developer[Tor Games])")
    [t] = tokenize_examples([e], tok, max_length=256)
    n_prompt = len(tok(e.prompt, add_special_tokens=False)["input_ids"])
    completion = tok(e.completion, add_special_tokens=False)["input_ids"]
    assert t["labels"][:n_prompt] == [-100] * n_prompt
    assert t["labels"][n_prompt:] == completion + [tok.eos_token_id]
    assert t["input_ids"][n_prompt:] == completion + [tok.eos_token_id]


def test_truncation_cuts_the_prompt_start_first(tiny_tokenizer):
    tok = tiny_tokenizer
    e = Example("word " * 200, " confirm(name[X])")
    [t] = tokenize_examples([e], tok, max_length=32)
    answer = tok(e.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(t["input_ids"]) == 32
    assert t["input_ids"][-len(answer):] == answer  # the whole answer survives
    assert sum(x != -100 for x in t["labels"]) == len(answer)


def test_batches_equal_per_rank_cover_data_and_pad_little(tiny_tokenizer):
    data = tokenize_examples(SyntheticTask(n_train=500).examples("train"), tiny_tokenizer, 128)
    per_rank = [batches(data, 8, seed=1, epoch=0, rank=r, world_size=2) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 500 // 8 // 2
    seen = [i for rank in per_rank for b in rank for i in b]
    assert len(seen) == len(set(seen))  # no example twice in an epoch
    assert all(len(b) == 8 for rank in per_rank for b in rank)
    assert padding_efficiency(data, per_rank[0]) > 0.9
    assert batches(data, 8, 1, 1, 0, 2) != per_rank[0]  # a new order each epoch
    tiny = batches(data[:3], 8, 0, 0, 1, 2)  # fewer examples than one batch per worker
    assert len(tiny) == 1 and len(tiny[0]) == 8


def test_collate_pads_to_the_longest_in_the_batch():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
