"""Does BSI's score predict what removing a basis really costs? Predicted ΔL against the measured one.

SmolLM2 reparameterized on q/k/o_proj as the CPU profile does; for a sample of bases (a few layers, bases
from the top, middle and bottom of each spectrum) the loss change of zeroing each one alone is measured on
held-out GSM8K training batches, disjoint from the ones the estimators see. Each predictor is scored by its
Spearman rank correlation with the measured change (1 = orders the bases exactly as their true cost does):
the magnitude |s̃| (Basel's rule), and BSI's Taylor score (both terms, each alone, with and without the
curvature floor at 0) for each curvature estimator, side by side, with its cost in gradient evaluations.

    .venv/bin/python benchmarks/bsi_score_quality.py --estimators hutchinson:4:8 fisher:16 gnb:8 --heldout 6

An estimator is `name:M[:K]`: M batches (of the task's train batch size), K Hutchinson probes.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from omegaconf import OmegaConf

from basel_app.config.schema import ModelConfig, TaskConfig
from basel_app.data import TaskDataModule
from basel_app.lowrank import find_target_linears, reparameterize
from basel_app.methods.importance import TaylorImportance
from basel_app.methods.taylor import taylor_scores
from basel_app.models import load_model


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [x.double().argsort().argsort().double() for x in (a, b)]
    ranks = [r - r.mean() for r in ranks]
    return float((ranks[0] * ranks[1]).sum() / (ranks[0].norm() * ranks[1].norm()))


def parse_estimator(spec: str) -> tuple[str, int, int]:
    name, batches, *probes = spec.split(":")
    return name, int(batches), int(probes[0]) if probes else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimators", nargs="+", default=["hutchinson:4:8", "fisher:16", "gnb:8"])
    parser.add_argument("--heldout", type=int, default=6, help="batches the true ΔL is measured on")
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 10, 20, 29])
    parser.add_argument("--eps-scale", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0,
                        help="the shuffle the estimation and held-out batches are drawn from (another seed: another draw)")
    args = parser.parse_args()
    estimators = [parse_estimator(s) for s in args.estimators]

    start = time.perf_counter()
    loaded = load_model(OmegaConf.to_object(OmegaConf.structured(ModelConfig)))
    most = max(m for _, m, _ in estimators)
    task = OmegaConf.to_object(OmegaConf.structured(TaskConfig(max_length=args.max_length)))
    data = TaskDataModule.from_config(task, seed=0)
    data.load_records()
    data.attach_tokenizer(loaded.tokenizer)
    data.setup("fit")
    model = loaded.model.eval()
    layers = reparameterize(model, find_target_linears(model, ["q_proj", "k_proj", "o_proj"]), additional_dim=0)
    params = [layer.singular_values for layer in layers.values()]
    drawn = data.calibration_batches(most + args.heldout, seed=args.seed)  # one shuffle: disjoint by construction
    estimation, heldout = drawn[:most], drawn[most:]

    @torch.no_grad()
    def losses() -> torch.Tensor:
        return torch.tensor([float(model(**b).loss) for b in heldout], dtype=torch.float64)

    # The sample: in each chosen layer, bases spread over the spectrum (index 0 is the largest).
    sample = []
    for index, name in enumerate(layers):
        if int(name.split(".layers.")[1].split(".")[0]) in args.layers:
            r = params[index].numel()
            sample += [(index, i) for i in sorted({0, 1, 2, r // 8, r // 4, r // 2, 3 * r // 4, r - 1})]
    base = losses()
    per_batch = []
    for index, i in sample:
        with torch.no_grad():
            saved = float(params[index][i])
            params[index][i] = 0.0
            per_batch.append(losses() - base)
            params[index][i] = saved
    per_batch = torch.stack(per_batch)  # (bases, held-out batches)
    measured = per_batch.mean(1)
    # How far the measurement itself ranks reproducibly: its two halves of held-out batches against each
    # other. No predictor can agree with the measured ΔL much better than this.
    half = args.heldout // 2
    reliability = spearman(per_batch[:, :half].mean(1), per_batch[:, half:].mean(1)) if half else float("nan")
    magnitude = torch.tensor([abs(float(params[index][i])) for index, i in sample], dtype=torch.float64)
    b = data.train_batch_size
    print(f"SmolLM2, q/k/o_proj of layers {args.layers}: {len(sample)} bases; held-out loss {float(base.mean()):.4f} on "
          f"{args.heldout} GSM8K train batches of {b} (max_length {args.max_length}), disjoint from the "
          f"estimators' first {most} batches; measured ΔL from {float(measured.min()):+.2e} to "
          f"{float(measured.max()):+.2e}; split-half Spearman of the measurement {reliability:.3f} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    print("| estimator | M batches | K | gradient evaluations | examples | s | Spearman: both | both, no floor "
          "| first | second |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| magnitude \\|s̃\\| (Basel) | | | 0 | | | {spearman(magnitude, measured):.3f} | | | |")
    for name, batches, probes in estimators:
        tic = time.perf_counter()
        importance = TaylorImportance(name, probes, args.eps_scale)
        stats = importance.statistics(model, estimation[:batches], contextlib.nullcontext, seed=probes)
        cells = []
        for variant, floor in (("both", 0.0), ("both", None), ("first", None), ("second", 0.0)):
            h = [x if floor is None else x.clamp(min=floor) for x in stats.hessian_diag]
            scores = torch.stack([taylor_scores(params[index], stats.grad[index], h[index], variant)[i]
                                  for index, i in sample])
            cells.append(f"{spearman(scores, measured):.3f}")
        print(f"| {name} | {batches} | {probes if name == 'hutchinson' else ''} | "
              f"{importance.gradient_evaluations(batches)} | {batches * b} | {time.perf_counter() - tic:.0f} | "
              f"{' | '.join(cells)} |", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
