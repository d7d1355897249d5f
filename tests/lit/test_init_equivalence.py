"""The invariant of `method.init` (METHODS.md, data-aware bases): Basel on whitened bases, with zero
training steps and the same budget, is SVD-LLM without post-fine-tuning (same masks, same logits); and
on ASVD's bases it is ASVD. Tiny random Llama in float64, r̃ = 0, every linear layer targeted."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from basel_app.config.schema import MethodConfig
from basel_app.lit.callbacks import MagnitudeScorer, PruneScheduler, full_rank_weights
from basel_app.lowrank import LowRankLinear, break_even_rank, basel_layers, recompose_model, reparameterize
from basel_app.methods.budget import fixed_parameters, resolve_budget
from basel_app.methods.one_shot import INIT_FACTORIZATIONS, factorize_layers, truncate_layers

from ..lowrank.helpers import LLAMA_TARGETS, tiny_llama

TOL = 1e-9  # float64 end to end: rounding only


def calibration_batches(seed: int) -> list[dict[str, torch.Tensor]]:
    """Four batches of two sequences, the second padded, as the datamodule's calibration batches are."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(4):
        mask = torch.ones(2, 24, dtype=torch.long)
        mask[1, 17:] = 0
        batches.append({"input_ids": torch.randint(0, 128, (2, 24), generator=gen), "attention_mask": mask})
    return batches


def targets_of(model):
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.endswith(tuple(LLAMA_TARGETS))}


def one_shot(model, method: str, budget, batches):
    """The baseline's stage 1: factor on calibration batches, truncate to the budget; {name: rank}."""
    targets = targets_of(model)
    factors = factorize_layers(method, model, targets, lambda: batches, loss_fn=None)
    return truncate_layers(model, targets, factors, budget)


def basel_at_step_zero(model, init: str, budget, batches):
    """Basel's stage 1 with no training: reparameterize on the init's bases (r̃ = 0), one pruning event
    straight to the budget (PruneScheduler, magnitude scorer), recompose. Returns the keep masks."""
    factors = None
    if init != "svd":
        factors = factorize_layers(INIT_FACTORIZATIONS[init], model, targets_of(model), lambda: batches, loss_fn=None)
    reparameterize(model, targets_of(model), additional_dim=0, factorizations=factors)
    scheduler = PruneScheduler(budget, MagnitudeScorer(), pruning_times=1, start_step=0, phase_steps=1, every=1,
                               start_weights=full_rank_weights(model))
    trainer = SimpleNamespace(global_step=1, global_rank=0)
    scheduler.on_train_batch_end(trainer, SimpleNamespace(model=model, log_dict=lambda *a, **k: None))
    masks = {name: layer.keep_mask.clone() for name, layer in basel_layers(model).items()}
    recompose_model(model)
    return masks


@pytest.mark.parametrize("budget_kind", ["compression_ratio", "keep_ratio"])
@pytest.mark.parametrize("init,baseline", [("whitened", "svd_llm"), ("asvd", "asvd")])
def test_basel_on_data_aware_bases_at_step_zero_is_the_one_shot_baseline(init, baseline, budget_kind):
    dense = tiny_llama(seed=3).double()
    targets = targets_of(dense)
    method = MethodConfig(compression_ratio=1.6 if budget_kind == "compression_ratio" else None, keep_ratio=0.3)
    original = sum(p.numel() for p in dense.parameters())
    budget = resolve_budget(method, original, fixed_parameters(dense, targets), targets, extra=0)
    batches = calibration_batches(seed=7)

    baseline_model, basel_model, svd_model = (copy.deepcopy(dense) for _ in range(3))
    ranks = one_shot(baseline_model, baseline, budget, batches)
    masks = basel_at_step_zero(basel_model, init, budget, batches)

    # Same masks: whitened σ is descending, so the baseline keeps a prefix; Basel must keep the same one.
    assert set(masks) == set(ranks) == set(targets)
    for name, mask in masks.items():
        assert torch.equal(mask, torch.arange(mask.numel()) < ranks[name]), name
    # The budget truncates, and every layer is thin (at break-even the baseline keeps the original weight
    # while Basel stores its truncated W̃; a budget there would compare different things).
    assert all(rank < break_even_rank(t.out_features, t.in_features) for rank, t in zip(ranks.values(), targets.values()))
    assert all(isinstance(basel_model.get_submodule(name), LowRankLinear) for name in targets)

    ids = torch.randint(0, 128, (3, 20), generator=torch.Generator().manual_seed(11))  # fresh inputs
    with torch.no_grad():
        expected, actual = baseline_model(ids).logits, basel_model(ids).logits
        reference = dense(ids).logits
    torch.testing.assert_close(actual, expected, rtol=TOL, atol=TOL)
    assert float((expected - reference).abs().max()) > 1e-3  # the truncation changed the model

    # Control: from the plain SVD (the paper's init) step zero is not the baseline.
    svd_masks = basel_at_step_zero(svd_model, "svd", budget, batches)
    with torch.no_grad():
        svd_logits = svd_model(ids).logits
    assert float((svd_logits - expected).abs().max()) > 1e-3
    assert svd_masks.keys() == masks.keys()
