"""Quality benchmark: every method x compression ratio against the dense model, same data and fine-tuning.

Each point is one `python -m basel_app` process (what a user runs) in its own run dir under `--out`, with
one shared set of overrides (printed, and stored in results.json with each run's full command):
the same training records, validation split, schedule, post-fine-tuning and evaluation for every method.
Two references: `dense` (the input model, the finetune run's evaluation before training) and
`dense+finetune` (`method=finetune`: the same post-fine-tuning without compression), so a method's row
reads against what the fine-tuning budget alone does.

Reported per run: achieved compression ratio and parameters; teacher-forced answer loss on the first
`--eval-items` GSM8K test items (the run's own eval split) and MATH500 items (`math500_loss`); the loss on
`--validation-samples` training records held out of training (`task.validation_samples`) — choose
settings on that one, never on the test items; wall time. Greedy accuracy is opt-in (`--accuracy`).

A run whose metrics.json exists is not run again, so a crashed benchmark resumes where it stopped.

    python benchmarks/quality.py --out results/quality                       # everything (hours on a CPU)
    python benchmarks/quality.py --out results/quality --methods basel svd --ratios 2 --dry-run
    python benchmarks/quality.py --out results/quality --ablation additional_dim --ratios 2
    python benchmarks/quality.py --out /tmp/q --methods svd -- model=tiny_random   # extra shared overrides
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the repo's basel_app, not an installed one

from basel_app.config.names import LR_DECAYS  # noqa: E402
from basel_app.files import atomic_write_json  # noqa: E402

METHODS = ["basel", "bsi", "svd", "fwsvd", "svd_llm", "asvd"]
RATIOS = [1.5, 2.0, 3.0]
ALL_LINEARS = "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
REFERENCE = "finetune"  # the dense model fine-tuned with the methods' post-fine-tuning


@dataclass(frozen=True)
class Ablation:
    """Variants of one setting, each a list of Hydra overrides added to a method's run."""

    methods: tuple[str, ...]  # the methods the setting exists for
    variants: dict[str, list[str]]


# Every ablation, in one place; each variant is a list of plain overrides.
ABLATIONS: dict[str, Ablation] = {
    "init": Ablation(("basel", "bsi"), {v: [f"method.init={v}"] for v in ("svd", "whitened", "asvd")}),
    "estimator": Ablation(("bsi",), {v: [f"method.importance.hessian={v}"] for v in ("hutchinson", "fisher", "gnb")}),
    "score": Ablation(("bsi",), {v: [f"ablation=score_{v}"] for v in ("both", "first", "second")}),
    "distill": Ablation(("basel", "bsi"), {"off": ["method.distill.alpha=0"], "alpha0.5": ["method.distill.alpha=0.5"]}),
    "additional_dim": Ablation(("basel", "bsi"), {f"r{d}": [f"ablation=additional_dim_{d}"] for d in (0, 16, 32, 64)}),
    "pruning_times": Ablation(("basel", "bsi"), {f"t{t}": [f"ablation=pruning_times_{t}"] for t in (2, 100)}),
}


@dataclass(frozen=True)
class Run:
    name: str  # its run dir under --out
    method: str
    ratio: float | None  # target compression ratio; None for the dense reference
    variant: str | None
    overrides: list[str]  # besides method= and the shared ones

    @property
    def series(self) -> str:
        """Its line in the plot: the method, and the ablation variant if any."""
        return self.method if self.variant is None else f"{self.method} {self.variant}"


def shared_overrides(args: argparse.Namespace) -> list[str]:
    """What every run gets: the same data, validation split, schedule, post-fine-tuning and evaluation."""
    benchmarks = ["math500_loss"] + (["gsm8k", "math"] if args.accuracy else [])
    return [
        f"model={args.model}",
        "task=math",
        f"model.target_modules={ALL_LINEARS}",
        f"task.max_train_samples={args.max_train_samples}",
        f"task.validation_samples={args.validation_samples}",
        f"task.max_eval_samples={args.eval_items}",  # GSM8K test: the run's own teacher-forced answer loss
        f"eval.limit={args.eval_items}",
        f"eval.benchmarks=[{','.join(benchmarks)}]",
        f"method.post_finetune_epochs={args.post_finetune_epochs}",
        f"method.post_finetune_lr={args.post_finetune_lr}",
        f"method.finetune_warmup={args.post_finetune_warmup}",
        f"method.finetune_decay={args.post_finetune_decay}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]


def planned_runs(args: argparse.Namespace) -> list[Run]:
    """The dense reference and methods x ratios, or with --ablation the ablation's variants of its methods."""
    if args.ablation:
        ablation = ABLATIONS[args.ablation]
        return [Run(f"ablation_{args.ablation}/{m}_x{r:g}_{v}", m, r, v, [f"method.compression_ratio={r}", *o])
                for m in args.methods if m in ablation.methods for r in args.ratios
                for v, o in ablation.variants.items()]
    return [Run(REFERENCE, REFERENCE, None, None, [])] + [
        Run(f"{m}_x{r:g}", m, r, None, [f"method.compression_ratio={r}"])
        for m in args.methods for r in args.ratios]


def command(run: Run, run_dir: Path, shared: list[str]) -> list[str]:
    return [sys.executable, "-m", "basel_app", f"method={run.method}", *run.overrides, *shared,
            f"hydra.run.dir={run_dir}"]


def execute(run: Run, run_dir: Path, argv: list[str], time_limit_s: float, threads: int | None = None) -> dict[str, Any]:
    """Run one point unless its metrics.json exists; its output goes to run.log beside the results.
    `threads`: the point's torch/OpenMP threads, when several points share the machine."""
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        print(f"[skip] {run.name}: {metrics_path} exists", flush=True)
        return {"status": "done"}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "command.txt").write_text(shlex.join(argv) + "\n")
    print(f"[run] {run.name}: {shlex.join(argv[1:])}", flush=True)
    start = time.perf_counter()
    try:
        with open(run_dir / "run.log", "w") as log:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
            result = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=time_limit_s, env=env)
    except subprocess.TimeoutExpired:
        print(f"[timeout] {run.name} after {time_limit_s:.0f} s", flush=True)
        return {"status": "timeout", "seconds": round(time.perf_counter() - start, 1)}
    if result.returncode != 0 or not metrics_path.exists():
        print(f"[failed] {run.name}: exit {result.returncode}; see {run_dir / 'run.log'}", flush=True)
        return {"status": "failed", "returncode": result.returncode, "seconds": round(time.perf_counter() - start, 1)}
    return {"status": "done"}


def row(name: str, evaluation: dict[str, Any], metrics: dict[str, Any], compressed: bool) -> dict[str, Any]:
    """One table row from a run's metrics: sizes from the run, losses from one of its evaluations."""
    params = metrics["params_compressed"] if compressed else metrics["params_original"]
    validation = evaluation.get("validation") or {}
    benchmarks = evaluation.get("benchmarks", {})
    return {
        "name": name,
        "compression_ratio": metrics["compression_ratio"] if compressed else 1.0,
        "params": params,
        "gsm8k_loss": evaluation["answer_loss"],
        "math500_loss": benchmarks.get("math500_loss", {}).get("answer_loss"),
        "validation_loss": validation.get("answer_loss"),
        "gsm8k_accuracy": benchmarks.get("gsm8k", {}).get("accuracy_strict"),
        "math_accuracy": benchmarks.get("math", {}).get("accuracy"),
        "wall_s": sum(metrics["wall_time_s"].values()) if compressed else None,
    }


def collect(runs: list[Run], out: Path) -> list[dict[str, Any]]:
    """Table rows of every finished run; the reference run gives both the dense and the dense+finetune row."""
    rows = []
    for run in runs:
        path = out / run.name / "metrics.json"
        if not path.exists():
            continue
        metrics = json.loads(path.read_text())
        if run.method == REFERENCE:
            rows.append({**row("dense", metrics["eval"]["before"], metrics, False), "method": "dense", "ratio": None})
            rows.append({**row("dense+finetune", metrics["eval"]["after"], metrics, False),
                         "method": "dense+finetune", "ratio": None,
                         "wall_s": sum(metrics["wall_time_s"].values())})
        else:
            rows.append({**row(run.name, metrics["eval"]["after"], metrics, True), "method": run.series,
                         "ratio": run.ratio})
    return rows


def fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]], shared: list[str]) -> str:
    lines = [
        "| run | method | target | achieved | params | GSM8K loss | MATH500 loss | validation loss | wall min |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        wall = None if r["wall_s"] is None else r["wall_s"] / 60
        lines.append(
            f"| {r['name']} | {r['method']} | {fmt(r['ratio'], 'g')}{'x' if r['ratio'] else ''} "
            f"| {r['compression_ratio']:.3f}x | {r['params']:,} | {fmt(r['gsm8k_loss'], '.4f')} "
            f"| {fmt(r['math500_loss'], '.4f')} | {fmt(r['validation_loss'], '.4f')} | {fmt(wall, '.1f')} |")
    lines += ["", "Shared overrides (every run): `" + " ".join(shared) + "`"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Answer loss against compressed parameters, one line per method, the dense rows as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in zip(axes, ("gsm8k_loss", "math500_loss"), ("GSM8K test", "MATH500")):
        for reference, style in (("dense", ":"), ("dense+finetune", "--")):
            for r in rows:
                if r["method"] == reference and r[key] is not None:
                    ax.axhline(r[key], color="gray", linestyle=style, label=reference)
        for method in dict.fromkeys(r["method"] for r in rows if r["ratio"] is not None):
            points = sorted((r["params"] / 1e6, r[key]) for r in rows if r["method"] == method and r[key] is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=method)
        ax.set(title=f"{title}: teacher-forced answer loss", xlabel="parameters (millions)", ylabel="answer loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; use 1 or more")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results dir: one run dir per point, the table, JSON, PNG")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--ratios", nargs="+", type=float, default=RATIOS, help="method.compression_ratio values")
    parser.add_argument("--ablation", choices=sorted(ABLATIONS), help="run this ablation's variants instead")
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model option")
    parser.add_argument("--max-train-samples", type=int, default=256)
    parser.add_argument("--validation-samples", type=int, default=32, help="training records held out for choosing settings")
    parser.add_argument("--eval-items", type=int, default=100, help="GSM8K test and MATH500 items (the first N)")
    parser.add_argument("--post-finetune-epochs", type=int, default=1)
    parser.add_argument("--post-finetune-lr", type=float, default=1e-4)
    parser.add_argument("--post-finetune-warmup", type=float, default=0.1, help="method.finetune_warmup")
    parser.add_argument("--post-finetune-decay", default="cosine", choices=LR_DECAYS, help="method.finetune_decay")
    parser.add_argument("--accuracy", action="store_true", help="also greedy GSM8K/MATH accuracy (~10 s an item on a CPU)")
    parser.add_argument("--time-limit-min", type=float, default=30.0, help="a run still going after this is stopped")
    parser.add_argument("--jobs", type=positive_int, default=1,
                        help="points run at once, each on cores/jobs threads (results do not depend on it)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides shared by every run (after --)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = args.out.resolve()
    shared = shared_overrides(args)
    runs = planned_runs(args)
    print("shared overrides:", " ".join(shared), flush=True)
    commands = {run.name: command(run, out / run.name, shared) for run in runs}
    if args.dry_run:
        for argv_ in commands.values():
            print(shlex.join(argv_[1:]))
        return {}
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    with ThreadPoolExecutor(args.jobs) as pool:  # each point is its own process; threads only wait on them
        done = pool.map(lambda run: execute(run, out / run.name, commands[run.name], args.time_limit_min * 60, threads),
                        runs)
        status = {run.name: result for run, result in zip(runs, done)}
    rows = collect(runs, out)
    results = {
        "shared_overrides": shared,
        "runs": {name: {"command": shlex.join(commands[name]), **status[name]} for name in commands},
        "rows": rows,
    }
    prefix = f"ablation_{args.ablation}" if args.ablation else "quality"
    atomic_write_json(out / f"{prefix}.json", results)
    markdown = table(rows, shared)
    tmp = out / f".{prefix}.md.tmp"
    tmp.write_text(markdown)
    tmp.replace(out / f"{prefix}.md")
    plot(rows, out / f"{prefix}.png")
    print(markdown, flush=True)
    return results


if __name__ == "__main__":
    main()
