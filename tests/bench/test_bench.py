"""`python -m basel_app.bench` on the tiny random Llama: every sub-benchmark runs in seconds, writes its JSON,
and what it measures holds the invariants that make the numbers meaningful."""

from __future__ import annotations

import json

import pytest
import torch

from basel_app.bench.__main__ import main
from basel_app.bench.measure import PeakMemory, alternate, summary
from basel_app.methods.importance import ESTIMATOR_COSTS

TINY = ["--model", "tiny_random", "--repeats", "1", "--warmup", "0"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bench(name: str, tmp_path, *settings: str) -> dict:
    main([name, "--out", str(tmp_path), *TINY, *settings])
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["machine"]["torch"] == torch.__version__
    return result


def test_summary_and_alternation_time_every_variant_in_turn():
    calls = []
    measured = alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert len(measured["a"]["seconds"]["samples"]) == 2
    assert summary([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "samples": [3.0, 1.0, 2.0]}


def test_peak_memory_sees_a_transient_allocation():
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
        del block
    assert memory.peak >= 48 * 2**20


def test_generation_static_cache_keeps_the_fp32_tokens(tmp_path, capsys):
    result = bench("generation", tmp_path, "--new-tokens", "12")
    variants = result["variants"]
    assert set(variants) == {"dynamic/fp32", "static/fp32", "dynamic/bf16", "static/bf16", "dynamic/bf16/frozen",
                             "weights only/fp32", "weights only/bf16"}
    assert variants["static/fp32"]["rows_identical_to_dynamic_fp32"] == result["settings"]["batch"]
    assert variants["dynamic/bf16/frozen"]["first_difference_chars"] == variants["dynamic/bf16"]["first_difference_chars"]
    assert variants["static/fp32"]["new_tokens_per_s"] > 0
    assert "static/bf16" in capsys.readouterr().out
    # the weight stream alone: every linear weight once per new token, faster than any whole decode step
    assert variants["weights only/fp32"]["weight_gb_per_s"] > 0
    assert variants["weights only/fp32"]["seconds"]["median"] < variants["dynamic/fp32"]["seconds"]["median"]


def test_training_step_counts_fewer_flops_when_fewer_bases_are_kept(tmp_path):
    result = bench("training_step", tmp_path, "--tokens", "16", "--kept", "1,0.25")
    full, quarter = (group["variants"] for group in result["groups"])
    assert quarter["factored"]["flops"] < full["factored"]["flops"]
    # A run's own step mixes the paths: at 4x16 tokens `cheaper_path` (forward multiply-adds) sends the tiny
    # attention linears through W̃ and the MLP ones through the factors, so its forward + backward count
    # lies between the all-factored and the all-materialised one.
    assert full["factored"]["flops"] < full["keep_step"]["flops"] < full["materialised"]["flops"]
    assert quarter["dense"]["flops"] == full["dense"]["flops"]  # the dense model is not pruned
    assert result["groups"][1]["kept_bases"] < result["groups"][0]["kept_bases"]
    # the dense model trains every parameter, so it holds AdamW state for all of them
    assert full["dense"]["kept_bytes"] > 3 * 4 * 90_000


def test_recomposition_routes_agree(tmp_path):
    result = bench("recomposition", tmp_path)
    whole = result["whole_model"]
    assert len(result["layers"]) == 14  # 7 linears x 2 layers
    assert whole["max_weight_difference"] < 1e-10 and whole["max_singular_value_difference"] < 1e-10


def test_bsi_overhead_reports_each_estimators_cost(tmp_path):
    result = bench("bsi_overhead", tmp_path, "--tokens", "16", "--batches", "2", "--probes", "1")
    for name, cost in ESTIMATOR_COSTS.items():
        assert result["variants"][name]["gradient_evaluations"] == cost(2, 1)
        assert result["variants"][name]["bound_steps"] == pytest.approx((cost(2, 1) + 1) * 1.1)


def test_inference_compressed_models_have_the_asked_size(tmp_path):
    result = bench("inference", tmp_path, "--ratios", "2", "--prompt-tokens", "8", "--new-tokens", "4")
    models = result["models"]
    assert models["dense"]["parameters"] / models["svd 2x"]["parameters"] == pytest.approx(2.0, rel=0.02)
    assert models["svd 2x"]["state_bytes"] < models["dense"]["state_bytes"]
    assert models["dense"]["prefill_tokens_per_s"] > 0
    assert 0 < models["dense"]["gemm_time_share"] < 1
    # every block linear becomes two thin products: about twice the GEMMs per token (lm_head stays one)
    assert models["svd 2x"]["gemm_calls_per_token"] > 1.5 * models["dense"]["gemm_calls_per_token"]
    assert models["dense"]["decode_tokens_per_s"] is None or models["dense"]["decode_tokens_per_s"] > 0
    assert models["svd 2x"]["weights_only_tokens_per_s"] > 0 and models["svd 2x int8"]["weights_only_tokens_per_s"] is None
    # int8 (the default `quantize`) of each: the same parameters in about a quarter of the linear weights' bytes
    assert set(models) == {"dense", "svd 2x", "svd 2x ranks%8", "dense int8", "svd 2x int8"}
    assert models["svd 2x ranks%8"]["parameters"] <= models["dense"]["parameters"] / 2
    for name in ("dense", "svd 2x"):
        assert models[f"{name} int8"]["parameters"] == models[name]["parameters"]
        assert models[f"{name} int8"]["state_bytes"] < 0.75 * models[name]["state_bytes"]


@pytest.mark.parametrize("init", ["svd", "whitened"])
def test_decomposition_computes_on_a_miss_and_only_loads_on_a_hit(tmp_path, init):
    result = bench("decomposition", tmp_path, "--inits", init, "--calibration-batches", "2")
    measured = result["inits"][init]
    assert measured["layers"] == 14  # scale=cpu: 7 linear types x 2 layers
    computed = measured["entries_computed"]
    assert computed["off"] == computed["miss"] > 0 and computed["hit"] == 0
    assert measured["entry_bytes"] > 0
    assert measured["miss_over_hit"] == pytest.approx(measured["miss"]["median"] / measured["hit"]["median"])
