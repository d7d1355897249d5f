"""Every method through the whole pipeline on the tiny random Llama: the size budget is hit, the
record says what produced it, and an impossible budget fails before any work."""

from __future__ import annotations

import json

import pytest

from basel_app.config.schema import ConfigError
from basel_app.pipeline import run

from .test_pipeline import tiny_config

METHODS = ["basel", "bsi", "svd", "fwsvd", "svd_llm", "asvd"]
SMALL_BSI = ("method.importance.batches=1", "method.importance.probes=2")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_lands_within_two_percent_of_compression_ratio_2(compose_config, tmp_path, method):
    metrics = run(tiny_config(compose_config, tmp_path, f"method={method}", "method.compression_ratio=2",
                              "eval.enabled=false", *SMALL_BSI))
    target = metrics["params_original"] / 2
    assert abs(metrics["params_compressed"] / target - 1) <= 0.02
    assert metrics["params_compressed"] <= target  # met from below
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["method"] == method
    assert saved["scorer"] == {"basel": "magnitude", "bsi": "taylor"}.get(method)
    assert saved["budget"]["kind"] == "params" and saved["budget"]["target_compression_ratio"] == 2.0
    assert saved["budget"]["achieved_params"] == saved["params_compressed"]
    assert saved["ablation"] == ["none"]
    assert {r["kind"] for r in saved["ranks"].values()} <= {"lowrank", "dense"}
    if method == "bsi":
        assert saved["score"] == "both"
        assert len(saved["importance"]) == 4  # one record per pruning event
        assert all(r["hessian_stderr_mean"] > 0 for r in saved["importance"])


def test_bsi_global_allocation_hits_the_target_with_ranks_that_differ_by_layer(compose_config, tmp_path):
    metrics = run(tiny_config(compose_config, tmp_path, "method=bsi", "method.compression_ratio=2",
                              "method.allocation=global", "eval.enabled=false", *SMALL_BSI))
    assert abs(metrics["compression_ratio"] / 2 - 1) <= 0.02
    assert metrics["budget"]["allocation"] == "global"
    fractions = {round(r["rank"] / min(r["in_features"], r["out_features"]), 2) for r in metrics["ranks"].values()}
    assert len(fractions) > 2


def test_keep_ratio_budget_and_an_ablation_are_recorded(compose_config, tmp_path):
    metrics = run(tiny_config(compose_config, tmp_path, "method=bsi", "ablation=[score_first,free_bases]",
                              "eval.enabled=false", "method.post_finetune_epochs=0", *SMALL_BSI))
    assert metrics["budget"] == {**metrics["budget"], "kind": "keep_ratio", "keep_ratio": 0.5, "target_params": None}
    assert (metrics["score"], metrics["ablation"]) == ("first", ["free_bases", "score_first"])
    assert metrics["config"]["method"]["free_bases"] is True


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (("method.compression_ratio=50",), "method.compression_ratio=50.0 asks for"),
        (("method=svd", "method.target_params=100000000"), "not fewer than the model's"),
    ],
)
def test_an_unreachable_budget_fails_before_any_decomposition(compose_config, tmp_path, monkeypatch, overrides,
                                                              expected):
    calls = []
    monkeypatch.setattr("basel_app.pipeline.reparameterize", lambda *a, **k: calls.append("reparameterize"))
    monkeypatch.setattr("basel_app.pipeline.factorize_layers", lambda *a, **k: calls.append("factorize"))
    with pytest.raises(ConfigError, match=expected) as err:
        run(tiny_config(compose_config, tmp_path, *overrides))
    assert "\n" not in str(err.value)
    assert not calls
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()
