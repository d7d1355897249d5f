"""Every method through the whole pipeline on the tiny random Llama: the size budget is hit, the
record says what produced it, and an impossible budget fails before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from basel_app.config.schema import ConfigError
from basel_app.methods import one_shot
from basel_app.models import load_compressed
from basel_app.pipeline import run

from .test_pipeline import tiny_config

METHODS = ["basel", "bsi", "svd", "fwsvd", "svd_llm", "asvd"]
SMALL_BSI = ("method.importance.hessian=hutchinson", "method.importance.batches=1", "method.importance.probes=2")


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
        assert saved["score"] == "second"  # scale=cpu's BSI (conf/scale_method/cpu_bsi.yaml)
        assert len(saved["importance"]) == 4  # one record per pruning event
        assert all(r["hessian_stderr_mean"] > 0 for r in saved["importance"])
        # score=second's spread is diag(H)'s alone, which the probes measure even on one batch (SMALL_BSI).
        assert all(r["score_signal_to_noise_median"] > 0 for r in saved["importance"])


@pytest.mark.parametrize("hessian, cost", [("fisher", 2), ("gnb", 4)])
def test_bsi_with_outer_product_curvature_records_its_samples_and_cost(compose_config, tmp_path, hessian, cost):
    metrics = run(tiny_config(compose_config, tmp_path, "method=bsi", "method.compression_ratio=2",
                              "eval.enabled=false", "method.importance.batches=2",
                              f"method.importance.hessian={hessian}", "method.importance.ema=0.5"))
    records = metrics["importance"]
    assert len(records) == 4 and [r["event"] for r in records] == [1, 2, 3, 4]
    assert all(r["gradient_evaluations"] == cost and r["samples"] == 8 for r in records)  # 2 batches of 4
    assert all(r["hessian_negative_fraction"] == 0 and r["score_signal_to_noise_median"] > 0 for r in records)


def test_bsi_global_allocation_hits_the_target_with_ranks_that_differ_by_layer(compose_config, tmp_path):
    metrics = run(tiny_config(compose_config, tmp_path, "method=bsi", "method.compression_ratio=2",
                              "method.allocation=global", "eval.enabled=false", "method.importance.batches=2",
                              "method.importance.probes=2"))
    assert abs(metrics["compression_ratio"] / 2 - 1) <= 0.02
    assert all(r["score_signal_to_noise_median"] >= 0 for r in metrics["importance"])  # measured with M = 2
    assert metrics["budget"]["allocation"] == "global"
    fractions = {round(r["rank"] / min(r["in_features"], r["out_features"]), 2) for r in metrics["ranks"].values()}
    assert len(fractions) > 2


def test_keep_ratio_budget_and_an_ablation_are_recorded(compose_config, tmp_path):
    metrics = run(tiny_config(compose_config, tmp_path, "method=bsi", "ablation=[score_first,free_bases]",
                              "method.compression_ratio=null", "eval.enabled=false", "method.post_finetune_epochs=0", *SMALL_BSI))
    assert metrics["budget"] == {**metrics["budget"], "kind": "keep_ratio", "keep_ratio": 0.5, "target_params": None}
    assert (metrics["score"], metrics["ablation"]) == ("first", ["free_bases", "score_first"])
    assert metrics["config"]["method"]["free_bases"] is True


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (("method.compression_ratio=50",), "method.compression_ratio=50.0 asks for"),
        (("method=svd", "method.compression_ratio=null", "method.target_params=100000000"), "not fewer than the model's"),
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


def test_pre_finetuning_trains_the_input_model_before_truncation_and_resumes_from_its_boundary(
    compose_config, tmp_path, monkeypatch
):
    """Stage 0: the one-shot method factors the fine-tuned weights, not the input ones; a crash after stage 0
    resumes from its saved model without fine-tuning again, and ends where an uninterrupted run ends."""
    overrides = ("method=svd", "method.compression_ratio=1.5", "method.pre_finetune_epochs=1",
                 "method.pre_finetune_lr=1e-3", "method.post_finetune_epochs=0", "eval.enabled=false")
    factored = []
    original_factorize = one_shot.factorize_layers

    def record(method, model, targets, *args, **kwargs):
        factored.append({name: layer.weight.detach().clone() for name, layer in targets.items()})
        return original_factorize(method, model, targets, *args, **kwargs)

    monkeypatch.setattr("basel_app.pipeline.factorize_layers", record)
    reference = run(tiny_config(compose_config, tmp_path / "uninterrupted", *overrides))
    assert "pre_finetune" in reference["wall_time_s"]
    without = run(tiny_config(compose_config, tmp_path / "no_stage_0", *overrides[:-4], "method.post_finetune_epochs=0",
                              "eval.enabled=false"))
    assert "pre_finetune" not in without["wall_time_s"]
    tuned, plain = factored
    assert all(not torch.equal(tuned[name], plain[name]) for name in plain)  # the weights it truncated had trained

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash in stage 1")

    monkeypatch.setattr("basel_app.pipeline.factorize_layers", crash)
    out = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_config(compose_config, out, *overrides))
    assert (out / "checkpoints" / "pre_finetuned" / "config.json").exists()
    assert not (out / "checkpoints" / "pre_finetune").exists()  # its checkpoints gave way to the saved model

    monkeypatch.setattr("basel_app.pipeline.factorize_layers", original_factorize)
    finetunes = []
    monkeypatch.setattr("basel_app.pipeline.finetune", lambda *a, **k: finetunes.append(1))
    resumed = run(tiny_config(compose_config, out, *overrides))
    assert not finetunes  # stage 0 was not redone (and stage 2 is off)
    assert resumed["ranks"] == reference["ranks"]
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    logits = [load_compressed(d / "compressed_model")[0](ids).logits for d in (tmp_path / "uninterrupted", out)]
    torch.testing.assert_close(logits[0], logits[1])


def test_a_multirun_over_methods_lands_in_one_sweep_dir(tmp_path):
    """`-m method=svd,asvd`: both jobs and the sweep's own record under one dir, one subdir per job."""
    result = subprocess.run(
        [sys.executable, "-m", "basel_app", "-m", "method=svd,asvd", "model=tiny_random", "logger=csv",
         f"cache.dir={tmp_path / 'cache'}",
         "task.max_train_samples=8", "task.max_eval_samples=4", "method.compression_ratio=1.1",
         "method.post_finetune_epochs=0", "eval.enabled=false", "trainer.enable_progress_bar=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "multirun").iterdir())
    assert len(sweeps) == 1
    assert (sweeps[0] / "multirun.yaml").exists()
    methods = {json.loads(m.read_text())["method"]: m.parent.name for m in sweeps[0].glob("*/metrics.json")}
    assert methods == {"svd": "0_svd", "asvd": "1_asvd"}


def test_basel_on_whitened_bases_starts_from_svd_llms_spectra_and_records_its_init(compose_config, tmp_path):
    quick = ("method.compression_ratio=2", "eval.enabled=false", "method.post_finetune_epochs=0")
    run(tiny_config(compose_config, tmp_path / "svd_llm", "method=svd_llm", *quick))
    metrics = run(tiny_config(compose_config, tmp_path / "basel", "method=basel", "method.init=whitened", *quick))
    assert metrics["init"] == "whitened" and metrics["config"]["method"]["init"] == "whitened"
    assert isinstance(metrics["conditioning"], dict)
    assert abs(metrics["compression_ratio"] / 2 - 1) <= 0.02
    # The same calibration batches and factorisation: s̃ at step 0 is SVD-LLM's σ, layer by layer.
    spectra = {m: json.loads((tmp_path / m / "spectra.json").read_text())["decomposition"] for m in ("svd_llm", "basel")}
    assert spectra["basel"].keys() == spectra["svd_llm"].keys()
    for name, values in spectra["svd_llm"].items():
        torch.testing.assert_close(torch.tensor(spectra["basel"][name]), torch.tensor(values), rtol=1e-5, atol=1e-6)
