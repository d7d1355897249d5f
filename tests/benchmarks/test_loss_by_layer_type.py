"""benchmarks/loss_by_layer_type.py on a finished tiny run: its two ends are the run's own numbers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from ..conftest import REPO

RUN = ["method=basel", "model=tiny_random", "model.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
       "logger=csv", "task.max_train_samples=16", "task.validation_samples=4", "task.max_eval_samples=4",
       "task.max_length=640", "method.compression_ratio=1.5", "method.pruning_times=2", "method.post_finetune_epochs=0",
       "eval.benchmarks=[]", "trainer.enable_progress_bar=false"]


def test_restoring_layer_types_starts_at_the_runs_loss_and_ends_at_the_dense_models(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "basel_app", f"hydra.run.dir={run_dir}", *RUN], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    spec = importlib.util.spec_from_file_location("loss_by_layer_type", REPO / "benchmarks" / "loss_by_layer_type.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    table = script.main([str(run_dir), "--model", "tiny_random", "--out", str(tmp_path / "by_type.json")])
    evaluation = json.loads((run_dir / "metrics.json").read_text())["eval"]
    loss = table["loss"]
    assert loss["dense"] == pytest.approx(evaluation["before"]["validation"]["answer_loss"], rel=1e-5)
    assert loss["compressed"] == pytest.approx(evaluation["after"]["validation"]["answer_loss"], rel=1e-5)
    # No post-fine-tuning: only the targeted layers changed, so restoring all of them is the dense model.
    assert loss["all"] == pytest.approx(loss["dense"], rel=1e-5)
    assert loss["compressed"] != loss["dense"]
    assert all(p["compressed"] < p["dense"] for p in table["params"].values())
    assert json.loads((tmp_path / "by_type.json").read_text()) == table
