"""A run under FSDP2 pre-empted mid-stage resumes from rank 0's checkpoint and ends exactly where the
uninterrupted run ends. SIGTERM reaches rank 1 alone, the extreme of what SLURM does (every task gets it, each
at its own moment): the ranks must still agree on the step they stop at, or they wait for each other for ever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from basel_app.config.errors import Preempted

from .test_ddp_pipeline import SWEEP, logits

FSDP = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "task.train_batch_size=2",
        "trainer.checkpoint_every_n_steps=2", "method=basel"]


def start(out: Path) -> subprocess.Popen:
    # Its own session: the signal and, on a hang, the kill reach the process Lightning started too.
    args = [a for a in SWEEP if a != "-m"]
    return subprocess.Popen([sys.executable, "-m", "basel_app", *args, *FSDP, f"hydra.run.dir={out}"], cwd=out.parent,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def rank_one(parent: int) -> int:
    """The process Lightning's launcher started for rank 1: a child of rank 0 running the same command."""
    children = subprocess.run(["pgrep", "-P", str(parent), "-f", "basel_app"], capture_output=True, text=True).stdout
    (pid,) = [int(p) for p in children.split()]
    return pid


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"the run hung (killed after {timeout:.0f} s): {output[-3000:]}") from None
    return proc.returncode, output


def test_a_preempted_fsdp_run_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path):
    status, output = finish(start(tmp_path / "uninterrupted"))
    assert status == 0, output[-3000:]

    cut = tmp_path / "preempted"
    proc = start(cut)
    checkpoints = cut / "checkpoints" / "compress"
    deadline = time.monotonic() + 240
    while len(list(checkpoints.glob("*.ckpt"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the second checkpoint (step 4): stage 1 is under way, in its keep phase
    os.kill(rank_one(proc.pid), signal.SIGTERM)
    status, output = finish(proc)
    assert status == Preempted.exit_code, output[-3000:]
    assert not (cut / "metrics.json").exists()

    status, output = finish(start(cut))
    assert status == 0, output[-3000:]
    assert "resuming from" in output
    done, reference = (json.loads((d / "metrics.json").read_text()) for d in (cut, tmp_path / "uninterrupted"))
    assert done["ranks"] == reference["ranks"]
    assert done["eval"]["after"]["answer_loss"] == reference["eval"]["after"]["answer_loss"]
    torch.testing.assert_close(logits(cut), logits(tmp_path / "uninterrupted"), rtol=0, atol=1e-6)
