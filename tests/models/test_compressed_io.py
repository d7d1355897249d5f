"""save_compressed / load_compressed: the boundary artifact between the two training stages.

Invariant: a compressed model survives save -> load bit for bit (float32 logits torch.equal), through our
loader and through plain AutoModelForCausalLM, and the directory holds nothing that needs unpickling.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from basel_app.config.errors import CorruptArtifact, NonFiniteError
from basel_app.files import sha256_of
from basel_app.lowrank.thin import LowRankLinear
from basel_app.models import LowRankLlamaForCausalLM, load_compressed, read_metadata, save_compressed
from basel_app.models.compressed_io import METADATA_FILE
from basel_app.models.lowrank_llama import MODEL_TYPE

from .tiny_models import RANKS, factor, make_llama


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids).logits


@pytest.mark.parametrize("attention_bias", [False, True])
def test_round_trip_gives_identical_logits(tmp_path, tiny_config, tokenizer, input_ids, attention_bias):
    tiny_config.attention_bias = attention_bias
    model = factor(make_llama(tiny_config), RANKS)
    expected = logits(model, input_ids)

    path = save_compressed(model, tokenizer, tmp_path / "compressed")
    loaded, loaded_tokenizer = load_compressed(path)
    assert isinstance(loaded, LowRankLlamaForCausalLM) and not loaded.training
    assert torch.equal(logits(loaded, input_ids), expected)
    assert loaded_tokenizer.encode("round trip") == tokenizer.encode("round trip")

    auto = AutoModelForCausalLM.from_pretrained(path).eval()  # no trust_remote_code: the type is registered
    assert type(auto) is LowRankLlamaForCausalLM
    assert torch.equal(logits(auto, input_ids), expected)
    for name, rank in RANKS.items():
        module = auto.get_submodule(name)
        assert isinstance(module, LowRankLinear) and module.rank == rank
        assert (module.up.bias is not None) == (attention_bias and "self_attn" in name)


def test_directory_is_safetensors_only_and_config_records_every_rank(tmp_path, lowrank_model, tokenizer):
    path = save_compressed(lowrank_model, tokenizer, tmp_path / "m", metadata={"method": "basel", "ratio": 0.5})
    names = {p.name for p in path.iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == MODEL_TYPE
    assert config["lowrank_ranks"] == RANKS
    assert read_metadata(path) == {"method": "basel", "ratio": 0.5}
    with safe_open(path / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert "model.layers.0.self_attn.q_proj.down.weight" in keys
    assert "model.layers.0.self_attn.q_proj.weight" not in keys  # saved thin, not re-densified


def test_tied_embeddings_stay_tied(tmp_path, lowrank_model, tokenizer):
    assert lowrank_model.lm_head.weight is lowrank_model.model.embed_tokens.weight
    loaded, _ = load_compressed(save_compressed(lowrank_model, tokenizer, tmp_path / "m"))
    assert loaded.config.tie_word_embeddings
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_factored_head_is_saved_untied(tmp_path, lowrank_model, tokenizer, input_ids):
    model = factor(lowrank_model, {"lm_head": 9}, seed=2)
    expected = logits(model, input_ids)
    loaded, _ = load_compressed(save_compressed(model, tokenizer, tmp_path / "m"))
    assert not loaded.config.tie_word_embeddings
    assert loaded.config.lowrank_ranks["lm_head"] == 9
    assert torch.equal(logits(loaded, input_ids), expected)


def test_dtype_is_kept(tmp_path, tiny_config, tokenizer, input_ids):
    model = factor(make_llama(tiny_config, dtype=torch.bfloat16), RANKS)
    expected = logits(model, input_ids)
    loaded, _ = load_compressed(save_compressed(model, tokenizer, tmp_path / "m"))
    assert loaded.dtype == torch.bfloat16
    assert torch.equal(logits(loaded, input_ids), expected)


def test_failed_save_leaves_no_directory(tmp_path, lowrank_model, tokenizer, monkeypatch):
    def crash(*args, **kwargs):  # the weights are already written when the tokenizer is saved
        raise OSError("disk full (injected)")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", crash)
    with pytest.raises(OSError, match="injected"):
        save_compressed(lowrank_model, tokenizer, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary directory is left


def test_refuses_to_overwrite_unless_asked(tmp_path, lowrank_model, tokenizer):
    path = save_compressed(lowrank_model, tokenizer, tmp_path / "m", metadata={"run": 1})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_compressed(lowrank_model, tokenizer, path, metadata={"run": 2})
    assert read_metadata(path) == {"run": 1}
    save_compressed(lowrank_model, tokenizer, path, metadata={"run": 2}, overwrite=True)
    assert read_metadata(path) == {"run": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # the old copy is gone


def test_saves_into_an_existing_empty_directory(tmp_path, lowrank_model, tokenizer):
    (tmp_path / "m").mkdir()
    assert (save_compressed(lowrank_model, tokenizer, tmp_path / "m") / "model.safetensors").is_file()


def test_load_rejects_what_is_not_a_compressed_model(tmp_path, tiny_config):
    with pytest.raises(FileNotFoundError, match="save_compressed"):
        load_compressed(tmp_path / "missing")
    make_llama(tiny_config).save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match="'llama'.*basel_lowrank_llama"):
        load_compressed(tmp_path / "dense")


def test_a_loaded_compressed_model_saves_again(tmp_path, lowrank_model, tokenizer, input_ids):
    expected = logits(lowrank_model, input_ids)
    first, _ = load_compressed(save_compressed(lowrank_model, tokenizer, tmp_path / "a"))
    second, _ = load_compressed(save_compressed(first, tokenizer, tmp_path / "b"))
    assert second.config.lowrank_ranks == RANKS
    assert torch.equal(logits(second, input_ids), expected)


def test_unsupported_modules_are_refused(tmp_path, lowrank_model, tokenizer):
    lowrank_model.model.layers[0].mlp.up_proj = torch.nn.Sequential(torch.nn.Linear(64, 128, bias=False))
    with pytest.raises(ValueError, match="recompose first"):
        save_compressed(lowrank_model, tokenizer, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def flip_one_byte(file, offset: int = -100) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_a_flipped_byte_in_any_saved_file_is_named_and_the_model_refused(tmp_path, lowrank_model, tokenizer, name):
    path = save_compressed(lowrank_model, tokenizer, tmp_path / "compressed")
    flip_one_byte(path / name, offset=-2)
    with pytest.raises(CorruptArtifact, match=f"{path / name} is corrupt") as caught:
        load_compressed(path)
    assert "\n" not in str(caught.value)


def test_a_tensor_missing_from_the_weights_is_an_error_not_a_random_init(tmp_path, lowrank_model, tokenizer):
    path = save_compressed(lowrank_model, tokenizer, tmp_path / "compressed")
    weights = load_file(path / "model.safetensors")
    dropped = sorted(weights)[0]
    del weights[dropped]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    metadata = json.loads((path / METADATA_FILE).read_text())  # a consistent checksum: only the keys are wrong
    metadata["sha256"]["model.safetensors"] = sha256_of(path / "model.safetensors")
    (path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(CorruptArtifact, match=f"missing_keys.*{dropped}"):
        load_compressed(path)


def test_weights_holding_nan_are_never_saved(tmp_path, lowrank_model, tokenizer):
    name, tensor = next((n, t) for n, t in lowrank_model.named_parameters() if "layers.1" in n)
    with torch.no_grad():
        tensor.view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match=f"tensor {name} holds NaN"):
        save_compressed(lowrank_model, tokenizer, tmp_path / "compressed")
    assert not list(tmp_path.iterdir())  # not even a partial directory
