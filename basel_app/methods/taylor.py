"""BSI's importance: the gradient and Hessian diagonal of the task loss w.r.t. the singular-value weights,
and the second-order Taylor estimate of the loss change of removing each basis (METHODS.md, BSI).

    ΔL_i ≈ −g_i s̃_i + ½ H_ii s̃_i²

diag(H) by Hutchinson probing: z Rademacher, d = ε ⊙ z (ε per coordinate, relative to the layer's
singular values), and H d from a symmetric finite difference of gradients on the same batch,

    H d ≈ (∇L(s̃ + d) − ∇L(s̃ − d)) / 2,        H_ii ≈ mean over probes of z_i (H d)_i / ε_i

so one probe costs two gradient evaluations whatever the number of bases and needs no double backward
(fused attention kernels and FSDP have none). The exact double-backward H d is kept to validate it.
Perturbations and differences are done in the parameters' own precision, which must be at least float32.

Under DDP the batches are split across ranks (batch i on rank i mod world_size) and the sums are all-reduced:
the same estimator as one process on all of them (the probes z of batch i are the same draws too), with
1/world_size of the work per rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from basel_app.config.names import HVP_MODES, SCORE_VARIANTS
from basel_app.distributed import all_reduce_sum, world_rank, world_size

LossFn = Callable[[object], torch.Tensor]


def _require_full_precision(params: Sequence[torch.Tensor]) -> None:
    for p in params:
        if torch.finfo(p.dtype).bits < 32:
            raise ValueError(
                f"BSI perturbs the singular values in at least float32, but they are stored in {p.dtype}; "
                "load the model in float32 (model.dtype=float32; bf16 autocast still applies)"
            )


def gradient(loss_fn: LossFn, params: Sequence[torch.Tensor], batch: object) -> list[torch.Tensor]:
    """∇L(batch) w.r.t. `params`, every one of which must reach the loss (pruned bases get zeros there).

    A parameter the loss does not reach has no gradient at all, not a zero one: taking it as zero would
    rank every basis of its layer as free to remove. That is what a forward through other tensors than
    `params` looks like (a sharded copy, a module replaced after the parameters were collected), so it is
    an error, never a silent zero.
    """
    loss = loss_fn(batch)
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    missing = [i for i, g in enumerate(grads) if g is None]
    if missing:
        raise RuntimeError(f"the loss does not depend on parameters {missing} of {len(grads)} (shapes "
                           f"{[tuple(params[i].shape) for i in missing]}): the forward does not use these tensors, "
                           "so their gradient is unknown, not zero")
    return [g.detach() for g in grads]


@torch.no_grad()
def _assign(params: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    for p, v in zip(params, values):
        p.copy_(v)


def hvp_finite_difference(
    loss_fn: LossFn, params: Sequence[torch.Tensor], direction: Sequence[torch.Tensor], batch: object
) -> list[torch.Tensor]:
    """H d ≈ (∇L(p + d) − ∇L(p − d)) / 2 on one batch (error O(|d|³)); `params` are restored exactly."""
    _require_full_precision(params)
    origin = [p.detach().clone() for p in params]
    try:
        _assign(params, [o + d for o, d in zip(origin, direction)])
        plus = gradient(loss_fn, params, batch)
        _assign(params, [o - d for o, d in zip(origin, direction)])
        minus = gradient(loss_fn, params, batch)
    finally:
        _assign(params, origin)
    return [(a - b) / 2 for a, b in zip(plus, minus)]


def hvp_double_backward(
    loss_fn: LossFn, params: Sequence[torch.Tensor], direction: Sequence[torch.Tensor], batch: object
) -> list[torch.Tensor]:
    """The exact H d by differentiating g·d (needs a model whose ops support double backward)."""
    loss = loss_fn(batch)
    grads = torch.autograd.grad(loss, list(params), create_graph=True, allow_unused=True)
    dot = sum((g * d).sum() for g, d in zip(grads, direction) if g is not None)
    hvp = torch.autograd.grad(dot, list(params), allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, hvp)]


@dataclass
class TaylorStatistics:
    """Per parameter tensor: mean gradient, Hutchinson diag(H), and the standard error of that diagonal."""

    grad: list[torch.Tensor]
    hessian_diag: list[torch.Tensor]
    hessian_stderr: list[torch.Tensor]
    samples: int  # probes × batches behind each diagonal entry
    grad_stderr: list[torch.Tensor]  # of the mean gradient, from its batch-to-batch spread (inf for one batch)


def estimate_taylor_statistics(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    batches: Iterable[object],
    probes: int,
    eps: Sequence[torch.Tensor],
    hvp: str = "finite_difference",
    generator: torch.Generator | None = None,
) -> TaylorStatistics:
    """g and diag(H) of the mean loss over `batches`, with `probes` Rademacher probes per batch.

    `eps` holds the per-coordinate perturbation sizes ε (same shapes as `params`, all > 0). The standard
    error is the sample standard deviation of the probes' estimates z ⊙ H z / ε over √(probes × batches):
    it covers both the probing noise (Σ_{j≠i} H_ij² ε_j²/ε_i² per probe) and the batch-to-batch spread.
    The gradient's standard error is the spread of the per-batch gradients over √batches.
    """
    if probes < 1:
        raise ValueError(f"probes={probes} is not allowed; Hutchinson needs at least 1 probe")
    if hvp not in HVP_MODES:
        raise ValueError(f"hvp={hvp!r} is not allowed; choose one of: {', '.join(HVP_MODES)}")
    if any(bool((e <= 0).any()) for e in eps):
        raise ValueError("every perturbation size eps must be > 0")
    product = hvp_finite_difference if hvp == "finite_difference" else hvp_double_backward
    wide = [torch.float64] * len(params)
    grad_sum = [torch.zeros_like(p, dtype=d) for p, d in zip(params, wide)]
    grad_sq = [torch.zeros_like(p, dtype=d) for p, d in zip(params, wide)]
    diag_sum = [torch.zeros_like(p, dtype=d) for p, d in zip(params, wide)]
    diag_sq = [torch.zeros_like(p, dtype=d) for p, d in zip(params, wide)]
    n_batches = samples = 0
    rank, ranks = world_rank(), world_size()
    for index, batch in enumerate(batches):
        mine = index % ranks == rank
        if mine:
            n_batches += 1
            for total, sq, g in zip(grad_sum, grad_sq, gradient(loss_fn, params, batch)):
                total += g
                sq += g.double() * g.double()
        for _ in range(probes):
            # Drawn for every batch on every rank, so batch i gets the same probes however batches are split.
            z = [torch.randint(0, 2, p.shape, generator=generator, device="cpu").to(p) * 2 - 1 for p in params]
            if not mine:
                continue
            direction = [e * zi for e, zi in zip(eps, z)]
            hd = product(loss_fn, params, direction, batch)
            for s, sq, zi, h, e in zip(diag_sum, diag_sq, z, hd, eps):
                sample = (zi * h / e).double()
                s += sample
                sq += sample * sample
            samples += 1
    counts = torch.tensor([n_batches, samples], dtype=torch.float64)
    *sums, counts = all_reduce_sum([*grad_sum, *grad_sq, *diag_sum, *diag_sq, counts])
    k = len(params)
    grad_sum, grad_sq, diag_sum, diag_sq = sums[:k], sums[k : 2 * k], sums[2 * k : 3 * k], sums[3 * k :]
    n_batches, samples = int(counts[0]), int(counts[1])
    if not n_batches:
        raise ValueError("no batches to estimate the Taylor statistics on")
    refuse_zero_gradient(grad_sum)
    mean_grad = [g / n_batches for g in grad_sum]
    mean = [s / samples for s in diag_sum]
    return TaylorStatistics(mean_grad, mean, _stderr(diag_sq, mean, samples), samples,
                            _stderr(grad_sq, mean_grad, n_batches))


def refuse_zero_gradient(grads: Sequence[torch.Tensor]) -> None:
    """A gradient that is exactly zero everywhere is a wiring fault (a sharded or detached parameter, no answer
    tokens), not a measurement: scores built on it would rank bases on nothing."""
    if all(not bool(g.any()) for g in grads):
        raise ValueError("the gradient w.r.t. every parameter is exactly zero on every batch: the scores would "
                         "rank on nothing (no answer tokens in the batches, or parameters the loss does not reach)")


def _stderr(sums_of_squares: list[torch.Tensor], means: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Standard error of each mean from its `count` samples (inf for one sample: no spread to measure)."""
    if count < 2:
        return [torch.full_like(mu, float("inf")) for mu in means]
    return [((sq - count * mu * mu).clamp(min=0) / (count - 1) / count).sqrt() for sq, mu in zip(sums_of_squares, means)]


def taylor_score_stderr(
    values: torch.Tensor, grad_stderr: torch.Tensor, hessian_stderr: torch.Tensor, variant: str = "both"
) -> torch.Tensor:
    """Standard error of `taylor_scores` from those of g and diag(H), taken as independent:
    both: √((s̃ se_g)² + (½ s̃² se_H)²);  first: |s̃| se_g;  second: ½ s̃² se_H."""
    s = values.detach().double().abs()
    first, second = s * grad_stderr.double(), 0.5 * s * s * hessian_stderr.double()
    if variant == "both":
        return torch.sqrt(first * first + second * second)
    if variant == "first":
        return first
    if variant == "second":
        return second
    raise ValueError(f"variant={variant!r} is not allowed; choose one of: {', '.join(SCORE_VARIANTS)}")


def taylor_scores(
    values: torch.Tensor, grad: torch.Tensor, hessian_diag: torch.Tensor, variant: str = "both"
) -> torch.Tensor:
    """Expected loss increase of removing each basis (s̃_i → 0): higher means keep.

    both: −g s̃ + ½ H s̃² (BSI);  first: |g s̃|;  second: ½ H s̃².
    """
    s, g, h = values.detach().double(), grad.double(), hessian_diag.double()
    if variant == "both":
        return -g * s + 0.5 * h * s * s
    if variant == "first":
        return (g * s).abs()
    if variant == "second":
        return 0.5 * h * s * s
    raise ValueError(f"variant={variant!r} is not allowed; choose one of: {', '.join(SCORE_VARIANTS)}")
