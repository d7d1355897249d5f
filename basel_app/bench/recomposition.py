"""Recomposition by the QR route against a full SVD of the materialised W̃, every layer of the model.

The model is reparameterised in every block linear (r̃ = `additional_dim`), given a trained-like state
(s̃ scaled by a random factor in [0.5, 1.5], Ũ random at the scale of the weights) and pruned to the `kept`
fraction of each layer's bases. Then per layer, in the precision recomposition uses
(`decomposition_dtype`), alternating:

    qr     `thin_svd_of_product(A, B)`: QR of both thin factors, SVD of the k'×k' core
    svd    `torch.linalg.svd(A Bᵀ)`: W̃ formed, then its full SVD, truncated at the same numerical rank

Reported per linear type and for the whole model: seconds (median of the whole-model repeats, summed over
layers), the largest difference between the two reconstructions U diag(S) Vᵀ and between the singular
values, both relative to the largest singular value.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from basel_app.bench.measure import summary, table
from basel_app.bench.models import load
from basel_app.bench.training_step import keep_fraction
from basel_app.config.names import BLOCK_LINEARS
from basel_app.lowrank import decomposition_dtype, find_target_linears, reparameterize
from basel_app.lowrank.recompose import thin_svd_of_product


@dataclass(frozen=True)
class RecompositionSettings:
    model: str = "smollm2_135m"
    additional_dim: int = 16
    kept_fraction: float = 0.5
    repeats: int = 3
    warmup: int = 1


def full_svd(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first `rank` triplets of the SVD of W̃ = A Bᵀ, formed in the precision the QR route uses."""
    dtype = decomposition_dtype(max(a.shape[0], b.shape[0]) * a.shape[1])
    u, s, vh = torch.linalg.svd(a.to(dtype) @ b.to(dtype).T, full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank].T


def _trained_like(layers: dict[str, Any], seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers.values():
            s = layer.singular_values
            s.mul_(0.5 + torch.rand(s.shape, generator=generator))
            scale = float(s.max()) / (layer.out_features ** 0.5 * 10)
            layer.extra_u.copy_(torch.randn(layer.extra_u.shape, generator=generator) * scale)


def run(settings: RecompositionSettings) -> dict[str, Any]:
    model, _ = load(settings.model)
    layers = reparameterize(model, find_target_linears(model, list(BLOCK_LINEARS)), settings.additional_dim)
    _trained_like(layers)
    keep_fraction(model, settings.kept_fraction)
    factors = {name: tuple(f.detach() for f in layer.thin_factors()) for name, layer in layers.items()}
    seconds: dict[str, dict[str, list[float]]] = {route: defaultdict(list) for route in ("qr", "svd")}
    results: dict[str, dict[str, tuple]] = {"qr": {}, "svd": {}}
    for repeat in range(settings.warmup + settings.repeats):
        for name, (a, b) in factors.items():
            start = time.perf_counter()
            results["qr"][name] = thin_svd_of_product(a, b)
            qr_s = time.perf_counter() - start
            start = time.perf_counter()
            results["svd"][name] = full_svd(a, b, results["qr"][name][1].numel())
            svd_s = time.perf_counter() - start
            if repeat >= settings.warmup:
                seconds["qr"][name].append(qr_s)
                seconds["svd"][name].append(svd_s)
    per_layer = {}
    for name in factors:
        (uq, sq, vq), (us, ss, vs) = results["qr"][name], results["svd"][name]
        top = float(ss[0])
        per_layer[name] = {
            "rank": sq.numel(), "shape": [uq.shape[0], vq.shape[0]],
            "qr_s": summary(seconds["qr"][name]), "svd_s": summary(seconds["svd"][name]),
            "max_weight_difference": float(((uq * sq) @ vq.T - (us * ss) @ vs.T).abs().max()) / top,
            "max_singular_value_difference": float((sq - ss).abs().max()) / top,
        }
    return {"settings": settings.__dict__, "dtype": str(results["qr"][next(iter(factors))][1].dtype),
            "layers": per_layer, "whole_model": _totals(per_layer, settings.repeats)}


def _totals(per_layer: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Whole-model seconds per repeat (summed over layers), their summary, and the largest differences."""
    out = {}
    for route in ("qr", "svd"):
        out[route + "_s"] = summary([sum(v[route + "_s"]["samples"][i] for v in per_layer.values())
                                     for i in range(repeats)])
    out["speedup"] = out["svd_s"]["median"] / out["qr_s"]["median"]
    out["max_weight_difference"] = max(v["max_weight_difference"] for v in per_layer.values())
    out["max_singular_value_difference"] = max(v["max_singular_value_difference"] for v in per_layer.values())
    return out


def render(result: dict[str, Any]) -> str:
    by_type: dict[str, dict[str, Any]] = defaultdict(lambda: {"layers": 0, "qr": 0.0, "svd": 0.0, "diff": 0.0})
    for name, v in result["layers"].items():
        row = by_type[name.rsplit(".", 1)[-1]]
        row["layers"] += 1
        row["qr"] += v["qr_s"]["median"]
        row["svd"] += v["svd_s"]["median"]
        row["diff"] = max(row["diff"], v["max_weight_difference"])
    rows = [[t, r["layers"], r["qr"], r["svd"], f"{r['svd'] / r['qr']:.1f}x", f"{r['diff']:.1e}"]
            for t, r in by_type.items()]
    w = result["whole_model"]
    rows.append(["whole model", len(result["layers"]), w["qr_s"]["median"], w["svd_s"]["median"],
                 f"{w['speedup']:.1f}x", f"{w['max_weight_difference']:.1e}"])
    s = result["settings"]
    return (f"recomposition: {s['model']}, {s['kept_fraction']:g} of the bases kept, r̃ = {s['additional_dim']}, "
            f"{result['dtype']}\n\n" + table(["layers", "count", "QR route s", "full SVD s", "speed-up",
                                               "max |ΔW̃| / σ_max"], rows))
