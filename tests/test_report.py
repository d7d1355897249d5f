"""`python -m basel_app.report`: a sweep in one table and one figure, with no run dropped — a killed job is
listed as unfinished, a job that raised as failed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from matplotlib.image import imread
from omegaconf import OmegaConf

from basel_app import report
from basel_app.cli import FAILED_MARKER, run_validated
from basel_app.config.errors import ConfigError

from .conftest import REPO

# 3 keep ratios x 2 methods on the tiny random Llama, every phase as short as it goes; the benchmarks run on
# 2 items with 4 new tokens, so the table has accuracies as well as the answer loss.
SWEEP = ["-m", "method=svd,basel", "method.compression_ratio=null", "method.keep_ratio=0.3,0.6,0.9", "model=tiny_random",
         "logger=csv",
         "task.max_train_samples=8", "task.max_eval_samples=2", "method.post_finetune_epochs=0", "eval.limit=2",
         "eval.max_new_tokens=4", "trainer.enable_progress_bar=false"]


def read_csv(path):
    with path.open() as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def run_sweep_killing_its_last_job(sweep, log_path):
    """Run SWEEP and SIGKILL it (the whole process group) once its last job, 5_basel, has a stage-1 checkpoint:
    that job is mid-way, the five before it are done."""
    with log_path.open("w") as log:
        job = subprocess.Popen([sys.executable, "-m", "basel_app", *SWEEP, f"hydra.sweep.dir={sweep}"], cwd=REPO,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not (sweep / "5_basel" / "checkpoints").is_dir():
            assert job.poll() is None, (
                f"the sweep ended before its last job was killed:\n{log_path.read_text()[-3000:]}")
            assert time.monotonic() < deadline, "the sweep took more than 5 minutes"
            time.sleep(0.02)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()


def test_a_sweep_with_a_killed_job_gives_the_table_and_one_line_per_method(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    run_sweep_killing_its_last_job(sweep, tmp_path / "sweep.log")
    assert not (sweep / "5_basel" / "metrics.json").exists()

    figures = []
    draw = report.quality_vs_size_figure
    monkeypatch.setattr(report, "quality_vs_size_figure", lambda *a, **k: figures.append(draw(*a, **k)) or figures[-1])
    assert report.main([str(sweep)]) == 0

    rows = read_csv(sweep / "results.csv")
    jobs = [f"{i}_{m}" for i, m in enumerate(["svd"] * 3 + ["basel"] * 3)]
    assert list(rows) == ["input: tiny_random", *jobs]
    assert rows["5_basel"]["status"] == "unfinished" and "stage 1" in rows["5_basel"]["note"]
    assert rows["5_basel"]["params"] == "" and rows["5_basel"]["budget"] == "keep_ratio=0.9"
    finished = {job: json.loads((sweep / job / "metrics.json").read_text()) for job in jobs[:5]}
    for job, metrics in finished.items():
        row = rows[job]
        assert (row["status"], row["method"]) == ("finished", metrics["method"])
        assert row["budget"] == f"keep_ratio={metrics['budget']['keep_ratio']}"
        assert int(row["params"]) == metrics["params_compressed"]
        assert float(row["compression_ratio"]) == metrics["compression_ratio"]
        assert float(row["disk_GB"]) == metrics["size_bytes_on_disk"] / 1e9
        assert float(row["answer_loss"]) == metrics["eval"]["after"]["answer_loss"]
        assert float(row["gsm8k/accuracy_strict"]) == metrics["eval"]["after"]["benchmarks"]["gsm8k"]["accuracy_strict"]
    assert float(rows["input: tiny_random"]["answer_loss"]) == finished["0_svd"]["eval"]["before"]["answer_loss"]
    assert {"answer_tokens", "gsm8k/n", "gsm8k/seconds"}.isdisjoint(rows["0_svd"])  # bookkeeping, not quality
    markdown = (sweep / "results.md").read_text()
    assert "6 runs: 5 finished, 0 failed, 1 unfinished." in markdown
    assert "| 5_basel | unfinished | basel | keep_ratio=0.9 |" in markdown

    # The figure: a panel per metric, one line per method through its finished runs sorted by size.
    (figure,) = figures
    assert "1 failed or unfinished run not drawn" in figure.get_suptitle()
    panels = [axes for axes in figure.axes if axes.get_lines()]
    assert [axes.get_ylabel() for axes in panels][:2] == ["answer_loss", "answer_ppl"]
    for axes in panels:
        metric = axes.get_ylabel()
        assert axes.get_xlabel() == "parameters" and axes.get_title()
        lines = {line.get_label(): line for line in axes.get_lines()}
        assert set(lines) == {"svd", "basel", "input model (before compression)"}
        for method in ("svd", "basel"):
            points = sorted((int(r["params"]), float(r[metric])) for r in rows.values()
                            if r["method"] == method and r["status"] == "finished")
            assert len(points) == (3 if method == "svd" else 2)
            np.testing.assert_array_equal(lines[method].get_xdata(), [x for x, _ in points])
            np.testing.assert_array_equal(lines[method].get_ydata(), [y for _, y in points])
    pixels = imread(sweep / "quality_vs_size.png")
    assert min(pixels.shape[:2]) > 300 and len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20


def job_dir(compose_config, root, name):
    """A run dir as Hydra leaves it when the job starts: .hydra/config.yaml, nothing else."""
    cfg = compose_config("model=tiny_random", "method=svd", "method.compression_ratio=2", "logger=wandb",
                         "logger.mode=offline", output_dir=str(root / name))
    (root / name / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, root / name / ".hydra" / "config.yaml")
    return cfg


def test_a_job_that_raised_is_failed_with_its_error_and_a_new_attempt_clears_the_mark(compose_config, tmp_path):
    def crash(_):
        raise RuntimeError("simulated crash")

    def bad_budget(_):
        raise ConfigError("method.compression_ratio=50.0 asks for too few parameters")

    raised = job_dir(compose_config, tmp_path, "0_svd")
    with pytest.raises(RuntimeError):
        run_validated(raised, crash)
    with pytest.raises(SystemExit) as exit_status:
        run_validated(job_dir(compose_config, tmp_path, "1_svd"), bad_budget)
    assert exit_status.value.code == 2
    job_dir(compose_config, tmp_path, "2_svd")  # started, then killed: no marker, no metrics
    (tmp_path / "not_a_run").mkdir()

    report.write_report(tmp_path)
    rows = read_csv(tmp_path / "results.csv")
    assert {run: (row["status"], row["note"]) for run, row in rows.items()} == {
        "0_svd": ("failed", "RuntimeError: simulated crash"),
        "1_svd": ("failed", "ConfigError: method.compression_ratio=50.0 asks for too few parameters"),
        "2_svd": ("unfinished", "stopped before any checkpoint"),
    }
    assert all(row["budget"] == "compression_ratio=2.0" for row in rows.values())
    # W&B is these runs' logger: the same table went to an offline W&B run beside them.
    (wandb_run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(wandb_run.rglob("results_*.table.json")) and list(wandb_run.rglob("quality_vs_size_*.png"))

    run_validated(raised, lambda cfg: None)  # the job run again on its dir, this time without error
    assert not (tmp_path / "0_svd" / FAILED_MARKER).exists()


@pytest.mark.parametrize("make, expected", [(lambda p: p / "missing", "does not exist"),
                                            (lambda p: p, "holds no run")])
def test_a_directory_without_runs_is_one_line_naming_it(tmp_path, caplog, make, expected):
    assert report.main([str(make(tmp_path))]) == 2
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert expected in record.getMessage() and str(tmp_path) in record.getMessage()
    assert "\n" not in record.getMessage() and not list(tmp_path.iterdir())
