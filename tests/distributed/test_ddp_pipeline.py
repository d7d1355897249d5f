"""The whole pipeline under DDP: 2 CPU processes (gloo) on the tiny random Llama, from the command line,
against one process with the same seed and global batch (4 examples a step: 2 per process, or 4 in one)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from basel_app.models import load_compressed

from ..conftest import REPO

TINY = ["model=tiny_random", "model.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
        "logger=csv", "task.max_train_samples=16", "task.max_eval_samples=4", "task.max_length=640",
        "method.compression_ratio=1.5", "method.pruning_times=3", "method.post_finetune_epochs=1",
        "method.additional_dim=4", "method.distill.alpha=0.5", "eval.benchmarks=[]",
        "trainer.enable_progress_bar=false", "trainer.precision=32-true"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "task.train_batch_size=2"]
ONE_PROCESS = ["task.train_batch_size=4"]
METHOD = {"basel": [], "bsi": ["method.allocation=global", "method.importance.batches=2", "method.importance.hessian=gnb"]}
EVENT = re.compile(r"pruning event (\d+)/(\d+) .* rank (\d) keep-mask checksum ([-\d.e+]+)")


def run(run_dir: Path, method: str, overrides: list[str]) -> tuple[dict[int, dict[int, str]], dict]:
    """One command-line run: {rank: {event: keep-mask checksum}} from its log, and its metrics.json."""
    result = subprocess.run([sys.executable, "-m", "basel_app", f"hydra.run.dir={run_dir}", f"method={method}",
                             *TINY, *METHOD[method], *overrides], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    checksums: dict[int, dict[int, str]] = defaultdict(dict)
    for event, total, rank, checksum in EVENT.findall(result.stdout + result.stderr):
        assert int(total) == 3
        checksums[int(rank)][int(event)] = checksum
    return checksums, json.loads((run_dir / "metrics.json").read_text())


def logits(run_dir: Path) -> torch.Tensor:
    model, _ = load_compressed(run_dir / "compressed_model")
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", ["basel", "bsi"])
def test_two_cpu_processes_prune_and_train_as_one_process_with_the_same_global_batch(tmp_path, method):
    ddp_checksums, ddp = run(tmp_path / "ddp", method, DDP)
    one_checksums, one = run(tmp_path / "one", method, ONE_PROCESS)

    # Every configured event happened, with the same masks on both ranks and in the single process.
    assert sorted(ddp_checksums) == [0, 1] and sorted(one_checksums) == [0]
    assert sorted(ddp_checksums[0]) == [1, 2, 3] and ddp_checksums[0] == ddp_checksums[1] == one_checksums[0]
    assert len(set(ddp_checksums[0].values())) == 3  # each event pruned something
    assert ddp["ranks"] == one["ranks"]
    assert 1.5 <= ddp["compression_ratio"] == one["compression_ratio"] < 1.5 * 1.02
    if method == "bsi":
        assert [r["event"] for r in ddp["importance"]] == [1, 2, 3]
        for a, b in zip(ddp["importance"], one["importance"]):  # the same estimate from half the batches per rank
            assert a["hessian_diag_mean"] == pytest.approx(b["hessian_diag_mean"], rel=1e-4)
    # 16 examples, 2 per process and step, 2 processes: 4 steps per epoch in each process, as in one with 4.
    assert ddp["phase_plan"]["steps_per_epoch"] == one["phase_plan"]["steps_per_epoch"] == 4
    torch.testing.assert_close(logits(tmp_path / "ddp"), logits(tmp_path / "one"), rtol=1e-4, atol=1e-4)

    # One set of outputs: rank 0's, nothing left half-written, no second run dir.
    names = {p.name for p in (tmp_path / "ddp").iterdir()}
    assert {"metrics.json", "compressed_model", "spectra.json", "kept_bases.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")] and "failed.json" not in names
    assert not (tmp_path / "ddp" / "checkpoints").exists()
