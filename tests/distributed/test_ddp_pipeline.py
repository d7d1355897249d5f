"""The whole pipeline under DDP: a Hydra sweep over Basel and BSI in 2 CPU processes (gloo) on the tiny random
Llama, from the command line, against the same sweep in one process with the same seed and global batch
(4 examples a step: 2 per process, or 4 in one)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch

from basel_app.models import load_compressed

from ..conftest import REPO

SWEEP = ["-m", "model=tiny_random",
         "model.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]", "logger=csv",
         "task.max_train_samples=16", "task.max_eval_samples=4", "task.max_length=640", "method.compression_ratio=1.5",
         "method.pruning_times=3", "method.post_finetune_epochs=1", "method.additional_dim=4",
         "method.importance.batches=2", "method.importance.hessian=gnb", "method.distill.alpha=0.5",
         "eval.benchmarks=[]", "trainer.enable_progress_bar=false", "trainer.precision=32-true"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "task.train_batch_size=2"]
EVENT = re.compile(r"pruning event (\d+)/(\d+) .* rank (\d) keep-mask checksum ([-\d.e+]+)")


def sweep(cwd: Path, overrides: list[str], methods: str = "basel,bsi") -> str:
    """Run the sweep over `methods` from `cwd` (where its default `multirun/${now}` dir goes); returns its output."""
    # Its own session, so that a hang kills the processes DDP started too, not only the first one.
    proc = subprocess.Popen([sys.executable, "-m", "basel_app", *SWEEP, f"method={methods}", *overrides], cwd=cwd,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"the sweep hung (killed after 300 s): {output[-3000:]}") from None
    # The other rank writes its own log: on a failure its end says why it stopped.
    others = "".join(f"\n--- {log} ---\n{log.read_text()[-2000:]}" for log in cwd.rglob("train_ddp_process_*.log"))
    assert proc.returncode == 0, output[-3000:] + others
    return output


def checksums(job: Path) -> dict[int, dict[int, str]]:
    """{rank: {event: keep-mask checksum}} from the job's logs (rank 0's, and the other process's)."""
    found: dict[int, dict[int, str]] = defaultdict(dict)
    for log in job.glob("*.log"):
        for event, total, rank, checksum in EVENT.findall(log.read_text()):
            assert int(total) == 3
            found[int(rank)][int(event)] = checksum
    return found


def logits(job: Path) -> torch.Tensor:
    model, _ = load_compressed(job / "compressed_model")
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_sweep_in_two_cpu_processes_prunes_and_trains_as_in_one_process_with_the_same_global_batch(tmp_path):
    (tmp_path / "ddp").mkdir()
    output = sweep(tmp_path / "ddp", DDP)
    sweep(tmp_path, ["task.train_batch_size=4", f"hydra.sweep.dir={tmp_path / 'one'}"])

    # One sweep, started once: the other process ran each job, not a sweep of its own in a dir of its own.
    assert output.count("Launching 2 jobs") == 1
    (sweep_dir,) = (tmp_path / "ddp" / "multirun").iterdir()
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0_basel", "1_bsi"]
    for job in ("0_basel", "1_bsi"):
        ddp_dir, one_dir = sweep_dir / job, tmp_path / "one" / job
        ddp, one = (json.loads((d / "metrics.json").read_text()) for d in (ddp_dir, one_dir))
        ddp_sums, one_sums = checksums(ddp_dir), checksums(one_dir)
        # Every configured event happened, with the same masks on both ranks and in the single process.
        assert sorted(ddp_sums) == [0, 1] and sorted(one_sums) == [0], job
        assert sorted(ddp_sums[0]) == [1, 2, 3] and ddp_sums[0] == ddp_sums[1] == one_sums[0], job
        assert len(set(ddp_sums[0].values())) == 3  # each event pruned something
        assert ddp["ranks"] == one["ranks"]
        assert 1.5 <= ddp["compression_ratio"] == one["compression_ratio"] < 1.5 * 1.02
        # 16 examples, 2 per process and step, 2 processes: 4 steps per epoch in each, as in one with 4.
        assert ddp["phase_plan"]["steps_per_epoch"] == one["phase_plan"]["steps_per_epoch"] == 4
        torch.testing.assert_close(logits(ddp_dir), logits(one_dir), rtol=1e-4, atol=1e-4)
        # One set of outputs: rank 0's, nothing left half-written.
        names = {p.name for p in ddp_dir.iterdir()}
        assert {"metrics.json", "compressed_model", "spectra.json", "kept_bases.json"} <= names
        assert not [n for n in names if n.endswith(".tmp")] and "failed.json" not in names
        assert not (ddp_dir / "checkpoints").exists()
    bsi_ddp, bsi_one = (json.loads((d / "1_bsi" / "metrics.json").read_text()) for d in (sweep_dir, tmp_path / "one"))
    assert [r["event"] for r in bsi_ddp["importance"]] == [1, 2, 3]
    for a, b in zip(bsi_ddp["importance"], bsi_one["importance"]):  # the same estimate from half the batches a rank
        assert abs(a["hessian_diag_mean"] - b["hessian_diag_mean"]) <= 1e-4 * abs(b["hessian_diag_mean"])
