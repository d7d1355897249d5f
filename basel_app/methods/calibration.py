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
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from basel_app.modes import eval_mode
from basel_app.spread import moved as moved_to


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
    device: torch.device | None = None,
) -> dict[str, ActivationStatistics]:
    """Run `model` over `batches` (dicts with input_ids, attention_mask) and record each layer's inputs.

    When every layer is inside a decoder layer (`model.model.layers`), the model runs one decoder layer at a
    time over all batches, on `device` (an accelerator; default: where the model is), as SVD-LLM's
    low-resource path does: the inputs of the first decoder layer are captured once, and each layer's outputs
    are the next one's inputs, so only one layer and the batches' hidden states are ever on `device`. Other
    layers (a targeted head) get a whole forward per batch instead. Both compute the same statistics.

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
                raise RuntimeError(f"{name}'s input was {leader[name]}'s in an earlier batch and {first}'s in this "
                                   "one: the layers' statistics cannot share a record")
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

    blocks = getattr(getattr(model, "model", None), "layers", None)
    inside = {} if blocks is None else {id(m): block for block in blocks for m in block.modules()}
    with eval_mode(model):
        if blocks is not None and all(id(layer) in inside for layer in layers.values()):
            inputs = first_block_inputs(model, blocks[0], batches, device)
            for block in tqdm(blocks, desc="calibrate", unit="layer", leave=False):
                handles = [layer.register_forward_pre_hook(recorder(name))
                           for name, layer in layers.items() if inside[id(layer)] is block]
                home = next(block.parameters()).device
                block.to(inputs[0][0].device)
                try:
                    for i, (hidden, kwargs, mask) in enumerate(inputs):
                        current["mask"] = mask
                        out = block(hidden, **kwargs)
                        inputs[i] = (out[0] if isinstance(out, tuple) else out, kwargs, mask)
                        seen.clear()
                finally:
                    block.to(home)
                    for handle in handles:
                        handle.remove()
        else:
            handles = [layer.register_forward_pre_hook(recorder(name)) for name, layer in layers.items()]
            try:
                for batch in tqdm(batches, desc="calibrate", unit="batch", leave=False):
                    current["mask"] = batch["attention_mask"].bool()
                    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                    seen.clear()
            finally:
                for handle in handles:
                    handle.remove()
    return {name: stats.get(name, ActivationStatistics()) for name in layers}


class _Captured(Exception):
    """Stops a forward once the first decoder layer's inputs are in hand."""


def first_block_inputs(
    model: nn.Module, first: nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device | None
) -> list[tuple[torch.Tensor, dict[str, Any], torch.Tensor]]:
    """Each batch's (hidden states, keyword arguments, padding mask) as the first decoder layer gets them
    (the causal mask and rotary embeddings among the keywords), moved to `device`; nothing after the
    embedding runs."""
    captured: list[tuple[tuple, dict[str, Any]]] = []

    def capture(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        captured.append((args, kwargs))
        raise _Captured

    handle = first.register_forward_pre_hook(capture, with_kwargs=True)
    inputs = []
    try:
        for batch in batches:
            try:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            except _Captured:
                pass
            args, kwargs = captured.pop()
            hidden = args[0] if args else kwargs.pop("hidden_states")
            target = device or hidden.device
            moved = {k: moved_to(v, target) for k, v in kwargs.items()}
            inputs.append((hidden.to(target), moved, batch["attention_mask"].bool().to(target)))
    finally:
        handle.remove()
    return inputs


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
