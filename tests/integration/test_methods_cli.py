"""Methods from the command line on SmolLM2 (small settings): the compression budget is hit, and metrics.json
says which method, scorer, budget and ablation produced it.

Two methods run here, the two whose work depends on real data at this scale: BSI's curvature (with the
paper's score, `score_both`; `scale=cpu`'s `second` runs in `tests/lit/test_methods.py`) and SVD-LLM's
whitening (Gram matrices of real activations, damped where Cholesky refuses). Basel on SmolLM2 from the CLI
is the default run's test (`test_smollm2.py`), and every method runs the same pipeline on a tiny Llama
(`tests/lit/test_methods.py`); SVD, FWSVD and ASVD here cost ~35 s each and exercised nothing more."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.slow

# The runs share the session's cache (tests/conftest.py), as a sweep's jobs do: SmolLM2 is dequantised once,
# and each factorisation is computed by the first run that needs it.
# q/k/o_proj are 23.4M of SmolLM2's 134.5M parameters, so 1.1x is a real cut of those layers; three layer types
# instead of scale=cpu's seven keep the 90 decompositions per method affordable in the test suite.
SMALL = ["logger=csv", "model.target_modules=[q_proj,k_proj,o_proj]", "task.max_train_samples=4", "task.max_eval_samples=4", "task.max_length=160",
         "method.pruning_times=2", "method.compression_ratio=1.1", "method.post_finetune_epochs=1",
         "method.importance.batches=1", "method.calibration_batches=2", "eval.benchmarks=[]",
         "trainer.enable_progress_bar=false"]


@pytest.mark.parametrize("method,ablation", [("bsi", "score_both"), ("svd_llm", "none")])
def test_method_runs_end_to_end_from_the_cli_on_smollm2(tmp_path, method, ablation):
    result = subprocess.run(
        [sys.executable, "-m", "basel_app", f"hydra.run.dir={tmp_path}", f"method={method}", f"ablation={ablation}",
         *SMALL],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["method"], metrics["ablation"]) == (method, [ablation])
    assert metrics["scorer"] == {"basel": "magnitude", "bsi": "taylor"}.get(method)
    assert metrics["budget"]["kind"] == "params"
    assert metrics["budget"]["target_compression_ratio"] == pytest.approx(1.1)
    assert 1.1 <= metrics["compression_ratio"] < 1.1 * 1.02
    assert len(metrics["ranks"]) == 30 * 3
    assert metrics["eval"]["after"]["answer_loss"] > 0
    assert (tmp_path / "compressed_model" / "config.json").exists()
    if method == "bsi":
        assert metrics["score"] == "both"
