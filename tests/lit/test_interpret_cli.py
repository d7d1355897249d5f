"""`python -m basel_app.interpret`: a plain model's bases as tokens, what a finished run kept, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from basel_app.config.errors import ConfigError
from basel_app.config.schema import ModelConfig
from basel_app.interpret import interpret
from basel_app.lit.trainer import mixed_precision_dtype
from basel_app.lowrank import BaselLinear
from basel_app.lowrank.interpretation import linear_weight
from basel_app.models import load_compressed, load_model
from basel_app.pipeline import run

from ..conftest import CONF, REPO
from ..lowrank.helpers import REL_TOL, rel_err
from .test_pipeline import tiny_config


def interpret_config(out, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="interpret", overrides=["model=tiny_random", f"output_dir={out}", *overrides])
    return OmegaConf.to_object(cfg)


def test_reads_every_head_of_a_layer_and_a_linear_of_a_plain_model(tmp_path):
    report = interpret(interpret_config(tmp_path, "layer=1", "linears=[o_proj,gate_proj]", "bases=2", "tokens=3"))
    saved = json.loads((tmp_path / "interpret.json").read_text())
    assert saved["heads"] == report["heads"]
    # tiny_random: 4 query heads sharing 2 KV heads.
    assert [(s["layer"], s["head"], s["kv_head"]) for s in saved["heads"]] == [(1, 0, 0), (1, 1, 0), (1, 2, 1), (1, 3, 1)]
    assert [(s["layer"], s["linear"]) for s in saved["linears"]] == [(1, "o_proj"), (1, "gate_proj")]
    for section in saved["heads"] + saved["linears"]:
        assert [b["index"] for b in section["bases"]] == [0, 1]
        assert section["bases"][0]["singular_value"] >= section["bases"][1]["singular_value"] > 0
        assert all(len(b["tokens"]) == 3 for b in section["bases"])
    text = (tmp_path / "interpret.md").read_text()
    assert "## Attention heads" in text and "| layer | head | kv | basis |" in text


@torch.no_grad()
def test_a_finished_run_says_which_input_bases_each_layer_kept(compose_config, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(tiny_config(compose_config, out, "method.init=svd", "method.additional_dim=0", "method.post_finetune_epochs=0",
                    "eval.enabled=false"))
    kept = json.loads((out / "kept_bases.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(kept) == set(metrics["ranks"])
    # With no additional dimension and no post-fine-tuning, each compressed layer is exactly the kept input
    # bases at their relearned weights: Σ_i s̃_i u_i v_iᵀ over the recorded indices; a bf16-mixed run held (and
    # so recomposed) its frozen bases in bf16.
    original = load_model(ModelConfig(**metrics["config"]["model"])).model
    compressed, _ = load_compressed(out / "compressed_model")
    held = mixed_precision_dtype(metrics["precision"]) or torch.float32
    for name, record in kept.items():
        bases = BaselLinear.from_linear(original.get_submodule(name), additional_dim=0)
        index = torch.tensor(record["index"])
        u, v = (basis[:, index].to(held).float() for basis in (bases.U, bases.V))
        rebuilt = (u * torch.tensor(record["weight"])) @ v.T
        assert rel_err(linear_weight(compressed.get_submodule(name)), rebuilt) < REL_TOL, name
        assert len(index) < bases.singular_values.numel(), name  # keep_ratio 0.5 pruned something everywhere

    report = interpret(interpret_config(tmp_path / "unused", f"run_dir={out}", "layer=0", "bases=2", "tokens=3"))
    assert (out / "interpret.md").is_file() and (out / "interpret.json").is_file()
    sections = report["kept"]["layers"]
    assert [s["linear"] for s in sections] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"]
    for section in sections:
        record = kept[f"model.layers.0.{'self_attn' if section['linear'][0] in 'qkvo' else 'mlp'}.{section['linear']}"]
        weights = dict(zip(record["index"], record["weight"]))
        assert section["kept"] == len(weights) and [b["index"] for b in section["kept_bases"]] == record["index"]
        strongest = sorted(weights, key=lambda i: -abs(weights[i]))[:2]
        assert [b["index"] for b in section["most_kept"]] == strongest
        assert [b["weight"] for b in section["most_kept"]] == [weights[i] for i in strongest]
        assert [b["index"] for b in section["most_pruned"]] == [i for i in range(section["rank"]) if i not in weights][:2]
        assert all(len(b["tokens"]) == 3 for b in section["most_kept"] + section["most_pruned"])
    assert "## What the run kept of the input's bases" in (out / "interpret.md").read_text()

    # Bases that are not the input's plain SVD (here: as if method.init=whitened) are listed without tokens,
    # and the input model is not loaded for them.
    metrics["config"]["method"]["init"] = "whitened"
    (out / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setattr("basel_app.interpret.load_model", None)
    report = interpret(interpret_config(tmp_path / "unused", f"run_dir={out}", "layer=1", "bases=2", "ov=false"))
    assert report["kept"]["note"].startswith("tokens omitted") and len(report["kept"]["layers"]) == 7
    for section in report["kept"]["layers"]:
        assert all(set(b) == {"index", "singular_value", "weight"} for b in section["most_kept"])
        assert all(set(b) == {"index", "singular_value"} for b in section["most_pruned"])


@pytest.mark.parametrize("override, message", [
    ("linears=[lm_head]", "linears='lm_head' is not allowed; choose one of: q_proj, k_proj, v_proj, o_proj, "
                          "gate_proj, up_proj, down_proj"),
    ("bases=0", "bases=0 is not allowed; use at least 1"),
    ("run_dir=/nonexistent", "run_dir='/nonexistent' holds no metrics.json; give the directory of a finished run"),
])
def test_bad_settings_are_refused_by_the_config(tmp_path, override, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        interpret_config(tmp_path, override)


@pytest.mark.parametrize("override, message", [
    ("layer=2", "layer=2 is out of range; tiny_random has layers 0-1"),
    ("head=4", "head=4 is out of range; tiny_random has heads 0-3"),
])
def test_an_unknown_layer_or_head_fails_before_the_model_loads(tmp_path, monkeypatch, override, message):
    def no_loading(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("basel_app.interpret.load_any_model", no_loading)
    with pytest.raises(ConfigError, match=f"^{message}$"):
        interpret(interpret_config(tmp_path, override))
    assert not (tmp_path / "interpret.json").exists()


def test_the_command_prints_a_bad_value_as_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "basel_app.interpret", f"hydra.run.dir={tmp_path}", "model=tiny_random", "layer=2"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    output = (result.stdout + result.stderr).strip().splitlines()
    assert len(output) == 1 and output[0].endswith("layer=2 is out of range; tiny_random has layers 0-1"), output
