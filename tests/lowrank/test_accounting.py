"""Parameter and byte counts: tied tensors once, thin layers by the formula."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from basel_app.lowrank import (
    BaselLinear,
    LowRankLinear,
    compression_ratio,
    count_parameters,
    layer_ranks,
    linear_parameter_count,
    lowrank_parameter_count,
    state_bytes,
)
from tests.lowrank.helpers import make_linear


def test_tied_weights_counted_once(tied_llama, llama):
    head = tied_llama.lm_head.weight.numel()
    assert count_parameters(llama) == count_parameters(tied_llama) + head
    assert state_bytes(tied_llama) == 4 * count_parameters(tied_llama)  # float32; rotary inv_freq not persistent


def test_shared_storage_counted_once():
    first = nn.Linear(8, 8, bias=False)
    second = nn.Linear(8, 8, bias=False)
    second.weight = nn.Parameter(first.weight.data)  # a different Parameter over the same memory
    model = nn.Sequential(first, second)
    assert count_parameters(model) == 64 and state_bytes(model) == 256


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("n", "m", "k"), [(48, 80, 7), (80, 48, 1), (16, 48, 11)])
def test_counts_match_formulas(n, m, k, bias, gen):
    assert count_parameters(LowRankLinear(m, n, k, bias=bias)) == lowrank_parameter_count(n, m, k, bias)
    assert count_parameters(nn.Linear(m, n, bias=bias)) == linear_parameter_count(n, m, bias)
    assert lowrank_parameter_count(n, m, k, bias) == k * (n + m) + (n if bias else 0)


def test_state_bytes_counts_dtype_and_mask(gen):
    layer = BaselLinear.from_linear(make_linear(48, 80, True, gen).to(torch.bfloat16), additional_dim=4)
    r = layer.keep_mask.numel()
    params = 48 * r + 80 * r + r + 48 * 4 + 80 * 4 + 48
    assert count_parameters(layer) == params
    assert state_bytes(layer) == 2 * params + r  # bf16 parameters plus the bool mask


def test_compression_ratio():
    assert compression_ratio(700, 100) == 7.0
    with pytest.raises(ValueError):
        compression_ratio(700, 0)


def test_layer_ranks_describes_both_kinds(gen):
    reparam = BaselLinear.from_linear(make_linear(48, 80, True, gen), additional_dim=4)
    model = nn.Sequential(reparam, nn.ReLU(), LowRankLinear(48, 16, 5))
    ranks = layer_ranks(model)
    assert ranks["0"]["kind"] == "reparam" and ranks["0"]["rank"] == 48 + 4
    assert ranks["0"]["in_features"] == 80 and ranks["0"]["out_features"] == 48
    assert ranks["2"] == {"kind": "lowrank", "in_features": 48, "out_features": 16, "rank": 5,
                          "params": lowrank_parameter_count(16, 48, 5, True)}
