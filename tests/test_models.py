"""The model ladder: presets, parameter counts without weights, LoRA and its target checks."""

import pytest
import torch

from ftray.errors import FtrayInputError
from ftray.models import (PRESETS, LoraSettings, ModelSpec, apply_lora, build_model, build_tokenizer, count_params,
                          load_tokenizer, param_counts, tokenizer_from_json, tokenizer_to_json, validate_model_id)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("rank", [2, 16])
def test_param_counts_equal_the_built_model(tiny_tokenizer, preset, rank):
    spec, lora = ModelSpec(preset), LoraSettings(rank=rank, alpha=2 * rank)
    model = apply_lora(build_model(spec, tiny_tokenizer, seed=0), spec, lora)
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and "modules_to_save" not in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert param_counts(spec, len(tiny_tokenizer), lora) == (total, trainable)


def test_presets_span_ten_times(tiny_tokenizer):
    sizes = [param_counts(ModelSpec(p), len(tiny_tokenizer), None)[0] for p in PRESETS]
    assert sizes == sorted(sizes) and sizes[-1] / sizes[0] >= 10


def test_lora_targets_every_linear_layer_and_presets_train_embeddings(tiny_tokenizer):
    spec = ModelSpec("tiny-s")
    model = apply_lora(build_model(spec, tiny_tokenizer, seed=0), spec, LoraSettings(4, 8))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for layer in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(layer in n and "lora_A" in n for n in names), layer
    assert any("embed_tokens" in n for n in names) and any("lm_head" in n for n in names)
    hub_like = ModelSpec("tiny-s", train_embeddings=False)
    frozen = apply_lora(build_model(hub_like, tiny_tokenizer, seed=0), hub_like, LoraSettings(4, 8))
    assert all("lora_" in n for n, p in frozen.named_parameters() if p.requires_grad)


def test_lora_targets_that_match_nothing_fail_clearly(tiny_tokenizer):
    spec = ModelSpec("tiny-xs", lora_targets=("c_attn", "q_proj"))
    with pytest.raises(FtrayInputError, match=r"\['c_attn'\] match no layer of model 'tiny-xs'.*q_proj"):
        apply_lora(build_model(spec, tiny_tokenizer, seed=0), spec, LoraSettings(4, 8, targets=spec.lora_targets))
    with pytest.raises(FtrayInputError, match="c_attn"):
        param_counts(spec, 512, LoraSettings(4, 8, targets=("c_attn",)))


def test_model_ids():
    for ok in ("tiny-xs", "Qwen/Qwen2.5-0.5B", "HuggingFaceTB/SmolLM2-135M"):
        validate_model_id(ModelSpec(ok))
    for bad in ("tiny-nope", "not a model", "../etc/passwd", "a/b/c"):
        with pytest.raises(FtrayInputError, match="unknown model"):
            validate_model_id(ModelSpec(bad))
    with pytest.raises(FtrayInputError, match="workers"):
        ModelSpec("tiny-xs", workers=0)
    assert ModelSpec("Qwen/Qwen2.5-0.5B").trust_remote_code is False


def test_tokenizer_is_deterministic_and_round_trips():
    texts = ["Sentence: Was Kalo Quest made by Tor Games?", "confirm(name[Kalo Quest])"] * 20
    a, b = build_tokenizer(texts, 300), build_tokenizer(texts, 300)
    assert tokenizer_to_json(a) == tokenizer_to_json(b)
    c = tokenizer_from_json(tokenizer_to_json(a))
    ids = c("confirm(name[Kalo Quest])", add_special_tokens=False)["input_ids"]
    assert c.decode(ids) == "confirm(name[Kalo Quest])"
    assert (c.eos_token_id, c.pad_token_id) == (a.eos_token_id, a.pad_token_id) and c.eos_token_id != c.pad_token_id


def test_local_folder_model_loads_without_remote_code(tiny_tokenizer, tmp_path):
    spec = ModelSpec("tiny-xs")
    build_model(spec, tiny_tokenizer, seed=0).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    local = ModelSpec(str(tmp_path))
    validate_model_id(local)
    tok = load_tokenizer(local, None)
    model = build_model(local, tok, seed=0)
    assert count_params(model)[0] == param_counts(spec, len(tiny_tokenizer), None)[0]


def test_a_training_step_touches_only_trainable_parameters(tiny_tokenizer):
    spec = ModelSpec("tiny-xs")
    model = apply_lora(build_model(spec, tiny_tokenizer, seed=0), spec, LoraSettings(4, 8))
    ids = torch.tensor([tiny_tokenizer("Sentence: hello", add_special_tokens=False)["input_ids"]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
