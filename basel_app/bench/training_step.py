"""One keep-phase training step of the reparameterised model against one dense AdamW fine-tuning step.

Every linear of every decoder layer is a `BaselLinear` (r̃ = `additional_dim`), first at full rank, then
with `kept` fractions of each layer's bases (the largest |s̃|, as magnitude pruning keeps them). Per kept
fraction, one round-robin of:

    dense          the input model, every parameter trains (plain fine-tuning)
    keep_step      s̃, Ũ, Ṽ train; each layer takes the path a run takes (`cheaper_path` for its shape and rank)
    factored       the same, each layer forced through U_k(s̃ ⊙ V_kᵀx) + Ũ(Ṽᵀx)
    materialised   the same, each layer forced through W̃ = U_k diag(s̃) V_kᵀ + ŨṼᵀ, then W̃x
    keep_step_fp32_bases   keep_step with the frozen U, V held in float32 (before `store_frozen_bases`)

A step is forward, backward, AdamW step, under the precision a run's trainer defaults to here
(`resolve_precision`; autocast around the forward, as Lightning does), with the frozen bases held in its
autocast dtype as a run holds them. Memory is reported in two parts:
what the step keeps between steps (parameters, gradients, AdamW state: counted tensor by tensor) and the
step's own peak above that (activations and temporaries: measured). FLOPs are counted by
`torch.utils.flop_counter` on one extra step (forward + backward; AdamW's elementwise work is not a FLOP
it counts).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from basel_app.bench.measure import alternate, autocast, table
from basel_app.bench.models import load
from basel_app.config.names import BLOCK_LINEARS
from basel_app.config.schema import TrainerConfig
from basel_app.lit.trainable import all_parameters, reparameterized_parameters
from basel_app.lit.trainer import mixed_precision_dtype, resolve_precision
from basel_app.lowrank import (
    BaselLinear, basel_layers, find_target_linears, reparameterize, set_trainable, store_frozen_bases,
)

# Row name: the BaselLinear path every layer is forced through (None: each picks its own, as in a run).
PATHS = {"keep_step": None, "factored": "factored", "materialised": "dense"}


@dataclass(frozen=True)
class TrainingStepSettings:
    model: str = "smollm2_135m"
    batch: int = 4
    tokens: int = 256
    additional_dim: int = 16
    kept: str = "1,0.5,0.25"  # fractions of each layer's bases kept, measured in this order
    repeats: int = 3
    warmup: int = 1


@contextlib.contextmanager
def forced_path(model: nn.Module, path: str) -> Iterator[None]:
    """Every BaselLinear of `model` runs `path` while the block runs (an instance-level forward)."""
    layers = list(basel_layers(model).values())
    for layer in layers:
        layer.forward = functools.partial(BaselLinear.forward, layer, path=path)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def keep_fraction(model: nn.Module, fraction: float) -> None:
    """Prune each BaselLinear to the ceil(fraction × r) bases of largest |s̃|."""
    for layer in basel_layers(model).values():
        s = layer.singular_values.detach().abs()
        keep = torch.zeros_like(layer.keep_mask)
        keep[s.topk(max(1, math.ceil(s.numel() * fraction))).indices] = True
        layer.prune(keep & layer.keep_mask)


class Stepper:
    """One model, its trainable parameters and their AdamW: `step()` is one training step."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], batch: dict[str, torch.Tensor],
                 precision: str, path: str | None = None, narrow_bases: bool = True) -> None:
        self.model, self.batch, self.path = model, batch, path
        self.params = set_trainable(model, params)
        if narrow_bases and (narrow := mixed_precision_dtype(precision)) is not None:
            store_frozen_bases(model, narrow)  # as CompressionModule.configure_model does
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5)
        self.bf16 = precision == "bf16-mixed"

    def _loss(self) -> torch.Tensor:
        paths = forced_path(self.model, self.path) if self.path else contextlib.nullcontext()
        with paths, autocast(self.bf16):
            return self.model(**self.batch).loss

    def step(self) -> None:
        set_trainable(self.model, self.params)  # models share nothing, but the rule is applied per step
        self._loss().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)

    def flops(self) -> int:
        with FlopCounterMode(display=False) as counter:
            self._loss().backward()
        self.optimizer.zero_grad(set_to_none=False)
        return counter.get_total_flops()

    def kept_bytes(self) -> int:
        """Parameters, gradients and AdamW state held between steps."""
        tensors = [*self.model.parameters(), *(p.grad for p in self.params if p.grad is not None)]
        tensors += [t for state in self.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def run(settings: TrainingStepSettings) -> dict[str, Any]:
    precision = resolve_precision(TrainerConfig())
    dense, _ = load(settings.model)
    dense.train()
    torch.manual_seed(0)
    ids = torch.randint(0, dense.config.vocab_size, (settings.batch, settings.tokens))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    reparam = copy.deepcopy(dense)
    reparameterize(reparam, find_target_linears(reparam, list(BLOCK_LINEARS)), settings.additional_dim)
    wide = copy.deepcopy(reparam)
    steppers = {"dense": Stepper(dense, all_parameters(dense), batch, precision)}
    for name, path in PATHS.items():
        steppers[name] = Stepper(reparam, reparameterized_parameters(reparam), batch, precision, path)
    steppers["keep_step_fp32_bases"] = Stepper(wide, reparameterized_parameters(wide), batch, precision,
                                               narrow_bases=False)
    groups = []
    for fraction in (float(f) for f in settings.kept.split(",")):
        keep_fraction(reparam, fraction)
        keep_fraction(wide, fraction)
        measured = alternate({name: s.step for name, s in steppers.items()}, settings.repeats, settings.warmup)
        rows = {}
        for name, stepper in steppers.items():
            m = measured[name]
            m.pop("result")
            rows[name] = {
                **m, "kept_bytes": stepper.kept_bytes(), "flops": stepper.flops(),
                "time_vs_dense": m["seconds"]["median"] / measured["dense"]["seconds"]["median"],
            }
        for row in rows.values():
            row["memory_vs_dense"] = ((row["kept_bytes"] + row["peak_bytes"])
                                      / (rows["dense"]["kept_bytes"] + rows["dense"]["peak_bytes"]))
        kept = sum(layer.kept_rank for layer in basel_layers(reparam).values())
        full = sum(layer.keep_mask.numel() for layer in basel_layers(reparam).values())
        groups.append({"kept_fraction": fraction, "kept_bases": kept, "bases": full, "variants": rows})
    return {"settings": settings.__dict__, "precision": precision, "tokens_per_step": ids.numel(), "groups": groups}


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    rows = []
    for group in result["groups"]:
        for name, v in group["variants"].items():
            sec = v["seconds"]
            rows.append([f"{group['kept_fraction']:g}", name, sec["median"], f"{sec['min']:.3g}-{sec['max']:.3g}",
                         f"{v['time_vs_dense']:.2f}x", (v["kept_bytes"] + v["peak_bytes"]) / 2**20,
                         f"{v['memory_vs_dense']:.2f}x", v["flops"] / 1e9])
    header = ["kept", "step", "s (median)", "s (min-max)", "time / dense", "memory MB", "memory / dense", "GFLOP"]
    return (f"training step: {s['model']}, {s['batch']}x{s['tokens']} tokens, {result['precision']}, "
            f"r̃ = {s['additional_dim']}\n\n" + table(header, rows))
