"""benchmarks/quality.py end to end on the tiny random Llama: two methods at one ratio plus the dense
references, two points at a time, give the table (in the planned order), JSON and plot, and a second
invocation runs nothing again."""

from __future__ import annotations

import importlib.util
import json
import sys

from ..conftest import REPO

TINY = ["--model", "tiny_random", "--methods", "svd", "asvd", "--ratios", "1.5", "--max-train-samples", "8",
        "--validation-samples", "4", "--eval-items", "3", "--jobs", "2",  # two points at a time, one thread each
        "--", "task.max_length=512", "method.calibration_batches=2"]


def load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("quality", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "quality", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_end_to_end_and_resumes(tmp_path, capsys, monkeypatch):
    quality = load_script(monkeypatch)
    results = quality.main(["--out", str(tmp_path), *TINY])
    rows = {r["name"]: r for r in results["rows"]}
    assert list(rows) == ["dense", "dense+finetune", "svd_x1.5", "asvd_x1.5"]
    assert rows["dense"]["params"] == rows["dense+finetune"]["params"]
    assert rows["dense"]["gsm8k_loss"] != rows["dense+finetune"]["gsm8k_loss"]  # fine-tuning changed the model
    for name in ("svd_x1.5", "asvd_x1.5"):
        assert 1.5 <= rows[name]["compression_ratio"] < 1.6
        assert rows[name]["params"] < rows["dense"]["params"]
    for r in rows.values():
        assert all(r[key] > 0 for key in ("gsm8k_loss", "math500_loss", "validation_loss"))
    for name, run in results["runs"].items():
        assert run["status"] == "done"
        assert (tmp_path / name / "command.txt").read_text().strip() == run["command"]
    table = (tmp_path / "quality.md").read_text()
    assert "| svd_x1.5 | svd | 1.5x |" in table and " ".join(results["shared_overrides"]) in table
    assert json.loads((tmp_path / "quality.json").read_text())["rows"] == results["rows"]
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"

    capsys.readouterr()
    again = quality.main(["--out", str(tmp_path), *TINY])
    assert capsys.readouterr().out.count("[skip]") == 3
    assert again["rows"] == results["rows"]


def test_every_ablation_variant_is_a_valid_run_config(monkeypatch, compose_config):
    """A typo in an ablation's overrides would otherwise surface only after hours of the other variants."""
    from omegaconf import OmegaConf

    quality = load_script(monkeypatch)
    for name, ablation in quality.ABLATIONS.items():
        for method in ablation.methods:
            for variant, overrides in ablation.variants.items():
                cfg = OmegaConf.to_object(compose_config(f"method={method}", "method.compression_ratio=2", *overrides))
                assert cfg.method.name == method, (name, variant)
