"""`python -m basel_app.report <sweep or runs dir>`: every run below a directory in one table and one figure.

    python -m basel_app.report multirun/2026-12-02_11-24-13     # one sweep
    python -m basel_app.report outputs                          # every run under outputs/

Writes into that directory:
- `results.csv` and `results.md`: one row per run — its status, method, budget, compression ratio,
  parameters, GB on disk, each evaluation metric after compression, wall time — and one row per input
  model with its metrics before compression;
- `quality_vs_size.png`: one panel per metric, one line per method against the parameter count;
- when the runs logged to W&B, the table and the figure as one W&B run (`report-<dir name>`).

A run dir is one with `.hydra/config.yaml` or `metrics.json` whose config names a method. It is `finished`
when its `metrics.json` exists (the pipeline writes it last, atomically), `failed` when the command line
left `failed.json` (an error ended it), and `unfinished` otherwise (killed, or still running), with the last
stage it reached. No run is dropped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from basel_app.cli import FAILED_MARKER
from basel_app.config.errors import ConfigError
from basel_app.config.names import DENSE_METHODS
from basel_app.evaluate import headline_numbers
from basel_app.files import atomic_write_text
from basel_app.lit.checkpoints import checkpoints_dir
from basel_app.lit.trainer import wandb_mode
from basel_app.plots import SizePoint, quality_vs_size_figure, save_figure

log = logging.getLogger(__name__)

REPORT_FILES = ("results.csv", "results.md", "quality_vs_size.png")
BOOKKEEPING = ("answer_tokens", "n", "seconds")  # counts and timings among the evaluation's numbers, not quality
# Where an unfinished run stopped, judged by the newest checkpoint or stage boundary it left (newest first).
PROGRESS = (
    ("post_finetune", "stopped in stage 2 (post-fine-tuning), resumable from its checkpoint"),
    ("recomposed", "stopped after stage 1 (the compressed model is saved)"),
    ("compress", "stopped in stage 1 (keep/prune), resumable from its checkpoint"),
    ("pre_finetuned", "stopped after stage 0 (the fine-tuned model is saved)"),
    ("pre_finetune", "stopped in stage 0 (pre-fine-tuning), resumable from its checkpoint"),
)


@dataclass
class Row:
    """One line of the table: a run, or an input model (status `input`)."""

    run: str
    status: str
    method: str
    budget: str = ""
    compression_ratio: float | None = None
    params: int | None = None
    disk_gb: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    wall_time_s: float | None = None
    note: str = ""


def quality_metrics(evaluation: dict[str, Any]) -> dict[str, float]:
    """The evaluation's quality numbers (loss, perplexity, accuracies), named as in the logger without a prefix."""
    numbers = headline_numbers(evaluation, "")
    return {key.removeprefix("/"): value for key, value in numbers.items()
            if key.rsplit("/", 1)[-1] not in BOOKKEEPING}


def run_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's full config: metrics.json's copy when it finished, else the one Hydra saved when it started."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text()).get("config")
    hydra = run_dir / ".hydra" / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(hydra), resolve=False) if hydra.is_file() else None


def find_runs(root: Path) -> list[Path]:
    """Every run dir below `root` (or `root` itself), in path order: job 0, 1, ... of a sweep."""
    candidates = {p.parent for p in root.rglob("metrics.json")}
    candidates |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    runs = []
    for candidate in sorted(candidates):
        config = run_config(candidate)
        if isinstance(config, dict) and isinstance(config.get("method"), dict) and "name" in config["method"]:
            runs.append(candidate)
    return runs


def budget_label(method: dict[str, Any]) -> str:
    """The size budget as the user set it: the first of target_params, compression_ratio, keep_ratio that is set."""
    if method["name"] in DENSE_METHODS:
        return "none (dense reference)"
    key = next((k for k in ("target_params", "compression_ratio") if method.get(k) is not None), "keep_ratio")
    return f"{key}={method.get(key)}"


def progress(run_dir: Path) -> str:
    checkpoints = checkpoints_dir(run_dir)
    return next((note for name, note in PROGRESS if (checkpoints / name).is_dir()), "stopped before any checkpoint")


def read_run(root: Path, run_dir: Path) -> Row:
    config = run_config(run_dir)
    name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
    row = Row(run=name, status="unfinished", method=config["method"]["name"], budget=budget_label(config["method"]))
    metrics_file, failed = run_dir / "metrics.json", run_dir / FAILED_MARKER
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        row.status = "finished"
        row.compression_ratio = metrics["compression_ratio"]
        row.params = metrics["params_compressed"]
        row.disk_gb = metrics["size_bytes_on_disk"] / 1e9
        row.metrics = quality_metrics(metrics["eval"]["after"])
        row.wall_time_s = round(sum(metrics["wall_time_s"].values()), 1)
    elif failed.is_file():
        row.status, row.note = "failed", json.loads(failed.read_text())["error"]
    else:
        row.note = progress(run_dir)
    return row


def input_rows(root: Path, runs: list[Path]) -> list[Row]:
    """One row per input model (model, task) of the finished runs: its size and its metrics before compression."""
    rows: dict[tuple[str, str], Row] = {}
    for run_dir in runs:
        if not (run_dir / "metrics.json").is_file():
            continue
        metrics = json.loads((run_dir / "metrics.json").read_text())
        key = (metrics["model"], metrics["task"])
        if key not in rows:
            rows[key] = Row(run=f"input: {metrics['model']}", status="input", method="(input model)",
                            compression_ratio=1.0, params=metrics["params_original"],
                            metrics=quality_metrics(metrics["eval"]["before"]),
                            note=f"task {metrics['task']}, measured before compression in {run_dir.relative_to(root)}")
    return list(rows.values())


def metric_names(rows: list[Row]) -> list[str]:
    """Every metric any row has, in the order they first appear."""
    return list(dict.fromkeys(name for row in rows for name in row.metrics))


def table(rows: list[Row], metrics: list[str]) -> tuple[list[str], list[list[Any]]]:
    """(columns, values): the run's identity and size, then `metrics`, then its wall time and a note."""
    columns = ["run", "status", "method", "budget", "compression_ratio", "params", "disk_GB", *metrics,
               "wall_time_s", "note"]
    values = [[row.run, row.status, row.method, row.budget, row.compression_ratio, row.params, row.disk_gb,
               *(row.metrics.get(name) for name in metrics), row.wall_time_s, row.note] for row in rows]
    return columns, values


def to_csv(columns: list[str], values: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if v is None else v for v in row] for row in values])
    return out.getvalue()


def markdown_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, rows: list[Row], columns: list[str], values: list[list[Any]]) -> str:
    counts = {status: sum(row.status == status for row in rows) for status in ("finished", "failed", "unfinished")}
    lines = [
        f"# {title}",
        "",
        f"{sum(counts.values())} runs: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + ".",
        "Metrics are after compression; `input` rows hold the input model's, before compression.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(" --- " for _ in columns) + "|",
        *("| " + " | ".join(markdown_cell(v) for v in row) + " |" for row in values),
        "",
        "![quality against model size](quality_vs_size.png)",
        "",
    ]
    return "\n".join(lines)


def log_to_wandb(logger: dict[str, Any], root: Path, columns: list[str], values: list[list[Any]], figure: Path) -> None:
    """The table and the figure as one W&B run in the runs' project, beside them (offline unless logged in)."""
    import wandb

    # create_new: a run still open in this process (a pipeline's, in the same interpreter) must not be reused.
    run = wandb.init(project=logger["project"], name=f"report-{root.name}", dir=str(root), job_type="report",
                     mode=wandb_mode(logger.get("mode", "auto")), reinit="create_new")
    run.log({"results": wandb.Table(columns=columns, data=values), "quality_vs_size": wandb.Image(str(figure))})
    run.finish()


def write_report(root: Path) -> list[Path]:
    """Aggregate every run below `root` into results.csv, results.md and quality_vs_size.png in `root`."""
    if not root.is_dir():
        raise ConfigError(f"report directory {str(root)!r} does not exist; give a sweep dir (multirun/<time>) or "
                          "a dir above run dirs (outputs/)")
    runs = find_runs(root)
    if not runs:
        raise ConfigError(f"report directory {str(root)!r} holds no run (no metrics.json or .hydra/config.yaml of "
                          "a `python -m basel_app` run below it)")
    rows = [read_run(root, run_dir) for run_dir in runs]
    inputs = input_rows(root, runs)
    metrics = metric_names(inputs + rows)
    columns, values = table(inputs + rows, metrics)
    csv_path, md_path, png_path = (root / name for name in REPORT_FILES)
    atomic_write_text(csv_path, to_csv(columns, values))
    atomic_write_text(md_path, to_markdown(f"Sweep report: {root.resolve().name}", rows, columns, values))
    curves: dict[str, list[SizePoint]] = {}
    for row in rows:
        if row.status == "finished":
            curves.setdefault(row.method, []).append(SizePoint(row.params, row.metrics))
    left_out = sum(row.status != "finished" for row in rows)
    title = f"Quality against model size: {root.resolve().name}" + (
        f" ({left_out} failed or unfinished run{'s' * (left_out != 1)} not drawn, see results.md)" if left_out else "")
    figure = quality_vs_size_figure(curves, metrics, title,
                                    inputs=[SizePoint(row.params, row.metrics) for row in inputs])
    save_figure(figure, png_path)
    loggers = [config["logger"] for config in map(run_config, runs) if config["logger"]["name"] == "wandb"]
    if loggers:
        log_to_wandb(loggers[0], root, columns, values, png_path)
    for row in rows:
        if row.status != "finished":
            log.warning("%s: %s %s", row.run, row.status, row.note)
    log.info("%d runs (%d finished): %s", len(rows), sum(r.status == "finished" for r in rows), root)
    return [csv_path, md_path, png_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m basel_app.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="a sweep dir (multirun/<time>) or any dir above run dirs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        written = write_report(args.directory)
    except ConfigError as err:
        log.error("%s", err)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
