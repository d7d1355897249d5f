"""BSI's importance as a plain object, as PEFT AdaLoRA's `RankAllocator` is: given the model and a few
task batches, the Taylor estimate of the loss change of removing each basis (METHODS.md, BSI),

    ΔL_i ≈ −g_i s̃_i + ½ H_ii s̃_i²,      g = ∇_{s̃} L,   H_ii ≈ ∂²L/∂s̃_i²

with L the mean answer-token loss of the batches, and diag(H) from one of three estimators:

    hutchinson  E_z[z ⊙ Hz], Hz by a symmetric finite difference of gradients (`methods.taylor`);
                M·(1 + 2K) gradient evaluations for M batches and K probes
    fisher      the empirical Fisher, Σ_n u_n² / N   (u_n = ∂/∂s̃ of example n's summed answer-token loss,
                N the answer tokens of all examples); M backward passes, g from the same ones
    gnb         the same with each answer token's label drawn from the model's own next-token
                distribution (Gauss-Newton-Bartlett): an unbiased estimate of the Gauss-Newton diagonal;
                2M backward passes (one with the true labels for g, one with the drawn ones), one forward

Why u_n is the gradient of the example's *summed* token loss: the Fisher identity E[u uᵀ] = E[∇²] holds
for the log-likelihood of what was sampled, here the whole answer; and since L averages over tokens, its
Gauss-Newton matrix is (1/N) Σ_n E_ŷ[u_n uᵀ_n]. Squaring gradients of the example's *mean* loss instead
would shrink H by the answer length and leave the first-order term to decide alone.

Per-example gradients w.r.t. s̃ from one backward (examples do not interact, so the backward of Σ_n ℓ_n
gives each example's own δ_t = ∂ℓ_n/∂y_t at its tokens):

    y_t = U diag(s̃ ⊙ keep) Vᵀ x_t + Ũ Ṽᵀ x_t + b        ∂ℓ_n/∂s̃ = keep ⊙ Σ_{t∈n} (Vᵀ x_t) ⊙ (Uᵀ δ_t)

    x (B, T, m) ──Vᵀ──► a (B, T, r)   (forward hook on each BaselLinear)
    δ (B, T, n) ──Uᵀ──► b (B, T, r)   (gradient hook on its output)  ──Σ_t a ⊙ b──► (B, r)

Precision: the Hutchinson finite difference (ε ≈ 1e-3 relative) is destroyed by bf16 matmuls, so it
always runs in float32 with autocast disabled, whatever the trainer's precision. Fisher and GNB difference
nothing and run under the given precision context; their products a, b and sums are float32 or wider.

Across pruning events, `curvature_floor` clamps H_ii from below (a negative estimate is noise and would
make the largest bases look free to remove) and `ema` = β smooths g and diag(H) per basis, as AdaLoRA
smooths its sensitivities; that state is in `state_dict` so a resumed run scores exactly as the original.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from basel_app.distributed import all_reduce_sum, full_tensor, world_rank, world_size
from basel_app.lowrank import BaselLinear, basel_layers
from basel_app.methods.taylor import (
    TaylorStatistics,
    estimate_taylor_statistics,
    refuse_zero_gradient,
    taylor_score_stderr,
    taylor_scores,
)
from basel_app.modes import eval_mode

Batch = dict[str, torch.Tensor]
ContextFactory = Callable[[], contextlib.AbstractContextManager]
IGNORE_INDEX = -100  # label of tokens without loss (prompt, padding), as in transformers


def _stderr(sum_sq: torch.Tensor, mean: torch.Tensor, count: int) -> torch.Tensor:
    """Standard error of a mean from `count` samples (inf for one sample: no spread to measure)."""
    if count < 2:
        return torch.full_like(mean, float("inf"))
    return ((sum_sq - count * mean * mean).clamp(min=0) / (count - 1) / count).sqrt()


class PerExampleGradients:
    """While entered, each backward through the model leaves `grads[name]`: (B, r) per-example ∂/∂s̃ of
    what was differentiated, for every BaselLinear (see the module docstring for the math).

    The backward is taken to the layers' outputs (`backward_to`), not to s̃: the hooks need only δ there,
    autograd then computes no parameter gradient, and it works on FSDP-sharded s̃ too, which the forward
    does not use (it runs on the gathered copy), so a gradient asked of the shard would skip every hook."""

    def __init__(self, layers: dict[str, BaselLinear]) -> None:
        self.layers = layers
        self.grads: dict[str, torch.Tensor] = {}
        self.outputs: list[torch.Tensor] = []  # of the last forward, in the order the hooks saw them
        self._handles: list[Any] = []

    def __enter__(self) -> PerExampleGradients:
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs.clear()

    def backward_to(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Backpropagate `loss` as far as the layers' outputs, filling `grads` afresh."""
        self.grads.clear()
        torch.autograd.grad(loss, self.outputs, allow_unused=True, retain_graph=retain_graph)

    def _forward_hook(self, name: str) -> Callable:
        def hook(layer: BaselLinear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not output.requires_grad:
                return
            wide = torch.promote_types(inputs[0].dtype, torch.float32)
            a = inputs[0].detach().to(wide) @ layer.V.detach().to(wide)  # (B, T, r)

            def on_grad(delta: torch.Tensor) -> None:
                b = delta.detach().to(wide) @ layer.U.detach().to(wide)  # (B, T, r)
                per_example = (a * b).flatten(1, -2).sum(1)  # (B, r)
                self.grads[name] = per_example * layer.keep_mask.to(wide)  # pruned bases: no gradient

            output.register_hook(on_grad)
            self.outputs.append(output)

        return hook


def answer_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) summed next-token cross-entropy over each example's answer tokens (labels ≠ −100), float32+."""
    shifted = labels[:, 1:]
    logits = logits[:, :-1]
    wide = torch.promote_types(logits.dtype, torch.float32)
    token = nn.functional.cross_entropy(logits.to(wide).flatten(0, 1), shifted.flatten(), reduction="none",
                                        ignore_index=IGNORE_INDEX)
    return token.view(shifted.shape).sum(1)


def sampled_labels(logits: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`labels` with every answer token replaced by a draw from the model's next-token distribution there
    (what GNB differentiates); prompt and padding stay −100. Reproducible by `generator` (on the CPU)."""
    shifted = labels[:, 1:]
    where = shifted != IGNORE_INDEX
    probs = torch.softmax(logits[:, :-1][where].detach().float(), dim=-1).cpu()  # (N, vocab)
    drawn = labels.clone()
    drawn[:, 1:][where] = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(labels.device)
    return drawn


def per_batch_generators(generator: torch.Generator, count: int) -> list[torch.Generator]:
    """One generator per batch, seeded from `generator`: batch i's draws are the same whichever rank does it."""
    return [torch.Generator().manual_seed(seed) for seed in torch.randint(2**62, (count,), generator=generator).tolist()]


class _Moments:
    """Running Σx and Σx² of per-example samples, one tensor per layer, in float64."""

    def __init__(self, shapes: Sequence[torch.Size]) -> None:
        self.sum = [torch.zeros(shape, dtype=torch.float64) for shape in shapes]
        self.sum_sq = [torch.zeros_like(t) for t in self.sum]

    def add(self, samples: list[torch.Tensor]) -> None:
        samples = [s.double().cpu() for s in samples]
        for total, sq, s in zip(self.sum, self.sum_sq, samples):
            total += s.sum(0)
            sq += s.square().sum(0)

    def reduce_across_ranks(self) -> None:
        """Σ over ranks (DDP; a rank that had no batch adds zeros)."""
        reduced = all_reduce_sum([*self.sum, *self.sum_sq])
        self.sum, self.sum_sq = reduced[: len(self.sum)], reduced[len(self.sum) :]

    def per_token(self, examples: int, tokens: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Σ_n x_n / N and its standard error (the ratio estimate's, N taken as fixed)."""
        means = [s / examples for s in self.sum]
        scale = examples / tokens
        return ([m * scale for m in means],
                [_stderr(sq, m, examples) * scale for sq, m in zip(self.sum_sq, means)])


def outer_product_statistics(
    model: nn.Module,
    layers: dict[str, BaselLinear],
    batches: Sequence[Batch],
    precision: ContextFactory,
    generator: torch.Generator | None = None,
) -> TaylorStatistics:
    """g and the diagonal of Σ_n u_n u_nᵀ / N: the empirical Fisher, or, with a `generator`, GNB's.

    The layers' s̃ are what is differentiated; `batches` carry input_ids, attention_mask and labels. Under
    DDP batch i is done by rank i mod world_size and the sums are all-reduced; GNB draws batch i's labels
    from its own generator, seeded from `generator` up front, so the draws do not depend on the split.
    """
    params = [layer.singular_values for layer in layers.values()]
    grad, curvature = _Moments([p.shape for p in params]), _Moments([p.shape for p in params])
    examples = tokens = 0
    drawing = None if generator is None else per_batch_generators(generator, len(batches))
    rank, ranks = world_rank(), world_size()
    with PerExampleGradients(layers) as hooks:
        for index, batch in enumerate(batches):
            if index % ranks != rank:
                continue
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with precision():
                logits = model(**inputs).logits
            answered = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1)
            keep = answered > 0  # an example whose answer was truncated away has no loss
            true_loss = answer_token_losses(logits, batch["labels"])
            hooks.backward_to(true_loss.sum(), retain_graph=generator is not None)
            u = [hooks.grads[name][keep] for name in layers]
            grad.add(u)
            if drawing is not None:
                drawn = answer_token_losses(logits, sampled_labels(logits, batch["labels"], drawing[index]))
                hooks.backward_to(drawn.sum())
                u = [hooks.grads[name][keep] for name in layers]
            hooks.outputs.clear()
            curvature.add([x * x for x in u])
            examples += int(keep.sum())
            tokens += int(answered.sum())
    grad.reduce_across_ranks()
    curvature.reduce_across_ranks()
    examples, tokens = (int(c) for c in all_reduce_sum([torch.tensor([examples, tokens], dtype=torch.float64)])[0])
    if not examples:
        raise ValueError("no example with answer tokens to estimate the Fisher / GNB statistics on")
    refuse_zero_gradient(grad.sum)
    g, g_se = grad.per_token(examples, tokens)
    h, h_se = curvature.per_token(examples, tokens)
    return TaylorStatistics(g, h, h_se, examples, g_se)


# Backward passes per event for M batches and K probes.
ESTIMATOR_COSTS: dict[str, Callable[[int, int], int]] = {
    "hutchinson": lambda batches, probes: batches * (1 + 2 * probes),
    "fisher": lambda batches, probes: batches,
    "gnb": lambda batches, probes: 2 * batches,
}


class TaylorImportance:
    """BSI's scorer state: the estimator settings, the EMA of g and diag(H) per layer, one record per event.

    `scores(model, batches, precision, seed)` knows no trainer: the caller supplies the batches (drawn
    afresh per event) and the precision context; `seed` drives the Hutchinson probes and GNB's labels.
    """

    def __init__(
        self,
        hessian: str = "hutchinson",
        probes: int = 8,
        eps_scale: float = 1e-3,
        hvp: str = "finite_difference",
        variant: str = "both",
        curvature_floor: float | None = 0.0,
        ema: float = 0.0,
    ) -> None:
        if hessian not in ESTIMATOR_COSTS:
            raise ValueError(f"hessian={hessian!r} is not allowed; choose one of: {', '.join(ESTIMATOR_COSTS)}")
        if probes < 1 or eps_scale <= 0 or not 0 <= ema < 1:
            raise ValueError(f"need probes >= 1, eps_scale > 0, 0 <= ema < 1; got {probes}, {eps_scale}, {ema}")
        self.hessian, self.probes, self.eps_scale, self.hvp, self.variant = hessian, probes, eps_scale, hvp, variant
        self.curvature_floor, self.ema = curvature_floor, ema
        self.smoothed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # layer → EMA of (g, diag H), float64
        self.records: list[dict[str, Any]] = []  # one summary per pruning event, for metrics.json

    def gradient_evaluations(self, batches: int) -> int:
        """The cost of one event in backward passes (what a GPU-hour budget is spent on)."""
        return ESTIMATOR_COSTS[self.hessian](batches, self.probes)

    def statistics(self, model: nn.Module, batches: Sequence[Batch], precision: ContextFactory,
                   seed: int) -> TaylorStatistics:
        """This event's g and diag(H) (no smoothing, no floor), in eval mode."""
        layers = basel_layers(model)
        with eval_mode(model):
            if self.hessian == "hutchinson":
                return self._hutchinson(model, layers, batches, seed)
            generator = torch.Generator().manual_seed(seed) if self.hessian == "gnb" else None
            return outer_product_statistics(model, layers, batches, precision, generator)

    def _hutchinson(self, model: nn.Module, layers: dict[str, BaselLinear], batches: Sequence[Batch],
                    seed: int) -> TaylorStatistics:
        """Float32 with autocast off (see the module docstring); ε_l = eps_scale × RMS of the kept s̃."""
        params = [layer.singular_values for layer in layers.values()]
        eps = []
        for layer in layers.values():
            kept = layer.singular_values.detach()[layer.keep_mask]
            scale = float(kept.square().mean().sqrt()) if kept.numel() else 1.0
            eps.append(torch.full_like(layer.singular_values, self.eps_scale * max(scale, 1e-12)))
        # Fused attention kernels have no double backward; the math one (slower) has, for validation runs.
        attention = (lambda: sdpa_kernel(SDPBackend.MATH)) if self.hvp == "double_backward" else contextlib.nullcontext

        def loss_fn(batch: Batch) -> torch.Tensor:
            with attention():
                return model(**batch).loss.float()

        # Off for the backward too: on the CPU it runs in the calling thread, under its autocast state.
        with torch.autocast(params[0].device.type, enabled=False):
            return estimate_taylor_statistics(loss_fn, params, batches, self.probes, eps, self.hvp,
                                              torch.Generator().manual_seed(seed))

    def scores(self, model: nn.Module, batches: Sequence[Batch], precision: ContextFactory = contextlib.nullcontext,
               seed: int = 0) -> dict[str, torch.Tensor]:
        """ΔL per basis for every BaselLinear (higher means keep), after the EMA and the floor; records
        this event's statistics (before smoothing)."""
        layers = basel_layers(model)
        stats = self.statistics(model, batches, precision, seed)
        scores, kept_h, kept_se, kept_score, kept_score_se = {}, [], [], [], []
        for (name, layer), g, h, se, se_g in zip(layers.items(), stats.grad, stats.hessian_diag,
                                                 stats.hessian_stderr, stats.grad_stderr):
            g_used, h_used = self._smooth(name, g.double().cpu(), h.double().cpu())
            if self.curvature_floor is not None:
                h_used = h_used.clamp(min=self.curvature_floor)
            values = full_tensor(layer.singular_values).detach().cpu()
            scores[name] = taylor_scores(values, g_used, h_used, self.variant).to(layer.keep_mask.device)
            mask = layer.keep_mask.cpu()
            kept_h.append(h.cpu()[mask])
            kept_se.append(se.cpu()[mask])
            kept_score.append(taylor_scores(values, g, h, self.variant)[mask])
            kept_score_se.append(taylor_score_stderr(values, se_g.cpu(), se.cpu(), self.variant)[mask])
        self.records.append(_record(stats.samples, self.gradient_evaluations(len(batches)), torch.cat(kept_h),
                                    torch.cat(kept_se), torch.cat(kept_score), torch.cat(kept_score_se)))
        return scores

    def _smooth(self, name: str, g: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """β·previous + (1 − β)·new per basis; the first event starts the average at its own estimate."""
        if self.ema > 0 and name in self.smoothed:
            g0, h0 = self.smoothed[name]
            g, h = self.ema * g0 + (1 - self.ema) * g, self.ema * h0 + (1 - self.ema) * h
        if self.ema > 0:
            self.smoothed[name] = (g, h)
        return g, h

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records, "smoothed": self.smoothed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = state["records"]
        self.smoothed = dict(state.get("smoothed", {}))


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: one batch and one probe give no standard error, recorded as null."""
    return value if math.isfinite(value) else None


def _record(samples: int, cost: int, h: torch.Tensor, se: torch.Tensor, score: torch.Tensor,
            score_se: torch.Tensor) -> dict[str, Any]:
    """The event's summary over kept bases. SNR: median |ΔL| / its standard error; below ~1 the ranking is
    mostly estimation noise. One batch (or one probe) leaves a term's spread unmeasured: no ratio then."""
    snr = float((score.abs() / score_se.clamp(min=1e-30)).median()) if bool(torch.isfinite(score_se).all()) else None
    return {
        "samples": samples,
        "gradient_evaluations": cost,
        "hessian_diag_mean": float(h.mean()),
        "hessian_negative_fraction": float((h < 0).double().mean()),
        "hessian_stderr_mean": _finite_or_none(float(se.mean())),
        "hessian_relative_stderr_median": _finite_or_none(float((se / h.abs().clamp(min=1e-30)).median())),
        "score_stderr_mean": _finite_or_none(float(score_se.mean())),
        "score_signal_to_noise_median": snr,
    }
