"""BSI's Fisher and GNB curvature against autograd one example at a time, GNB's expectation against the exact
Gauss-Newton diagonal, and the estimator object's floor, EMA, precision and state."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaForCausalLM

from basel_app.lowrank import basel_layers, find_target_linears, reparameterize
from basel_app.methods.importance import (
    ESTIMATOR_COSTS,
    IGNORE_INDEX,
    TaylorImportance,
    answer_token_losses,
    outer_product_statistics,
    per_batch_generators,
    sampled_labels,
)
from basel_app.methods.taylor import TaylorStatistics, taylor_scores

from ..tiny_llama import tiny_llama_config

ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SMALL = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)


def pruned_llama(seed: int, dtype: torch.dtype = torch.float64, **shape) -> LlamaForCausalLM:
    """A tiny Llama, every decoder linear reparameterized with r̃ = 2, Ũ moved off zero, a third of each
    layer's bases pruned (at random, so kept and pruned interleave)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(64, **shape)).to(dtype).eval()
    reparameterize(model, find_target_linears(model, ALL_LINEARS), additional_dim=2, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in basel_layers(model).values():
            layer.extra_u.normal_(0, 0.05, generator=gen)
            r = layer.keep_mask.numel()
            layer.prune(torch.randperm(r, generator=gen) >= r // 3)
    return model


def task_batch(seed: int, examples: int = 3, length: int = 12) -> dict[str, torch.Tensor]:
    """Prompt then answer (labels only on the answer), right padding of different lengths, as the data
    module makes them."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (examples, length), generator=gen)
    attention = torch.ones_like(ids)
    labels = ids.clone()
    for n in range(examples):
        prompt, pad = 3 + n, n  # a different split and padding per example
        labels[n, :prompt] = IGNORE_INDEX
        if pad:
            attention[n, -pad:] = 0
            labels[n, -pad:] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def one_example(batch: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {k: v[n : n + 1] for k, v in batch.items()}


def singular_values(model) -> list[torch.Tensor]:
    return [layer.singular_values for layer in basel_layers(model).values()]


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def exact_example_gradient(model, example: dict[str, torch.Tensor]) -> torch.Tensor:
    """∂/∂s̃ of the example's summed answer-token loss, by autograd on that example alone."""
    logits = model(input_ids=example["input_ids"], attention_mask=example["attention_mask"]).logits
    loss = answer_token_losses(logits, example["labels"]).sum()
    grads = torch.autograd.grad(loss, singular_values(model), allow_unused=True)
    return flat([torch.zeros_like(p) if g is None else g for p, g in zip(singular_values(model), grads)])


def answer_tokens(batches) -> int:
    return sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)


def test_fisher_equals_the_squares_of_exact_per_example_gradients_in_float64():
    model = pruned_llama(seed=0)
    layers = basel_layers(model)
    batches = [task_batch(1), task_batch(2, examples=2)]
    stats = outer_product_statistics(model, layers, batches, contextlib.nullcontext)
    per_example = torch.stack([exact_example_gradient(model, one_example(b, n))
                               for b in batches for n in range(b["input_ids"].shape[0])])
    tokens = answer_tokens(batches)
    torch.testing.assert_close(flat(stats.grad), per_example.sum(0) / tokens, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(flat(stats.hessian_diag), per_example.square().sum(0) / tokens, rtol=1e-10, atol=1e-13)
    assert stats.samples == 5
    # Pruned bases carry no gradient and no curvature; kept ones do.
    pruned = flat([~layer.keep_mask for layer in layers.values()])
    assert bool((flat(stats.hessian_diag)[pruned] == 0).all()) and bool((flat(stats.hessian_diag)[~pruned] > 0).all())
    # Standard errors: the spread of the per-example samples, scaled like the estimate (5 examples / N tokens).
    scale = 5 / tokens
    torch.testing.assert_close(flat(stats.grad_stderr), per_example.std(0) / 5**0.5 * scale, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(flat(stats.hessian_stderr), per_example.square().std(0) / 5**0.5 * scale,
                               rtol=1e-8, atol=1e-14)


def test_gnb_draws_answer_labels_reproducibly_and_differentiates_them():
    model = pruned_llama(seed=3, **SMALL)
    batch = task_batch(4)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    draw = [sampled_labels(logits, batch["labels"], per_batch_generators(torch.Generator().manual_seed(s), 1)[0])
            for s in (7, 7, 8)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
    answer = batch["labels"] != IGNORE_INDEX
    assert torch.equal(draw[0][~answer], batch["labels"][~answer])  # prompt, padding and the first token kept
    # GNB's diag(H) is the Fisher of the drawn labels; its gradient is still the true labels' one.
    layers = basel_layers(model)
    gnb = outer_product_statistics(model, layers, [batch], contextlib.nullcontext, torch.Generator().manual_seed(7))
    drawn_batch = {**batch, "labels": draw[0]}
    per_example = torch.stack([exact_example_gradient(model, one_example(drawn_batch, n)) for n in range(3)])
    fisher = outer_product_statistics(model, layers, [batch], contextlib.nullcontext)
    torch.testing.assert_close(flat(gnb.hessian_diag), per_example.square().sum(0) / answer_tokens([batch]))
    torch.testing.assert_close(flat(gnb.grad), flat(fisher.grad))


def exact_gauss_newton_diagonal(model, batch) -> torch.Tensor:
    """(1/N) Σ_t diag(J_tᵀ (diag p_t − p_t p_tᵀ) J_t) over answer tokens t, with J_t = ∂logits_t/∂s̃, written
    as Σ_k p_tk (J_tᵀ(p_t − e_k))²: the squared gradient of token t's loss had its label been k."""
    params = singular_values(model)
    with sdpa_kernel(SDPBackend.MATH):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    where = batch["labels"][:, 1:] != IGNORE_INDEX
    z = logits[:, :-1][where]  # (N, vocab)
    p = torch.softmax(z, -1).detach()
    diag = torch.zeros(sum(q.numel() for q in params), dtype=torch.float64)
    for t in range(z.shape[0]):
        # ∂CE_t(k)/∂z_t = p_t − e_k for every k at once, as a batch of vector-Jacobian products.
        outputs = torch.zeros((z.shape[1], *z.shape), dtype=z.dtype)
        outputs[:, t] = p[t] - torch.eye(z.shape[1], dtype=z.dtype)
        grads = torch.autograd.grad(z, params, outputs, retain_graph=True, is_grads_batched=True, allow_unused=True)
        rows = torch.cat([g.flatten(1) for g in grads], 1)  # (vocab, params)
        diag += (p[t, :, None] * rows.square()).sum(0)
    return diag / z.shape[0]


def test_gnb_is_unbiased_for_the_gauss_newton_diagonal():
    # One example repeated 500 times: examples do not interact, so each copy is an independent draw of its
    # labels, and the estimator's own standard error (the spread over examples) is the one to check.
    model = pruned_llama(seed=5, **SMALL)
    example = task_batch(6, examples=1, length=8)
    exact = exact_gauss_newton_diagonal(model, example)
    copies = {k: v.expand(500, -1) for k, v in example.items()}
    layers = basel_layers(model)
    gnb = outer_product_statistics(model, layers, [copies], contextlib.nullcontext, torch.Generator().manual_seed(0))
    estimate, stderr = flat(gnb.hessian_diag), flat(gnb.hessian_stderr)
    kept = exact > 0
    assert int(kept.sum()) > 50 and bool((estimate[~kept] == 0).all())  # pruned bases: no curvature
    z = (estimate - exact)[kept] / stderr[kept]
    # A Gaussian leaves 0.27% outside 3 standard errors: allow a couple, no gross outlier, calibrated spread.
    assert int((z.abs() >= 3).sum()) <= 2 and float(z.abs().max()) < 4.5
    assert 0.3 < float(z.square().mean()) < 3.0
    # The empirical Fisher (true labels) is not an estimate of it: the test can tell them apart.
    fisher = flat(outer_product_statistics(model, layers, [example], contextlib.nullcontext).hessian_diag)
    assert float(((fisher - exact)[kept] / stderr[kept]).abs().median()) > 3


def fixed_statistics(g: list[list[float]], h: list[list[float]]) -> TaylorStatistics:
    as_t = [torch.tensor(x, dtype=torch.float64) for x in g], [torch.tensor(x, dtype=torch.float64) for x in h]
    inf = [torch.full_like(t, float("inf")) for t in as_t[0]]
    return TaylorStatistics(as_t[0], as_t[1], inf, 1, inf)


def one_layer_model() -> torch.nn.Module:
    linear = torch.nn.Linear(3, 3, bias=False, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)))
    model = torch.nn.Sequential(linear)
    reparameterize(model, find_target_linears(model, ["0"]), additional_dim=0)
    return model


def test_curvature_floor_and_ema_are_applied_exactly_and_resume_exactly(monkeypatch):
    model = one_layer_model()
    s = basel_layers(model)["0"].singular_values.detach().double()
    events = [fixed_statistics([[1.0, -2.0, 0.5]], [[4.0, -1.0, 0.2]]),
              fixed_statistics([[3.0, 0.0, -0.5]], [[2.0, 1.0, -3.0]]),
              fixed_statistics([[0.0, 1.0, 1.0]], [[0.0, 5.0, 1.0]])]

    def run(importance: TaylorImportance, stats: list[TaylorStatistics]) -> list[torch.Tensor]:
        feed = iter(stats)
        monkeypatch.setattr(importance, "statistics", lambda *a, **k: next(feed))
        return [importance.scores(model, [None])["0"] for _ in stats]

    beta, floor = 0.75, 0.5
    scores = run(TaylorImportance(curvature_floor=floor, ema=beta), events)
    g = torch.stack([e.grad[0] for e in events])
    h = torch.stack([e.hessian_diag[0] for e in events])
    g_ema, h_ema = g[0], h[0]
    for k in range(3):
        if k:
            g_ema, h_ema = beta * g_ema + (1 - beta) * g[k], beta * h_ema + (1 - beta) * h[k]
        torch.testing.assert_close(scores[k], -g_ema * s + 0.5 * h_ema.clamp(min=floor) * s * s, rtol=0, atol=1e-12)
    # The default: no smoothing, negative H_ii clamped to 0; null keeps the raw estimate.
    plain = run(TaylorImportance(), events[:1])[0]
    torch.testing.assert_close(plain, taylor_scores(s, g[0], h[0].clamp(min=0)))
    raw = run(TaylorImportance(curvature_floor=None), events[:1])[0]
    torch.testing.assert_close(raw, taylor_scores(s, g[0], h[0]))
    # Resume: a fresh estimator loaded with the state after event 1 scores events 2 and 3 as the original did.
    first = TaylorImportance(curvature_floor=floor, ema=beta)
    run(first, events[:1])
    resumed = TaylorImportance(curvature_floor=floor, ema=beta)
    resumed.load_state_dict(first.state_dict())
    for a, b in zip(run(resumed, events[1:]), scores[1:]):
        assert torch.equal(a, b)
    assert len(resumed.records) == 3


def test_hutchinson_runs_in_float32_even_under_bf16_autocast():
    model = pruned_llama(seed=7, dtype=torch.float32)
    batches = [task_batch(8)]
    importance = TaylorImportance(probes=2)
    plain = importance.statistics(model, batches, contextlib.nullcontext, seed=1)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    with bf16():  # an outer autocast, and the precision context offered: both ignored
        under = importance.statistics(model, batches, bf16, seed=1)
    assert torch.equal(flat(plain.hessian_diag), flat(under.hessian_diag))


def test_fisher_under_bf16_autocast_is_close_to_float32():
    model = pruned_llama(seed=9, dtype=torch.float32)
    batches = [task_batch(10, examples=4, length=16)]
    layers = basel_layers(model)
    full = outer_product_statistics(model, layers, batches, contextlib.nullcontext)
    half = outer_product_statistics(model, layers, batches, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    for a, b in ((full.hessian_diag, half.hessian_diag), (full.grad, half.grad)):
        a, b = flat(a), flat(b)
        assert float((a - b).norm() / a.norm()) < 0.05  # bf16 keeps ~3 significant digits per matmul
    assert not torch.equal(flat(full.hessian_diag), flat(half.hessian_diag))  # autocast did apply


def test_estimator_costs_and_bad_settings():
    assert {name: ESTIMATOR_COSTS[name](4, 8) for name in ESTIMATOR_COSTS} == {"hutchinson": 68, "fisher": 4, "gnb": 8}
    with pytest.raises(ValueError, match="hessian='kfac' is not allowed; choose one of: hutchinson, fisher, gnb"):
        TaylorImportance(hessian="kfac")
    with pytest.raises(ValueError, match="0 <= ema < 1"):
        TaylorImportance(ema=1.0)


@pytest.mark.parametrize("hessian", ["hutchinson", "fisher", "gnb"])
def test_a_gradient_that_is_zero_everywhere_is_refused_not_ranked_on(hessian):
    model = pruned_llama(seed=4)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # constant logits: the loss no longer depends on any s̃
    with pytest.raises(ValueError, match="exactly zero on every batch"):
        TaylorImportance(hessian, probes=1).statistics(model, [task_batch(5)], contextlib.nullcontext, seed=0)


@pytest.mark.parametrize("variant, measured", [("both", False), ("second", True)])
def test_one_batch_records_a_signal_to_noise_only_where_the_score_spread_is_measured(variant, measured):
    """Hutchinson on one batch gives g no spread: the paper's score (g and H) then has no standard error and
    records null, not an inf or a made-up figure; the curvature term alone keeps the probes' spread."""
    model = pruned_llama(seed=11)
    importance = TaylorImportance(probes=2, variant=variant)
    importance.scores(model, [task_batch(12)], contextlib.nullcontext, seed=3)
    record = importance.records[-1]
    assert record["hessian_stderr_mean"] is not None and record["hessian_stderr_mean"] > 0
    if measured:
        assert record["score_signal_to_noise_median"] > 0 and record["score_stderr_mean"] > 0
    else:
        assert record["score_signal_to_noise_median"] is None and record["score_stderr_mean"] is None
    json.dumps(record, allow_nan=False)  # what metrics.json gets
