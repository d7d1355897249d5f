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


@torch.no_grad()
def test_layers_fed_one_input_share_one_record_and_a_changed_sharing_is_refused():
    model = tiny_llama(seed=3)
    targets = find_target_linears(model, LINEARS)
    stats = activation_statistics(model, targets, padded_batches(torch.Generator().manual_seed(5)), gram=True,
                                  abs_mean=False)
    for block in ("model.layers.0.", "model.layers.1."):
        attn, mlp = block + "self_attn.", block + "mlp."
        assert stats[attn + "q_proj"] is stats[attn + "k_proj"] is stats[attn + "v_proj"]
        assert stats[mlp + "gate_proj"] is stats[mlp + "up_proj"]
        distinct = {id(stats[attn + "q_proj"]), id(stats[attn + "o_proj"]), id(stats[mlp + "gate_proj"]),
                    id(stats[mlp + "down_proj"])}
        assert len(distinct) == 4  # a Llama block holds 4 Gram matrices, not 7

    # k_proj fed its own copy of the input from the second batch on: sharing q's record would count twice.
    k_proj = targets["model.layers.0.self_attn.k_proj"]
    calls = {"n": 0}

    def own_copy(module, args):
        calls["n"] += 1
        return (args[0].clone(),) if calls["n"] > 1 else None

    k_proj.register_forward_pre_hook(own_copy, prepend=True)
    try:
        activation_statistics(model, targets, padded_batches(torch.Generator().manual_seed(6)), gram=True,
                              abs_mean=False)
    except RuntimeError as err:
        assert "k_proj's input was" in str(err) and "q_proj" in str(err)
    else:
        raise AssertionError("a sharing that changed between batches was not refused")


@torch.no_grad()
def test_one_decoder_layer_at_a_time_gives_the_whole_forwards_statistics_and_never_runs_the_head():
    model = tiny_llama(seed=8)
    targets = find_target_linears(model, LINEARS)
    batches = padded_batches(torch.Generator().manual_seed(9))
    head_calls = []
    handle = model.lm_head.register_forward_pre_hook(lambda module, args: head_calls.append(1))
    by_layer = activation_statistics(model, targets, batches, gram=True, abs_mean=True)
    handle.remove()
    assert head_calls == []  # the layer-by-layer path stops at the first decoder layer's inputs
    # A targeted head is outside every decoder layer: the statistics come from whole forwards instead.
    with_head = {**targets, "lm_head": model.lm_head}
    whole = activation_statistics(model, with_head, batches, gram=True, abs_mean=True)
    assert whole["lm_head"].tokens == by_layer[next(iter(targets))].tokens
    for name in targets:
        scale = whole[name].gram.abs().max().item()
        torch.testing.assert_close(by_layer[name].gram, whole[name].gram, rtol=0, atol=1e-6 * scale)
        torch.testing.assert_close(by_layer[name].abs_sum, whole[name].abs_sum, rtol=1e-6, atol=1e-6)
