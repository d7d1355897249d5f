"""What the one-shot baselines weigh each weight by, measured on batches of the task's training split.

- `activation_statistics`: per layer, the Gram matrix X Xᵀ of its inputs (SVD-LLM) and/or the mean |x|
  per input channel (ASVD), over the real (unpadded) tokens. Both are also what Basel/BSI's data-aware
  bases (`method.init`) are built from.
- `row_fisher`: per layer, Σ over batches of the squared loss gradient of each weight, summed over the
  row's inputs (FWSVD). The gradient is the batch mean's (an empirical Fisher per batch, as FWSVD's
  reference implementation accumulates it), not per-example.

Memory: a Gram matrix takes m² float64 entries per layer, kept on `stats_device` (the CPU by default).
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

    Layers fed the same tensor (q/k/v_proj, gate/up_proj in a Llama block) share one product per batch: that
    leaves 4 of a block's 7 Gram matrices to compute."""
    stats = {name: ActivationStatistics() for name in layers}
    current: dict[str, torch.Tensor] = {}
    # This batch's products per input tensor, keyed by id; the tensor is held so that its id stays unique.
    shared: dict[int, tuple[torch.Tensor, int, torch.Tensor | None, torch.Tensor | None]] = {}

    def products(inputs: torch.Tensor) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        if id(inputs) not in shared:
            x = inputs[current["mask"]].float()  # (tokens, m): padding excluded
            shared[id(inputs)] = (
                inputs,
                x.shape[0],
                (x.T @ x).to(stats_device, torch.float64) if gram else None,
                x.abs().sum(0).to(stats_device, torch.float64) if abs_mean else None,
            )
        return shared[id(inputs)][1:]

    def recorder(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            tokens, gram_update, abs_update = products(args[0])
            record = stats[name]
            record.tokens += tokens
            if gram_update is not None:
                record.gram = gram_update if record.gram is None else record.gram + gram_update
            if abs_update is not None:
                record.abs_sum = abs_update if record.abs_sum is None else record.abs_sum + abs_update

        return hook

    handles = [layer.register_forward_pre_hook(recorder(name)) for name, layer in layers.items()]
    with eval_mode(model):
        try:
            for batch in tqdm(batches, desc="calibrate", unit="batch", leave=False):
                current["mask"] = batch["attention_mask"].bool()
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                shared.clear()
        finally:
            for handle in handles:
                handle.remove()
    return stats


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
