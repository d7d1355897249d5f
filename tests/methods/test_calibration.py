"""The calibration statistics against a reference built from each layer's captured inputs, on fresh random
batches with padding: layers that share an input (q/k/v, gate/up) share one product per batch, and must still
get exactly their own statistics."""

from __future__ import annotations

import torch

from basel_app.lowrank import find_target_linears
from basel_app.methods.calibration import activation_statistics

from ..lowrank.helpers import tiny_llama

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def padded_batches(gen: torch.Generator, count: int = 3) -> list[dict[str, torch.Tensor]]:
    batches = []
    for _ in range(count):
        ids = torch.randint(0, 128, (2, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 12 - int(torch.randint(1, 8, (1,), generator=gen)):] = 0  # a shorter second row
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


@torch.no_grad()
def test_gram_and_mean_abs_equal_those_of_the_captured_inputs():
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    model = tiny_llama(seed=int(torch.randint(0, 1000, (1,), generator=gen)))
    targets = find_target_linears(model, LINEARS)
    batches = padded_batches(gen)

    captured: dict[str, list[torch.Tensor]] = {name: [] for name in targets}
    hooks = [layer.register_forward_pre_hook(lambda _m, args, name=name: captured[name].append(args[0].clone()))
             for name, layer in targets.items()]
    for batch in batches:
        model(**batch)
    for hook in hooks:
        hook.remove()

    stats = activation_statistics(model, targets, batches, gram=True, abs_mean=True)
    for name in targets:
        x = torch.cat([inputs[b["attention_mask"].bool()] for inputs, b in zip(captured[name], batches)]).double()
        assert stats[name].tokens == x.shape[0] == sum(int(b["attention_mask"].sum()) for b in batches)
        gram = x.T @ x  # float64; the statistics multiply in float32: ~1e-7 of the largest entry per product
        torch.testing.assert_close(stats[name].gram, gram, rtol=0, atol=1e-5 * gram.abs().max().item())
        torch.testing.assert_close(stats[name].abs_sum, x.abs().sum(0), rtol=1e-5, atol=1e-6)
    # q and v_proj share their input, o_proj does not: the shared product is the same, the other differs.
    layer0 = "model.layers.0.self_attn."
    assert torch.equal(stats[layer0 + "q_proj"].gram, stats[layer0 + "v_proj"].gram)
    assert not torch.equal(stats[layer0 + "q_proj"].gram, stats[layer0 + "o_proj"].gram)
