"""BSI's scorer: before each pruning event, the Taylor estimate of the loss increase of removing each
basis, from g and a Hutchinson diag(H) of the task loss w.r.t. s̃ (see `basel_app.methods.taylor`).

The statistics are averaged over `batches` batches of the training split (drawn afresh for each event,
seeded by the event number, so a resumed run scores exactly as the original would) in eval mode, under
the trainer's precision context (bf16 autocast on GPUs); s̃ itself stays float32, so the ±ε
perturbation and the gradient difference are float32.

Perturbation sizes are per layer: ε_l = `eps_scale` × the RMS of the layer's kept s̃. The default
(1e-3, in `conf/method/bsi.yaml`) is where the finite-difference H d agreed best with the exact double
backward on SmolLM2 in float32, to 3-5e-4 relative (`benchmarks/bsi_epsilon.py`, `docs/BENCHMARKS.md`):
at 1e-4 float32 rounding of the gradient difference makes it 3-4e-3, at 1e-2 the O(ε²) term 1-3e-2.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import lightning as L
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from basel_app.lowrank import basel_layers
from basel_app.methods.taylor import estimate_taylor_statistics, taylor_score_stderr, taylor_scores
from basel_app.modes import eval_mode

log = logging.getLogger(__name__)


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: one batch and one probe give no standard error, recorded as null."""
    return value if math.isfinite(value) else None


class BSIImportance:
    name = "taylor"

    def __init__(
        self, batches: int, probes: int, eps_scale: float, hvp: str = "finite_difference", variant: str = "both",
        seed: int = 0,
    ) -> None:
        if batches < 1 or probes < 1 or eps_scale <= 0:
            raise ValueError(f"need batches >= 1, probes >= 1, eps_scale > 0; got {batches}, {probes}, {eps_scale}")
        self.batches, self.probes, self.eps_scale = batches, probes, eps_scale
        self.hvp, self.variant, self.seed = hvp, variant, seed
        self.records: list[dict[str, Any]] = []  # one summary per pruning event, for metrics.json

    def priorities(self, trainer: L.Trainer, pl_module: L.LightningModule, event: int) -> dict[str, torch.Tensor]:
        model = pl_module.model
        layers = basel_layers(model)
        params = [layer.singular_values for layer in layers.values()]
        eps = []
        for layer in layers.values():
            kept = layer.singular_values.detach()[layer.keep_mask]
            scale = float(kept.square().mean().sqrt()) if kept.numel() else 1.0
            eps.append(torch.full_like(layer.singular_values, self.eps_scale * max(scale, 1e-12)))
        batches = [
            {key: value.to(pl_module.device) for key, value in batch.items()}
            for batch in trainer.datamodule.calibration_batches(self.batches, seed=self.seed * 100_003 + event)
        ]

        # Fused attention kernels have no double backward; the math one (slower) has, for validation runs.
        def attention() -> contextlib.AbstractContextManager:
            return sdpa_kernel(SDPBackend.MATH) if self.hvp == "double_backward" else contextlib.nullcontext()

        def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            with trainer.precision_plugin.forward_context(), attention():
                return model(**batch).loss.float()

        generator = torch.Generator().manual_seed(self.seed * 100_003 + event)
        with eval_mode(model):
            stats = estimate_taylor_statistics(loss_fn, params, batches, self.probes, eps, self.hvp, generator)
        scores = {}
        kept_h, kept_se, kept_score, kept_score_se = [], [], [], []
        for (name, layer), g, h, se, se_g in zip(layers.items(), stats.grad, stats.hessian_diag, stats.hessian_stderr,
                                                 stats.grad_stderr):
            scores[name] = taylor_scores(layer.singular_values, g, h, self.variant)
            mask = layer.keep_mask
            kept_h.append(h[mask])
            kept_se.append(se[mask])
            kept_score.append(scores[name][mask])
            kept_score_se.append(taylor_score_stderr(layer.singular_values, se_g, se, self.variant)[mask])
        h_all, se_all = torch.cat(kept_h), torch.cat(kept_se)
        score, score_se = torch.cat(kept_score), torch.cat(kept_score_se)
        # |ΔL| / its standard error, per basis: below ~1 the ranking is mostly estimation noise. One batch
        # (or one probe) leaves a term's spread unmeasured: then there is no ratio to report.
        snr = float((score.abs() / score_se.clamp(min=1e-30)).median()) if bool(torch.isfinite(score_se).all()) else None
        record = {
            "event": event,
            "samples": stats.samples,
            "hessian_diag_mean": float(h_all.mean()),
            "hessian_stderr_mean": _finite_or_none(float(se_all.mean())),
            "hessian_relative_stderr_median": _finite_or_none(float((se_all / h_all.abs().clamp(min=1e-30)).median())),
            "score_stderr_mean": _finite_or_none(float(score_se.mean())),
            "score_signal_to_noise_median": snr,
        }
        if snr is not None and snr < 1:
            log.warning(
                "BSI event %d: the median basis score is %.2f standard errors from zero, so the ranking is mostly "
                "estimation noise; raise method.importance.batches (M=%d) and/or method.importance.probes (K=%d)",
                event, snr, self.batches, self.probes,
            )
        self.records.append(record)
        pl_module.log_dict({f"bsi/{k}": float(v) for k, v in record.items() if k != "event" and v is not None},
                           on_step=True)
        log.info("BSI importance for event %d: %s", event, record)
        return scores

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = state_dict["records"]
