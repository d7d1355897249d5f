"""`python -m basel_app.evaluate`: any model, including a compressed_model/ dir, on a task's benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from basel_app.allocator import ENV, find_tcmalloc
from basel_app.pipeline import run

from ..conftest import REPO
from .test_pipeline import tiny_config


def evaluate_cli(out, *overrides, env=None):
    return subprocess.run(
        [sys.executable, "-m", "basel_app.evaluate", f"hydra.run.dir={out}", "model=tiny_random", "eval.limit=2",
         "eval.max_new_tokens=4", "trainer.enable_progress_bar=false", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )


def without_preload() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ENV)}


def test_evaluates_a_model_from_the_model_group(tmp_path):
    result = evaluate_cli(tmp_path, "task=math", env=without_preload())
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["task"] == "math" and metrics["model"]["source"] == "random"
    # the command line restarted itself under tcmalloc where it is installed (basel_app.allocator)
    assert metrics["allocator"] == ("tcmalloc" if find_tcmalloc() else "system malloc")
    assert set(metrics["eval"]["benchmarks"]) == {"gsm8k", "math"}
    gsm8k = metrics["eval"]["benchmarks"]["gsm8k"]
    assert gsm8k["n"] == 2 and gsm8k["settings"]["batch_size"] == 8
    assert 1 <= gsm8k["decode_steps"] <= 4 and gsm8k["new_tokens"] <= 2 * 4  # one batch, eval.max_new_tokens=4


def test_evaluates_a_compressed_model_directory(compose_config, tmp_path):
    run(tiny_config(compose_config, tmp_path / "run", "method.post_finetune_epochs=0", "eval.enabled=false"))
    result = evaluate_cli(tmp_path / "eval", f"model.path={tmp_path / 'run' / 'compressed_model'}",
                          "eval.benchmarks=[gsm8k]", env={**without_preload(), ENV: "system"})
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["model"]["source"] == "compressed" and metrics["model"]["method"] == "basel"
    assert metrics["allocator"] == "system malloc"  # BASEL_APP_MALLOC=system keeps glibc's
    assert list(metrics["eval"]["benchmarks"]) == ["gsm8k"]

    # The same model with int8 weights: one more line of config, nearly the same loss.
    result = evaluate_cli(tmp_path / "int8", f"model.path={tmp_path / 'run' / 'compressed_model'}",
                          "eval.benchmarks=[]", "quantize=int8")
    assert result.returncode == 0, result.stderr[-2000:]
    on_int8 = json.loads((tmp_path / "int8" / "metrics.json").read_text())
    assert on_int8["quantize"] == "int8" and metrics["quantize"] == "none"
    assert on_int8["eval"]["answer_loss"] == pytest.approx(metrics["eval"]["answer_loss"], rel=0.02)
    assert on_int8["eval"]["answer_loss"] != metrics["eval"]["answer_loss"]


@pytest.mark.parametrize(("override", "message"), [
    ("eval.benchmarks=[gsm9k]", "eval.benchmarks='gsm9k' is not allowed"),
    ("quantize=int3", "quantize='int3' is not allowed; choose one of: none, int8, int4"),
])
def test_rejects_a_bad_value_before_loading(tmp_path, override, message):
    result = evaluate_cli(tmp_path, override)
    assert result.returncode == 2
    assert message in result.stdout + result.stderr


def test_code_task_runs_generated_programs_in_the_sandbox(tmp_path):
    result = evaluate_cli(tmp_path, "task=code")
    assert result.returncode == 0, result.stderr[-2000:]
    benchmarks = json.loads((tmp_path / "metrics.json").read_text())["eval"]["benchmarks"]
    assert set(benchmarks) == {"humaneval", "mbpp"}
    for name in ("humaneval", "mbpp"):
        assert benchmarks[name]["items"] == 2 and sum(benchmarks[name]["statuses"].values()) == 2
        assert benchmarks[name]["pass@1"] == 0.0  # a random 2-layer model writes no working Python
        assert benchmarks[name]["sandbox"]["network"] in {"namespace", "seccomp"}


def test_lm_task_reports_wikitext2_perplexity_with_its_window(tmp_path):
    result = evaluate_cli(tmp_path, "task=lm", "task.max_length=64", "eval.context_length=128", "eval.stride=64")
    assert result.returncode == 0, result.stderr[-2000:]
    wikitext = json.loads((tmp_path / "metrics.json").read_text())["eval"]["benchmarks"]["wikitext2"]
    assert (wikitext["context_length"], wikitext["stride"], wikitext["windows"]) == (128, 64, 2)
    assert wikitext["perplexity"] > 1.0
