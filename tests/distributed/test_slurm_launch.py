"""Launched as `srun` launches it: 2 processes started from outside, each told its rank by SLURM's variables
(`--ntasks-per-node=2` on one node), on the tiny random Llama. No process starts another; they find each
other through Lightning's SLURM environment and run as one DDP job."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

from ..conftest import REPO

RUN = ["method=basel", "model=tiny_random", "logger=csv", "task.max_train_samples=16", "task.train_batch_size=2",
       "task.max_eval_samples=4", "task.max_length=640", "method.compression_ratio=1.3", "method.pruning_times=2",
       "eval.benchmarks=[]", "trainer.enable_progress_bar=false", "trainer=ddp", "trainer.accelerator=cpu",
       "trainer.devices=2", "trainer.num_nodes=1"]
EVENT = re.compile(r"pruning event (\d+)/2 .* rank (\d) keep-mask checksum ([-\d.e+]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_started_by_slurm_run_one_ddp_job_and_write_one_set_of_outputs(tmp_path):
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1",
               "SLURM_NODEID": "0", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_JOB_ID": "4242",
               "SLURM_JOB_NAME": "basel", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "basel_app", f"hydra.run.dir={tmp_path}", *RUN], cwd=REPO,
                                      env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)

    assert "rank 0 of 2 started" in outputs[0] and "rank 1 of 2 started" in outputs[1]
    assert "Launching" not in "".join(outputs)  # nobody started a process (nor a sweep)
    events = {rank: {} for rank in (0, 1)}
    for output in outputs:
        for event, rank, checksum in EVENT.findall(output):
            events[int(rank)][int(event)] = checksum
    assert sorted(events[0]) == [1, 2] and events[0] == events[1]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["phase_plan"]["steps_per_epoch"] == 4  # 16 examples, 2 per process and step, 2 processes
    assert metrics["compression_ratio"] >= 1.3
