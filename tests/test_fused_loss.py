"""The GPU levers on CPU: the fused (chunked) loss equals the model's own, and the speed settings together
train the same curve as the defaults; token budgets train and resume exactly."""

import pytest
import torch

import ftray.train.steps
from ftray.spec.config import SPEED_SETTINGS, TrialConfig
from ftray.train.context import local_checkpoint
from ftray.train.data import collate, tokenize_examples
from ftray.errors import FtrayInputError
from ftray.spec.ladder import LoraSettings, ModelSpec
from ftray.train.lora import apply_lora
from ftray.train.models import build_model, tokenizer_to_json
from ftray.train.recipe import TrialJob, run_local
from ftray.train.steps import ChunkedLinearCrossEntropy, FusedLossLM, chunked_linear_cross_entropy

TINY = ModelSpec("tiny-xs")


def grads_of(loss, tensors):
    return torch.autograd.grad(loss * 3.0, tensors)  # a scale: the backward pass must apply it


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_the_chunked_loss_and_its_gradients_equal_the_plain_ones(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    bias = torch.randn(50, generator=g, requires_grad=True)
    target = torch.randint(0, 50, (37,), generator=g)
    plain = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight, bias), target)
    chunked = ChunkedLinearCrossEntropy.apply(hidden, weight, bias, target, chunk) / target.numel()
    torch.testing.assert_close(chunked, plain)
    for a, b in zip(grads_of(chunked, (hidden, weight, bias)), grads_of(plain, (hidden, weight, bias))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # A frozen head (pretrained LoRA): no weight gradient is computed or asked for.
    frozen = weight.detach()
    loss = chunked_linear_cross_entropy(hidden, frozen, None, target)
    plain = torch.nn.functional.cross_entropy(hidden @ frozen.t(), target)
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(grads_of(loss, hidden)[0], grads_of(plain, hidden)[0], rtol=1e-5, atol=1e-6)


def lora_model(tok, spec=TINY):
    model = apply_lora(build_model(spec, tok, seed=0), spec, LoraSettings(8, 16, dropout=0.0))
    with torch.no_grad():  # B starts at zero: give it weights, so every adapter gets gradients
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


def loss_and_grads(module, params, batch):
    for p in params.values():
        p.grad = None
    loss = module(**batch, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in params.items()}


@pytest.mark.parametrize("train_embeddings", [True, False], ids=["trained head", "frozen head"])
@pytest.mark.parametrize("pack_length", [None, 64])
def test_the_fused_loss_module_has_the_models_loss_and_gradients(task, tok, train_embeddings, pack_length):
    spec = ModelSpec(TINY.id, train_embeddings=train_embeddings)
    model = lora_model(tok, spec)
    fused, kind = FusedLossLM.wrap(model, "auto", on_gpu=False)
    assert kind == "chunked" and isinstance(fused, FusedLossLM)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("lm_head" in n for n in params) == train_embeddings
    batch = collate(tokenize_examples(task.examples("train")[:6], tok, 48), tok.pad_token_id, pack_length=pack_length)
    want, got = loss_and_grads(model, params, batch), loss_and_grads(fused, params, batch)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    for name in params:
        torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_head_it_cannot_take_keeps_the_models_own_loss(tok):
    spec = ModelSpec(TINY.id, train_embeddings=False)
    model = apply_lora(build_model(spec, tok, seed=0), spec, LoraSettings(8, 16, targets=("q_proj", "lm_head")))
    assert FusedLossLM.wrap(model, "chunked", on_gpu=False) == (model, "model")
    assert FusedLossLM.wrap(lora_model(tok), "off", on_gpu=False)[1] == "model"
    softcapped = lora_model(tok)
    softcapped.get_base_model().config.final_logit_softcapping = 30.0  # as Gemma 2's: logits the head does not give
    assert FusedLossLM.wrap(softcapped, "chunked", on_gpu=False) == (softcapped, "model")


@pytest.mark.parametrize("settings,field", [
    (dict(batch_tokens=32), "batch_tokens"), (dict(pack=True, pack_length=32), "pack_length"),
    (dict(pack_length=128), "pack_length"), (dict(fused_loss="liger"), "fused_loss"), (dict(compile=1), "compile"),
    # A packed row wider than the budget, or an example rounded up past it: no micro-batch could keep it.
    (dict(pack=True, pack_length=256, batch_tokens=128), "batch_tokens"),
    (dict(pad_to_multiple=128, batch_tokens=64), "batch_tokens"),
])
def test_bad_speed_settings_name_their_field(settings, field):
    with pytest.raises(FtrayInputError, match=f"^{field}"):
        TrialConfig(max_length=64, **settings)


def run(task, tok, trace=None, checkpoint_dir=None, resume_from=None, verbose=False, **settings):
    config = TrialConfig(**{"model": TINY.id, "lr": 5e-3, "batch_size": 4, "grad_accum": 2, "max_length": 64,
                            "steps": 4, "eval_every": 2, "eval_samples": 8, "max_new_tokens": 8, "eval_base": False,
                            "lora_dropout": 0.0, **settings})
    job = TrialJob(config=config, task=task, model=TINY, lora=LoraSettings(8, 16, dropout=0.0),
                   tokenizer_json=tokenizer_to_json(tok))
    return run_local(job, checkpoint_dir, resume_from=resume_from, trace=trace, verbose=verbose)


def test_the_speed_settings_train_the_same_curve_as_the_defaults(task, tok, monkeypatch, capsys):
    # Dynamo traces the layers as on a GPU; inductor's code generation would take a minute on a CPU.
    monkeypatch.setattr(ftray.train.steps, "COMPILE_BACKEND", "eager")
    default_trace: list = []
    tuned_trace: list = []
    default = run(task, tok, default_trace)
    tuned = run(task, tok, tuned_trace, verbose=True, **SPEED_SETTINGS)
    # The log says which loss the trial trains with (no Liger on a CPU).
    assert "fused_loss='auto': ftray's chunked loss\n" in capsys.readouterr().out
    assert [t[:4] for t in tuned_trace] == [t[:4] for t in default_trace]  # the same examples in the same order
    for a, b in zip(default, tuned):
        assert a["step"] == b["step"] and a["tokens"] == b["tokens"]
        for key in ("train_loss", "eval_loss", "slot_f1"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("pack", [False, True])
def test_a_token_budget_trains_and_resumes_at_the_batch_it_stopped_at(task, tok, tmp_path, pack):
    settings = dict(batch_tokens=256, pack=pack, pack_length=128 if pack else None, epochs=2.0, steps=None,
                    eval_every=3, pad_to_multiple=16, eval_samples=4)
    full_trace: list = []
    full = run(task, tok, full_trace, str(tmp_path / "full"), **settings)
    assert len({len(t[3]) for t in full_trace}) > 1  # batches of as many examples as fit, not a fixed count
    assert {t[1] for t in full_trace} == {0, 1}  # two epochs
    resumed_trace: list = []
    resumed = run(task, tok, resumed_trace, str(tmp_path / "resumed"),
                  resume_from=local_checkpoint(str(tmp_path / "full"), 3), **settings)
    expected = [t for t in full_trace if t[0] > 3]
    assert [t[:4] for t in resumed_trace] == [t[:4] for t in expected]
    for a, b in zip(full[1:], resumed):
        assert a["step"] == b["step"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
