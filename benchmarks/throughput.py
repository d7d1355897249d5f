"""Training throughput of this tree against an earlier commit, side by side: seconds per step and tokens/s.

    .venv/bin/python benchmarks/throughput.py --baseline 6d10212 --rounds 3

The baseline commit is exported (`git archive`) to a temporary directory; each round runs one worker
subprocess per tree, alternating baseline, current, baseline, current, ..., so that load from other
processes falls on both alike. A worker imports `basel_app` from its tree (PYTHONPATH), loads SmolLM2-135M
(the default model), reparameterizes all seven linear types of every decoder layer (r̃ = 16), and times
AdamW steps (forward + backward + step) on one fixed batch of 4×256 random tokens in each phase:

    keep            every basis kept (full rank), s̃, Ũ, Ṽ train
    prune           half of each layer's bases masked (the smallest |s̃|), s̃, Ũ, Ṽ train
    post_finetune   the model recomposed (LowRankLinear or dense per layer), every parameter trains

under the precision the tree's `TrainerConfig()` defaults to (`--precision` forces one for both trees).
The first `--warmup` steps of each phase are not timed. The report gives, per phase, the median over all
timed steps of all rounds, tokens/s, and the speed-up current/baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHASES = ("keep", "prune", "post_finetune")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------------------------------------- worker
def tree_precision(forced: str | None) -> str:
    """The precision this tree's trainer would run at (`auto` resolved where the tree knows it)."""
    from basel_app.config.schema import TrainerConfig

    if forced:
        return forced
    try:
        from basel_app.lit.trainer import resolve_precision
    except ImportError:  # trees before `trainer.precision: auto`
        return TrainerConfig().precision
    return resolve_precision(TrainerConfig())


def time_steps(model, params, batch, steps: int, warmup: int, precision: str) -> list[float]:
    """Seconds of each timed AdamW step; autocast wraps the forward only, as Lightning's MixedPrecision does."""
    import torch

    chosen = {id(p) for p in params}  # exactly `params` train, in both trees (the rule set_trainable applies)
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
        with ctx:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def worker(args: argparse.Namespace) -> None:
    import torch
    from omegaconf import OmegaConf

    from basel_app.config.schema import ModelConfig
    from basel_app.lit.trainable import all_parameters, reparameterized_parameters
    from basel_app import lowrank
    from basel_app.models import load_model

    precision = tree_precision(args.precision)
    torch.manual_seed(0)
    model = load_model(OmegaConf.to_object(OmegaConf.structured(ModelConfig))).model.train()
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.tokens))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    if hasattr(lowrank, "basel_layers"):  # the current API: targets resolved by the caller
        lowrank.reparameterize(model, lowrank.find_target_linears(model, TARGETS), additional_dim=16)
        basel_layers = lowrank.basel_layers
    else:  # 6d10212: name patterns, and the layers were called lowrank_layers
        lowrank.reparameterize(model, TARGETS, additional_dim=16)
        basel_layers = lowrank.lowrank_layers
    result = {"precision": precision, "tokens_per_step": ids.numel(), "threads": torch.get_num_threads()}

    phases = args.phases.split(",")
    if "keep" in phases:
        result["keep"] = time_steps(model, reparameterized_parameters(model), batch, args.steps, args.warmup, precision)
    for layer in basel_layers(model).values():
        s = layer.singular_values.detach().abs()
        layer.prune(s >= s.median())
    if "prune" in phases:
        result["prune"] = time_steps(model, reparameterized_parameters(model), batch, args.steps, args.warmup, precision)
    if "post_finetune" in phases:
        lowrank.recompose_model(model)
        result["post_finetune"] = time_steps(model, all_parameters(model), batch, args.steps, args.warmup, precision)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- driver
def run_worker(tree: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--phases", args.phases, "--batch", str(args.batch), "--tokens", str(args.tokens)]
    if args.precision:
        command += ["--precision", args.precision]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"worker in {tree} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def report(runs: dict[str, list[dict]], baseline: str) -> str:
    tokens = runs["current"][0]["tokens_per_step"]
    rows = [
        f"{len(runs['current'])} rounds, {runs['current'][0]['threads']} threads, {tokens} tokens/step; "
        f"precision: baseline {runs['baseline'][0]['precision']}, current {runs['current'][0]['precision']}",
        "",
        f"| phase | {baseline} s/step | current s/step | {baseline} tokens/s | current tokens/s | speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for phase in [p for p in PHASES if p in runs["current"][0]]:
        old = statistics.median(t for run in runs["baseline"] for t in run[phase])
        new = statistics.median(t for run in runs["current"] for t in run[phase])
        rows.append(f"| {phase} | {old:.2f} | {new:.2f} | {tokens / old:.0f} | {tokens / new:.0f} | {old / new:.2f}× |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="6d10212", help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=2, help="baseline/current worker pairs, alternating")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase and worker")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256, help="sequence length")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of " + ", ".join(PHASES))
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), help="force one precision for both trees")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="basel_baseline_") as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        trees = {"baseline": Path(tmp), "current": REPO}
        runs: dict[str, list[dict]] = {"baseline": [], "current": []}
        for round_ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(run_worker(tree, args))
                print(f"round {round_ + 1} {name}: " + ", ".join(
                    f"{p} {statistics.median(runs[name][-1][p]):.2f} s" for p in PHASES if p in runs[name][-1]), flush=True)
    print(report(runs, args.baseline))


if __name__ == "__main__":
    main()
