"""Shape-stable padding, packing into rows of bounded length and token budgets change how batches are laid out,
never the loss or its gradients."""

import pytest
import torch

from ftray.spec.config import TrialConfig
from ftray.train.data import IGNORE, Layout, batches, collate, tokenize_examples
from ftray.spec.ladder import LoraSettings, ModelSpec
from ftray.train.lora import apply_lora
from ftray.train.models import build_model, tokenizer_to_json
from ftray.train.recipe import TrialJob, run_local

TINY = ModelSpec("tiny-xs")


@pytest.fixture(scope="module")
def samples(task, tok):
    data = tokenize_examples(task.examples("train")[:6], tok, max_length=48)
    assert len({len(s["input_ids"]) for s in data}) > 1  # rows of different lengths: padding matters
    return data


def lora_model(tok, attn: str = "sdpa"):
    model = apply_lora(build_model(TINY, tok, seed=0), TINY, LoraSettings(8, 16, dropout=0.0))
    model.set_attn_implementation(attn)
    # LoRA's B starts at zero; give it weights, so that the adapters change the output and get gradients of A too.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()  # no dropout: the two layouts must see the same function


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g.abs().sum() > 0 for g in grads.values())
    return loss.detach(), grads


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_pad_to_multiple_rounds_the_width_up_and_masks_the_rest():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = collate(rows, pad_id=1, pad_to_multiple=64)
    assert batch["input_ids"].shape == (2, 64)
    assert batch["attention_mask"].sum(1).tolist() == [3, 1]
    assert (batch["labels"][:, 3:] == IGNORE).all() and (batch["input_ids"][:, 3:] == 1).all()
    assert collate(rows, pad_id=1, pad_to_multiple=3)["input_ids"].shape == (2, 3)  # already a multiple
    for key, value in collate(rows, pad_id=1).items():  # the default: as before
        torch.testing.assert_close(value, collate(rows, pad_id=1, pad_to_multiple=1)[key])
    with pytest.raises(ValueError):
        collate(rows, pad_id=1, pad_to_multiple=0)


def test_packing_fills_rows_of_bounded_length_with_restarting_positions():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]},
            {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}]
    batch = collate(rows, pad_id=1, pack_length=5)
    assert batch.keys() == {"input_ids", "labels", "position_ids"}  # an attention_mask would undo the isolation
    # The third does not fit the first row's 0 free tokens: a second row, its padding a sequence of its own.
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [1, 2, 3, 4, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, -100, 3, 4, -100]]  # 8: predicted from 7
    # First fit: a later, shorter example goes back to the first row with room.
    assert collate(rows[2:] + rows[:1] + [{"input_ids": [9], "labels": [9]}], pad_id=1,
                   pack_length=5)["input_ids"].tolist() == [[1, 2, 3, 4, 9], [5, 6, 7, 1, 1]]
    wide = collate(rows, pad_id=1, pad_to_multiple=8, pack_length=5)  # the row width is rounded up too
    assert wide["input_ids"].tolist() == [[5, 6, 7, 8, 9, 1, 1, 1], [1, 2, 3, 4, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="does not fit"):
        collate(rows, pad_id=1, pack_length=3)


def test_padding_to_a_multiple_of_64_leaves_the_loss_and_gradients_as_they_are(tok, samples):
    model = lora_model(tok)
    wide = collate(samples, tok.pad_token_id, pad_to_multiple=64)
    assert wide["input_ids"].shape[1] == 64 > collate(samples, tok.pad_token_id)["input_ids"].shape[1]
    assert_same(loss_and_grads(model, collate(samples, tok.pad_token_id)), loss_and_grads(model, wide))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pack_length,pad_to_multiple", [(48, 1), (100, 64), (400, 1)])
def test_a_packed_batch_has_the_loss_and_gradients_of_the_padded_one(tok, samples, attn, pack_length, pad_to_multiple):
    model = lora_model(tok, attn)
    padded = collate(samples, tok.pad_token_id)
    packed = collate(samples, tok.pad_token_id, pad_to_multiple, pack_length=pack_length)
    assert packed["input_ids"].shape[1] == Layout(pad_to_multiple, pack_length).width(0)
    assert (packed["input_ids"].shape[0] == 1) == (pack_length == 400)  # several rows but when all fit one
    # The recipe's loss normalisation: the same completion tokens in both layouts.
    assert (padded["labels"][:, 1:] != IGNORE).sum() == (packed["labels"][:, 1:] != IGNORE).sum()
    assert_same(loss_and_grads(model, padded), loss_and_grads(model, packed))


def test_each_packed_example_sees_only_itself(tok, samples):
    model = lora_model(tok)
    with torch.no_grad():
        alone = model(**collate(samples[1:2], tok.pad_token_id, pack_length=128), use_cache=False).logits[0]
        packed = model(**collate(samples[:3], tok.pad_token_id, pack_length=128), use_cache=False).logits[0]
    start, k = len(samples[0]["input_ids"]), len(samples[1]["input_ids"])
    torch.testing.assert_close(packed[start : start + k], alone[:k], rtol=1e-5, atol=1e-5)


ROW_SETTINGS = [{}, {"pad_to_multiple": 64}, {"pack": True}, {"pack": True, "pack_length": 300},
                {"pack": True, "pack_length": 300, "pad_to_multiple": 64}, {"max_length": 100, "pad_to_multiple": 16}]


@pytest.mark.parametrize("settings", ROW_SETTINGS, ids=str)
def test_a_trials_row_width_is_its_layouts_widest_row(settings):
    cfg = TrialConfig(**settings)
    assert cfg.row_width == Layout.of(cfg).width(cfg.max_length)


def tensor_tokens(layout, samples):
    """The tokens a collated micro-batch holds, padding included."""
    return collate(samples, 1, layout.pad_to_multiple, layout.pack_length)["input_ids"].numel()


@pytest.mark.parametrize("layout", [Layout(), Layout(64), Layout(1, 64), Layout(16, 100)], ids=str)
def test_token_budget_batches_fit_the_budget_and_deal_every_rank_the_same_steps(layout):
    lengths = [5 + (i * 37) % 56 for i in range(300)]
    data = [{"input_ids": [2] * k, "labels": [2] * k} for k in lengths]
    budget = 512
    per_rank = [batches(data, 8, seed=3, epoch=1, rank=r, world_size=2, batch_tokens=budget, layout=layout)
                for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) > 0  # DDP steps in lockstep
    assert per_rank[0] == batches(data, 8, seed=3, epoch=1, rank=0, world_size=2, batch_tokens=budget, layout=layout)
    assert per_rank[0] != batches(data, 8, seed=3, epoch=2, rank=0, world_size=2, batch_tokens=budget, layout=layout)
    seen = [i for rank in per_rank for b in rank for i in b]
    assert len(seen) == len(set(seen)) > 0.9 * len(data)  # no example twice; only a step's leftovers dropped
    sizes = [tensor_tokens(layout, [data[i] for i in b]) for b in per_rank[0] + per_rank[1]]
    assert max(sizes) <= budget and sum(sizes) / len(sizes) > 0.8 * budget  # within the budget, and nearly full
    # A budget below one example still gives batches of one, and a tiny subset still reaches every rank.
    assert all(len(b) == 1 for b in batches(data[:10], 8, 0, 0, 0, 1, batch_tokens=4))
    assert [len(batches(data[:1], 8, 0, 0, r, 2, batch_tokens=512)) for r in range(2)] == [1, 1]


def test_the_recipe_trains_the_same_packed_or_padded(task, tok):
    tokenizer_json = tokenizer_to_json(tok)

    def run(**layout):
        config = TrialConfig(model=TINY.id, lr=5e-3, batch_size=4, grad_accum=2, max_length=64, steps=4, eval_every=2,
                             eval_samples=8, max_new_tokens=8, eval_base=False, lora_dropout=0.0, **layout)
        job = TrialJob(config=config, task=task, model=TINY, lora=LoraSettings(8, 16, dropout=0.0),
                       tokenizer_json=tokenizer_json)
        trace: list = []
        return run_local(job, trace=trace), trace

    (plain, plain_trace), (packed, packed_trace) = run(), run(pack=True, pack_length=100, pad_to_multiple=64)
    assert [t[:4] for t in packed_trace] == [t[:4] for t in plain_trace]  # the same rows in the same order
    for a, b in zip(plain, packed):
        assert a["step"] == b["step"] and a["tokens"] == b["tokens"]
        for key in ("train_loss", "eval_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
