"""Which perturbation scale makes BSI's finite-difference H d closest to the exact one, in float32.

On SmolLM2 reparameterized as the CPU profile does (q/k/o_proj), for GSM8K training batches: one
Rademacher probe d = ε ⊙ z with ε = scale × RMS(s̃) per layer, and the relative error of the symmetric
finite difference against the double-backward H d, for a range of scales. Too small a scale and float32
rounding of the gradient difference dominates; too large and the O(ε²) term does.

    .venv/bin/python benchmarks/bsi_epsilon.py --batches 2 --scales 1e-1 3e-2 1e-2 3e-3 1e-3 1e-4
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf
from torch.nn.attention import SDPBackend, sdpa_kernel

from basel_app.config.schema import ModelConfig, TaskConfig
from basel_app.data import TaskDataModule
from basel_app.lowrank import basel_layers, find_target_linears, reparameterize
from basel_app.methods.taylor import hvp_double_backward, hvp_finite_difference
from basel_app.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--scales", type=float, nargs="+", default=[1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4])
    parser.add_argument("--targets", nargs="+", default=["q_proj", "k_proj", "o_proj"])
    args = parser.parse_args()

    start = time.perf_counter()
    loaded = load_model(OmegaConf.to_object(OmegaConf.structured(ModelConfig)))
    task = OmegaConf.to_object(OmegaConf.structured(TaskConfig(max_train_samples=64, max_length=256, train_batch_size=2)))
    data = TaskDataModule.from_config(task, seed=0)
    data.load_records()
    data.attach_tokenizer(loaded.tokenizer)
    data.setup("fit")
    model = loaded.model.eval()
    reparameterize(model, find_target_linears(model, args.targets), additional_dim=16)
    params = [layer.singular_values for layer in basel_layers(model).values()]
    rms = [float(p.detach().square().mean().sqrt()) for p in params]

    def loss_fn(batch):
        with sdpa_kernel(SDPBackend.MATH):
            return model(**batch).loss

    print(f"SmolLM2 float32, {len(params)} layers ({', '.join(args.targets)}), {args.batches} GSM8K train batches "
          "of 2; relative error of the finite-difference H d vs double backward")
    print(f"{'scale':>8} " + " ".join(f"{'batch ' + str(i):>10}" for i in range(args.batches)))
    batches = data.calibration_batches(args.batches, seed=0)
    gen = torch.Generator().manual_seed(0)
    probes = [[torch.randint(0, 2, p.shape, generator=gen).float() * 2 - 1 for p in params] for _ in batches]
    exact = []
    for batch, z in zip(batches, probes):
        d = [1e-2 * r * zi for r, zi in zip(rms, z)]  # H d is linear in d: compute once, rescale
        exact.append(torch.cat([h.flatten() for h in hvp_double_backward(loss_fn, params, d, batch)]) / 1e-2)
    for scale in args.scales:
        errors = []
        for batch, z, reference in zip(batches, probes, exact):
            d = [scale * r * zi for r, zi in zip(rms, z)]
            approx = torch.cat([h.flatten() for h in hvp_finite_difference(loss_fn, params, d, batch)]) / scale
            errors.append(float((approx - reference).norm() / reference.norm()))
        print(f"{scale:8.0e} " + " ".join(f"{e:10.2e}" for e in errors), flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
