"""BSI's overhead: one importance estimate per estimator against one keep-phase training step.

The model is reparameterised in every block linear (r̃ = `additional_dim`, full rank). Alternating:

    train_step           one keep-phase step (forward, backward, AdamW) on one batch
    hutchinson|fisher|gnb  `TaylorImportance(hessian).scores` on `batches` batches of the same size
                         (`probes` probes for Hutchinson), under the trainer's default precision context
                         (Hutchinson runs in float32 whatever it is; see `methods.importance`)

The bound each estimate is held to is (its gradient evaluations + 1) × 1.1 training steps: the +1 and the
10% leave room for the forward-only work and the bookkeeping around the backward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from basel_app.bench.measure import alternate, autocast, table
from basel_app.bench.models import load
from basel_app.bench.training_step import Stepper
from basel_app.config.names import BLOCK_LINEARS, HESSIAN_ESTIMATORS
from basel_app.config.schema import TrainerConfig
from basel_app.lit.trainable import reparameterized_parameters
from basel_app.lit.trainer import resolve_precision
from basel_app.lowrank import find_target_linears, reparameterize
from basel_app.methods.importance import TaylorImportance


@dataclass(frozen=True)
class BsiOverheadSettings:
    model: str = "smollm2_135m"
    batch: int = 4
    tokens: int = 256
    additional_dim: int = 16
    batches: int = 1  # M per estimate (a run's: config.schema.DEFAULT_BATCHES; the cost and the bound scale with it)
    probes: int = 1  # K for Hutchinson (a run's default is 8)
    repeats: int = 3
    warmup: int = 1


def run(settings: BsiOverheadSettings) -> dict[str, Any]:
    precision = resolve_precision(TrainerConfig())
    model, _ = load(settings.model)
    reparameterize(model, find_target_linears(model, list(BLOCK_LINEARS)), settings.additional_dim)
    model.train()
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(settings.batches):
        ids = torch.randint(0, model.config.vocab_size, (settings.batch, settings.tokens), generator=generator)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    stepper = Stepper(model, reparameterized_parameters(model), batches[0], precision)

    def context() -> torch.autocast:
        return autocast(precision == "bf16-mixed")

    estimators = {name: TaylorImportance(name, probes=settings.probes) for name in HESSIAN_ESTIMATORS}
    variants = {"train_step": stepper.step}
    variants.update({name: (lambda e=e: e.scores(model, batches, context, seed=0)) for name, e in estimators.items()})
    measured = alternate(variants, settings.repeats, settings.warmup)
    step = measured["train_step"]["seconds"]["median"]
    rows = {}
    for name, m in measured.items():
        m.pop("result")
        evaluations = estimators[name].gradient_evaluations(settings.batches) if name in estimators else 1
        bound = (evaluations + 1) * 1.1 if name in estimators else None
        rows[name] = {**m, "gradient_evaluations": evaluations, "steps": m["seconds"]["median"] / step,
                      "bound_steps": bound}
    return {"settings": settings.__dict__, "precision": precision, "variants": rows}


def render(result: dict[str, Any]) -> str:
    rows = []
    for name, v in result["variants"].items():
        sec = v["seconds"]
        bound = v["bound_steps"]
        rows.append([name, v["gradient_evaluations"], sec["median"], f"{sec['min']:.3g}-{sec['max']:.3g}",
                     f"{v['steps']:.2f}", "" if bound is None else f"{bound:.2f}",
                     "" if bound is None else ("yes" if v["steps"] <= bound else "NO")])
    s = result["settings"]
    return (f"BSI overhead: {s['model']}, M = {s['batches']} batches of {s['batch']}x{s['tokens']}, K = {s['probes']}, "
            f"{result['precision']}\n\n" + table(["work", "gradient evaluations", "s (median)", "s (min-max)",
                                                 "training steps", "bound (steps)", "within"], rows))
