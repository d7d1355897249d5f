"""BSI's estimator against autograd: finite-difference H d vs double backward, Hutchinson vs the exact
diagonal, and the Taylor score on a case whose answer is known in closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaForCausalLM
from transformers.models.llama import modeling_llama

from basel_app.lowrank import BaselLinear, basel_layers, find_target_linears, reparameterize
from basel_app.methods.taylor import (
    estimate_taylor_statistics,
    hvp_double_backward,
    hvp_finite_difference,
    taylor_score_stderr,
    taylor_scores,
)

from ..tiny_llama import tiny_llama_config

ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def reparameterized_llama(seed: int, **shape) -> tuple[LlamaForCausalLM, list[torch.Tensor]]:
    """A float64 tiny Llama with every decoder linear reparameterized; returns it and its s̃ tensors."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(64, **shape)).double().eval()
    reparameterize(model, find_target_linears(model, ALL_LINEARS), additional_dim=2, seed=seed)
    with torch.no_grad():  # move off the pretrained point so the gradient is not special
        for layer in basel_layers(model).values():
            layer.extra_u.normal_(0, 0.05)
    return model, [layer.singular_values for layer in basel_layers(model).values()]


@pytest.fixture(autouse=True)
def float64_rmsnorm(monkeypatch):
    """transformers' LlamaRMSNorm computes in float32 whatever the input dtype; in a float64 model that
    rounding (1e-8 relative) would dominate a finite difference, so the tests keep the norm in float64."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.weight * hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


def llama_loss(model: nn.Module):
    """Next-token cross-entropy in float64 (the model's own loss casts logits to float32)."""

    def loss_fn(ids: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel has no double backward
            logits = model(input_ids=ids).logits
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    return loss_fn


def relative_eps(params: list[torch.Tensor], scale: float) -> list[torch.Tensor]:
    return [torch.full_like(p, scale * float(p.detach().square().mean().sqrt())) for p in params]


def test_finite_difference_hvp_equals_double_backward_in_float64():
    model, params = reparameterized_llama(seed=0)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 64, (2, 10), generator=gen)
    before = [p.detach().clone() for p in params]
    for scale in (1e-3, 1e-4):
        z = [torch.randint(0, 2, p.shape, generator=gen).double() * 2 - 1 for p in params]
        direction = [e * zi for e, zi in zip(relative_eps(params, scale), z)]
        exact = torch.cat([h.flatten() for h in hvp_double_backward(llama_loss(model), params, direction, ids)])
        approx = torch.cat([h.flatten() for h in hvp_finite_difference(llama_loss(model), params, direction, ids)])
        assert float((approx - exact).norm() / exact.norm()) < 1e-4
    for p, b in zip(params, before):  # the perturbation left the parameters exactly as they were
        assert torch.equal(p.detach(), b)


def exact_hessian_diagonal(loss_fn, params, batch) -> torch.Tensor:
    flat = [p.numel() for p in params]
    diag = []
    for index in range(sum(flat)):
        unit = torch.zeros(sum(flat), dtype=torch.float64)
        unit[index] = 1.0
        direction = list(torch.split(unit, flat))
        direction = [d.view_as(p) for d, p in zip(direction, params)]
        hvp = torch.cat([h.flatten() for h in hvp_double_backward(loss_fn, params, direction, batch)])
        diag.append(hvp[index])
    return torch.stack(diag)


def test_hutchinson_diagonal_is_within_three_standard_errors_of_the_exact_one():
    # Small enough to form the exact diagonal one unit vector at a time: 1 layer, hidden 16 (120 s̃ entries).
    shape = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1)
    model, params = reparameterized_llama(seed=1, **shape)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(2))
    loss_fn = llama_loss(model)
    exact = exact_hessian_diagonal(loss_fn, params, ids)
    stats = estimate_taylor_statistics(loss_fn, params, [ids], probes=300, eps=relative_eps(params, 1e-4),
                                       generator=torch.Generator().manual_seed(3))
    estimate = torch.cat([h.flatten() for h in stats.hessian_diag])
    stderr = torch.cat([s.flatten() for s in stats.hessian_stderr])
    z = (estimate - exact) / stderr
    assert stats.samples == 300
    # 3 standard errors: a Gaussian leaves 0.27% of 96 entries (0.26 expected) outside, so allow 2 and no
    # gross outlier; with these seeds one entry lands at 3.1.
    assert int((z.abs() >= 3).sum()) <= 2 and float(z.abs().max()) < 4.5
    assert 0.3 < float(z.square().mean()) < 3.0  # the standard error is calibrated, not merely wide
    # And it shrinks like 1/sqrt(K): 16x fewer probes, about 4x the error.
    few = estimate_taylor_statistics(loss_fn, params, [ids], probes=19, eps=relative_eps(params, 1e-4),
                                     generator=torch.Generator().manual_seed(4))
    ratio = float(torch.cat([s.flatten() for s in few.hessian_stderr]).median() / stderr.median())
    assert 2.5 < ratio < 6.5


def diagonal_layer(values: list[float]) -> BaselLinear:
    linear = nn.Linear(len(values), len(values), bias=False, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.diag(torch.tensor(values, dtype=torch.float64)))
    return BaselLinear.from_linear(linear, additional_dim=0)


def test_taylor_score_sign_and_ranking_on_a_quadratic_loss_with_a_known_answer():
    # L(s̃) = ½‖W̃ − T‖²_F with W̃ = diag(3, 2, 1, 0.5) and target T = diag(3, 0, 1, 0.25): exactly quadratic,
    # g = s̃ − t, H = I, so removing basis i changes the loss by exactly t s̃ − ½ s̃² = [4.5, −2, 0.5, 0].
    layer = diagonal_layer([3.0, 2.0, 1.0, 0.5])
    target = torch.diag(torch.tensor([3.0, 0.0, 1.0, 0.25], dtype=torch.float64))
    eye = torch.eye(4, dtype=torch.float64)

    def loss_fn(_: object) -> torch.Tensor:
        return 0.5 * (layer(eye) - eye @ target.T).square().sum()

    s = layer.singular_values
    stats = estimate_taylor_statistics(loss_fn, [s], [None], probes=4, eps=[torch.full_like(s, 1e-2)],
                                       generator=torch.Generator().manual_seed(0))
    scores = taylor_scores(s, stats.grad[0], stats.hessian_diag[0])
    # The actual loss change of zeroing each basis (U, V come from an SVD: match them by the value).
    actual = []
    for i in range(4):
        with torch.no_grad():
            saved = s[i].item()
            base = loss_fn(None).item()
            s[i] = 0.0
            actual.append(loss_fn(None).item() - base)
            s[i] = saved
    torch.testing.assert_close(scores, torch.tensor(actual, dtype=torch.float64), rtol=1e-6, atol=1e-8)
    by_value = dict(zip(s.detach().tolist(), scores.tolist()))
    assert by_value[2.0] == pytest.approx(-2.0)  # negative: removing it helps
    assert sorted(by_value, key=by_value.get, reverse=True) == [3.0, 1.0, 0.5, 2.0]  # magnitude would keep 2.0 second
    first = taylor_scores(s, stats.grad[0], stats.hessian_diag[0], "first")
    second = taylor_scores(s, stats.grad[0], stats.hessian_diag[0], "second")
    torch.testing.assert_close(second, 0.5 * s.detach().square(), rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(first, (stats.grad[0] * s.detach()).abs().double())


def test_the_gradient_and_score_standard_errors_are_the_batch_to_batch_spread():
    # L_b(s) = ½‖s − t_b‖² with a different target per batch: g_b = s − t_b and H = I exactly, so the mean
    # gradient's standard error is std_b(t_b) / √M and the Hessian estimate has no error at all.
    s = torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 2.0], [2.0, -1.0, 0.0], [0.5, 1.0, 1.0], [1.5, 0.0, -1.0]], dtype=torch.float64)

    def loss_fn(t: torch.Tensor) -> torch.Tensor:
        return 0.5 * (s - t).square().sum()

    stats = estimate_taylor_statistics(loss_fn, [s], list(targets), probes=3, eps=[torch.full_like(s, 1e-3)],
                                       generator=torch.Generator().manual_seed(0))
    per_batch = s.detach() - targets
    torch.testing.assert_close(stats.grad[0], per_batch.mean(0))
    torch.testing.assert_close(stats.grad_stderr[0], per_batch.std(0) / 2.0)  # √M = 2
    torch.testing.assert_close(stats.hessian_diag[0], torch.ones(3, dtype=torch.float64))
    assert float(stats.hessian_stderr[0].max()) < 1e-8
    se = taylor_score_stderr(s, stats.grad_stderr[0], stats.hessian_stderr[0], "both")
    torch.testing.assert_close(se, s.detach().abs() * stats.grad_stderr[0], rtol=1e-6, atol=1e-8)
    second = taylor_score_stderr(s, stats.grad_stderr[0], torch.full((3,), 0.1, dtype=torch.float64), "second")
    torch.testing.assert_close(second, 0.05 * s.detach().square())
    one = estimate_taylor_statistics(loss_fn, [s], [targets[0]], probes=2, eps=[torch.full_like(s, 1e-3)])
    assert bool(torch.isinf(one.grad_stderr[0]).all())  # one batch: no spread to measure


def test_bad_estimator_settings_are_refused():
    p = torch.ones(3, requires_grad=True)

    def loss(_):
        return (p * p).sum()

    with pytest.raises(ValueError, match="probes=0 is not allowed"):
        estimate_taylor_statistics(loss, [p], [None], probes=0, eps=[torch.ones(3)])
    with pytest.raises(ValueError, match="eps must be > 0"):
        estimate_taylor_statistics(loss, [p], [None], probes=1, eps=[torch.zeros(3)])
    with pytest.raises(ValueError, match="hvp='exact' is not allowed"):
        estimate_taylor_statistics(loss, [p], [None], probes=1, eps=[torch.ones(3)], hvp="exact")
    half = torch.ones(3, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(ValueError, match="stored in torch.bfloat16"):
        hvp_finite_difference(lambda _: (half.float() ** 2).sum(), [half], [torch.ones(3, dtype=torch.bfloat16)], None)
    with pytest.raises(ValueError, match="variant='third' is not allowed"):
        taylor_scores(torch.ones(2), torch.ones(2), torch.ones(2), "third")
    with pytest.raises(ValueError, match="variant='third' is not allowed"):
        taylor_score_stderr(torch.ones(2), torch.ones(2), torch.ones(2), "third")
