"""The whole pipeline under DDP: 2 CPU processes (gloo) on the tiny random Llama, from the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from ..conftest import REPO

TINY_DDP = ["model=tiny_random", "model.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
            "logger=csv", "task.max_train_samples=16", "task.train_batch_size=2", "task.max_eval_samples=4",
            "task.max_length=640", "method.compression_ratio=1.5", "method.allocation=global", "method.pruning_times=3",
            "method.post_finetune_epochs=1", "method.additional_dim=4", "method.importance.batches=2",
            "method.importance.probes=1", "method.distill.alpha=0", "eval.benchmarks=[]",
            "trainer.enable_progress_bar=false", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.precision=32-true"]
EVENT = re.compile(r"pruning event (\d+)/(\d+) .* rank (\d) keep-mask checksum ([-\d.e+]+)")


def test_bsi_under_ddp_on_two_cpu_processes_prunes_as_configured_with_one_set_of_outputs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "basel_app", f"hydra.run.dir={tmp_path}", "method=bsi", *TINY_DDP],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    checksums: dict[int, dict[int, str]] = defaultdict(dict)  # rank → event → checksum of every keep mask
    for event, total, rank, checksum in EVENT.findall(result.stdout + result.stderr):
        assert int(total) == 3
        checksums[int(rank)][int(event)] = checksum
    assert sorted(checksums) == [0, 1]
    assert sorted(checksums[0]) == [1, 2, 3] and checksums[0] == checksums[1]  # every event, same masks everywhere
    assert len(set(checksums[0].values())) == 3  # each event pruned something

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 1.5 <= metrics["compression_ratio"] < 1.5 * 1.02
    assert [r["event"] for r in metrics["importance"]] == [1, 2, 3]
    # 16 examples, 2 per process and step, 2 processes: 4 steps per epoch in each process.
    assert metrics["phase_plan"]["steps_per_epoch"] == 4
    # One set of outputs: rank 0's, nothing left half-written, no second run dir.
    names = {p.name for p in tmp_path.iterdir()}
    assert {"metrics.json", "compressed_model", "spectra.json", "kept_bases.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")] and "failed.json" not in names
    assert not (tmp_path / "checkpoints").exists()
