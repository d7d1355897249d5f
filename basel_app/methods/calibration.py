"""What the one-shot baselines weigh each weight by, measured on batches of the task's training split.

- `activation_statistics`: per layer, the Gram matrix X Xᵀ of its inputs (SVD-LLM) and/or the mean |x|
  per input channel (ASVD), over the real (unpadded) tokens. Both are also what Basel/BSI's data-aware
  bases (`method.init`) are built from.
- `row_fisher`: per layer, Σ over batches of the squared loss gradient of each weight, summed over the
  row's inputs (FWSVD). The gradient is the batch mean's (an empirical Fisher per batch, as FWSVD's
  reference implementation accumulates it), not per-example.

Memory: a Gram matrix takes m² float64 entries per distinct layer input (a Llama block has 3: q/k/v, o,
gate/up, and down's), kept on `stats_device` (the CPU by default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from basel_app.modes import eval_mode


@dataclass
class ActivationStatistics:
    tokens: int = 0
    gram: torch.Tensor | None = None  # (m, m) Σ x xᵀ
    abs_sum: torch.Tensor | None = None  # (m,) Σ |x|

    @property
    def gram_mean(self) -> torch.Tensor:
        """(m, m) X Xᵀ / tokens: per token, so whitened singular values do not grow with the calibration set."""
        if self.gram is None or self.tokens == 0:
            raise ValueError("no Gram statistics were collected")
        return self.gram / self.tokens

    @property
    def abs_mean(self) -> torch.Tensor:
        if self.abs_sum is None or self.tokens == 0:
            raise ValueError("no |x| statistics were collected")
        return self.abs_sum / self.tokens


@torch.no_grad()
def activation_statistics(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    batches: Iterable[dict[str, torch.Tensor]],
    gram: bool,
    abs_mean: bool,
    stats_device: torch.device | str = "cpu",
) -> dict[str, ActivationStatistics]:
    """Run `model` over `batches` (dicts with input_ids, attention_mask) and record each layer's inputs.

    Layers fed the same tensor (q/k/v_proj, gate/up_proj in a Llama block) share one record: its product is
    computed once per batch and its Gram matrix held once (3 of a block's 7 then, not 7). A layer whose input
    is shared in one batch and its own in another is an error, never a double count."""
    stats: dict[str, ActivationStatistics] = {}
    leader: dict[str, str] = {}  # layer -> the layer whose record it shares (itself, if it records)
    # This batch: id(input) -> (the input, held so that its id stays unique; the first layer that took it).
    seen: dict[int, tuple[torch.Tensor, str]] = {}
    current: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            first = seen.setdefault(id(args[0]), (args[0], name))[1]
            if leader.setdefault(name, first) != first:
                raise RuntimeError(f"{name}'s input was {leader[name]}'s in an earlier batch and {first}'s in this one: "
                                   "the layers' statistics cannot share a record")
            if first != name:
                stats[name] = stats[first]
                return
            record = stats.setdefault(name, ActivationStatistics())
            x = args[0][current["mask"]].float()  # (tokens, m): padding excluded
            record.tokens += x.shape[0]
            if gram:
                product = (x.T @ x).to(stats_device, torch.float64)
                record.gram = product if record.gram is None else record.gram.add_(product)
            if abs_mean:
                total = x.abs().sum(0).to(stats_device, torch.float64)
                record.abs_sum = total if record.abs_sum is None else record.abs_sum.add_(total)

        return hook

    handles = [layer.register_forward_pre_hook(recorder(name)) for name, layer in layers.items()]
    with eval_mode(model):
        try:
            for batch in tqdm(batches, desc="calibrate", unit="batch", leave=False):
                current["mask"] = batch["attention_mask"].bool()
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                seen.clear()
        finally:
            for handle in handles:
                handle.remove()
    return {name: stats.get(name, ActivationStatistics()) for name in layers}


def row_fisher(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    batches: Iterable[dict[str, torch.Tensor]],
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """{name: (n,) Σ_batches Σ_j (∂L/∂W_ij)²} in float64, with the model in eval mode (no dropout)."""
    weights = [layer.weight for layer in layers.values()]
    fisher = [torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) for w in weights]
    flags = [w.requires_grad for w in weights]
    with eval_mode(model):
        try:
            for w in weights:
                w.requires_grad_(True)
            for batch in tqdm(batches, desc="fisher", unit="batch", leave=False):
                with torch.enable_grad():
                    grads = torch.autograd.grad(loss_fn(model, batch), weights, allow_unused=True)
                for total, g in zip(fisher, grads):
                    if g is not None:
                        total += g.double().square().sum(1)
        finally:
            for w, flag in zip(weights, flags):
                w.requires_grad_(flag)
    return dict(zip(layers, fisher))
