"""BSI's scorer, a plain object the PruneScheduler asks before each pruning event: it fetches the
batches and the precision context and lets `basel_app.methods.importance.TaylorImportance` score every basis.

The batches come from the training split, drawn afresh for each event and seeded by the event number, so a
resumed run scores exactly as the original would; the estimator's EMA state is checkpointed with the
PruneScheduler's state for the same reason.

Hutchinson's perturbation sizes are per layer: ε_l = `eps_scale` × the RMS of the layer's kept s̃. The
default (1e-3, in `conf/method/bsi.yaml`) is where the finite-difference H d agreed best with the exact double
backward on SmolLM2 in float32, to 3-5e-4 relative (`benchmarks/bsi_epsilon.py`, `docs/BENCHMARKS.md`):
at 1e-4 float32 rounding of the gradient difference makes it 3-4e-3, at 1e-2 the O(ε²) term 1-3e-2.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from basel_app.methods.importance import TaylorImportance

log = logging.getLogger(__name__)


class BSIImportance:
    name = "taylor"

    def __init__(
        self, batches: int, probes: int, eps_scale: float, hvp: str = "finite_difference", variant: str = "both",
        seed: int = 0, hessian: str = "hutchinson", curvature_floor: float | None = 0.0, ema: float = 0.0,
    ) -> None:
        if batches < 1:
            raise ValueError(f"need batches >= 1; got {batches}")
        self.batches, self.seed = batches, seed
        self.estimator = TaylorImportance(hessian, probes, eps_scale, hvp, variant, curvature_floor, ema)

    @property
    def records(self) -> list[dict[str, Any]]:
        """One summary per pruning event, for metrics.json."""
        return self.estimator.records

    def priorities(self, trainer: L.Trainer, pl_module: L.LightningModule, event: int) -> dict[str, torch.Tensor]:
        seed = self.seed * 100_003 + event
        batches = [
            {key: value.to(pl_module.device) for key, value in batch.items()}
            for batch in trainer.datamodule.calibration_batches(self.batches, seed=seed)
        ]
        scores = self.estimator.scores(pl_module.model, batches, trainer.precision_plugin.forward_context, seed)
        record = {"event": event, **self.records[-1]}
        self.records[-1] = record
        snr = record["score_signal_to_noise_median"]
        if snr is not None and snr < 1:
            log.warning(
                "BSI event %d: the median basis score is %.2f standard errors from zero, so the ranking is mostly "
                "estimation noise; raise method.importance.batches (M=%d) and/or method.importance.probes (K=%d)",
                event, snr, self.batches, self.estimator.probes,
            )
        pl_module.log_dict({f"bsi/{k}": float(v) for k, v in record.items() if k != "event" and v is not None},
                           on_step=True)
        log.info("BSI importance for event %d: %s", event, record)
        return scores

    def state_dict(self) -> dict[str, Any]:
        return self.estimator.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.estimator.load_state_dict(state_dict)
