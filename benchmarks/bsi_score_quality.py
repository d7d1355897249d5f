"""Does BSI's score predict what removing a basis really costs? Predicted ΔL against the measured one.

SmolLM2 reparameterized on q/k/o_proj as the CPU profile does; for a sample of bases (a few layers, bases
from the top, middle and bottom of each spectrum) the loss change of zeroing each one alone is measured on
the same GSM8K training batches the estimator sees. Each predictor is scored by its Spearman rank
correlation with the measured change (1 = orders the bases exactly as their true cost does): the
magnitude |s̃| (Basel's rule), and BSI's Taylor score and its two terms at several probe counts K.

    .venv/bin/python benchmarks/bsi_score_quality.py --batches 2 --probes 2 8 32
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from basel_app.config.schema import ModelConfig, TaskConfig
from basel_app.data import TaskDataModule
from basel_app.lowrank import find_target_linears, reparameterize
from basel_app.methods.taylor import estimate_taylor_statistics, taylor_scores
from basel_app.models import load_model


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [x.double().argsort().argsort().double() for x in (a, b)]
    ranks = [r - r.mean() for r in ranks]
    return float((ranks[0] * ranks[1]).sum() / (ranks[0].norm() * ranks[1].norm()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--probes", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 10, 20, 29])
    parser.add_argument("--eps-scale", type=float, default=1e-3)
    args = parser.parse_args()

    start = time.perf_counter()
    loaded = load_model(OmegaConf.to_object(OmegaConf.structured(ModelConfig)))
    task = OmegaConf.to_object(OmegaConf.structured(TaskConfig(max_train_samples=64, max_length=256)))
    data = TaskDataModule.from_config(task, seed=0)
    data.load_records()
    data.attach_tokenizer(loaded.tokenizer)
    data.setup("fit")
    model = loaded.model.eval()
    layers = reparameterize(model, find_target_linears(model, ["q_proj", "k_proj", "o_proj"]), additional_dim=0)
    params = [layer.singular_values for layer in layers.values()]
    eps = [torch.full_like(p, args.eps_scale * float(p.detach().square().mean().sqrt())) for p in params]
    batches = data.calibration_batches(args.batches, seed=0)

    def loss_fn(batch) -> torch.Tensor:
        return model(**batch).loss

    @torch.no_grad()
    def mean_loss() -> float:
        return sum(float(loss_fn(b)) for b in batches) / len(batches)

    # The sample: in each chosen layer, bases spread over the spectrum (index 0 is the largest).
    names = list(layers)
    sample = []
    for index, name in enumerate(names):
        if int(name.split(".layers.")[1].split(".")[0]) in args.layers:
            r = params[index].numel()
            sample += [(index, i) for i in sorted({0, 1, 2, r // 8, r // 4, r // 2, 3 * r // 4, r - 1})]
    base = mean_loss()
    measured = []
    for index, i in sample:
        with torch.no_grad():
            saved = float(params[index][i])
            params[index][i] = 0.0
            measured.append(mean_loss() - base)
            params[index][i] = saved
    measured = torch.tensor(measured, dtype=torch.float64)
    magnitude = torch.tensor([abs(float(params[index][i])) for index, i in sample], dtype=torch.float64)
    print(f"SmolLM2, q/k/o_proj of layers {args.layers}: {len(sample)} bases; loss {base:.4f} on {args.batches} GSM8K "
          f"train batches of {data.train_batch_size}; measured ΔL from {float(measured.min()):+.2e} to "
          f"{float(measured.max()):+.2e}")
    print("| predictor | K | Spearman with measured ΔL | mean relative stderr of diag(H) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| magnitude \\|s̃\\| (Basel) | | {spearman(magnitude, measured):.3f} | |")
    for probes in args.probes:
        stats = estimate_taylor_statistics(loss_fn, params, batches, probes, eps,
                                           generator=torch.Generator().manual_seed(probes))
        rel = [float((se / h.abs().clamp(min=1e-30)).median()) for h, se in zip(stats.hessian_diag, stats.hessian_stderr)]
        for variant in ("both", "first", "second"):
            scores = [taylor_scores(params[index], stats.grad[index], stats.hessian_diag[index], variant)[i]
                      for index, i in sample]
            print(f"| Taylor {variant} | {probes} | {spearman(torch.stack(scores), measured):.3f} | "
                  f"{sum(rel) / len(rel):.2f} |", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
