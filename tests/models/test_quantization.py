"""quantize=int8|int4: every linear but the head quantized (thin factors included), saved without pickles,
and reloaded to the same logits bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from basel_app.lowrank import state_bytes
from basel_app.lowrank.thin import LowRankLinear
from basel_app.models import load_compressed, save_compressed
from basel_app.models.compressed_io import weight_bytes_on_disk
from basel_app.models.quantization import METADATA_KEY, quantize_linears

from ..tiny_llama import tiny_llama_config
from .tiny_models import RANKS, factor, make_llama


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids).logits


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_model_reloads_to_the_same_logits(tmp_path, tokenizer, input_ids, scheme, tied):
    model = factor(make_llama(tiny_llama_config(len(tokenizer), tokenizer, tie_word_embeddings=tied)), RANKS)
    float_logits = logits(model, input_ids)
    float_dir = save_compressed(model, tokenizer, tmp_path / "float")

    names = quantize_linears(model, scheme)
    quantized_logits = logits(model, input_ids)
    saved = save_compressed(model, tokenizer, tmp_path / scheme)
    loaded, _ = load_compressed(saved)

    assert torch.equal(logits(loaded, input_ids), quantized_logits)
    assert json.loads((saved / "config.json").read_text())[METADATA_KEY] == scheme
    assert not [p for p in saved.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    # Both thin factors of every LowRankLinear are quantized; the output head is not.
    for name in RANKS:
        assert {f"{name}.down", f"{name}.up"} <= set(names)
        thin = loaded.get_submodule(name)
        assert isinstance(thin, LowRankLinear)
        assert type(thin.down.weight) is not nn.Parameter and type(thin.up.weight) is not nn.Parameter
    assert "lm_head" not in names and type(loaded.lm_head.weight) is nn.Parameter
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    # The quantized model is the float one up to the rounding of its weights.
    error = (quantized_logits - float_logits).abs().max() / float_logits.abs().max()
    assert 0 < error < (0.02 if scheme == "int8" else 0.2)
    # Linear weights are stored as one byte each (int4 too: torchao keeps CPU int4 unpacked in int8).
    with safe_open(saved / "model.safetensors", framework="pt") as stored:
        tensors = {k: stored.get_tensor(k) for k in stored.keys()}
    data = [t for k, t in tensors.items() if k.endswith("_weight_qdata")]
    assert len(data) == len(names) and all(t.dtype == torch.int8 for t in data)
    # The model's state counts what a quantized weight holds (int8 data, scales), not numel x float32.
    assert state_bytes(loaded) == sum(t.numel() * t.element_size() for t in tensors.values())
    assert weight_bytes_on_disk(saved) < 0.8 * weight_bytes_on_disk(float_dir)


def test_a_quantized_model_refuses_a_dtype_and_a_scheme_that_is_not_one(tmp_path, lowrank_model, tokenizer):
    with pytest.raises(ValueError, match=r"quantize='int3' is not a quantization; allowed: \['int8', 'int4'\]"):
        quantize_linears(lowrank_model, "int3")
    quantize_linears(lowrank_model, "int8")
    saved = save_compressed(lowrank_model, tokenizer, tmp_path / "int8")
    with pytest.raises(ValueError, match="is quantized .int8.; load it with dtype=None"):
        load_compressed(saved, dtype=torch.bfloat16)
