"""One callback per training phase of Algorithm 1 (keep, prune), the pruning criteria they plug in, and the
spectra record. Recomposition is no phase of training: the pipeline does it after `Trainer.fit` returns."""

from basel_app.lit.callbacks.bsi_importance import BSIImportance
from basel_app.lit.callbacks.keep_phase import KeepPhase
from basel_app.lit.callbacks.prune_scheduler import PruneScheduler, full_rank_weights
from basel_app.lit.callbacks.scorers import MagnitudeScorer, Scorer
from basel_app.lit.callbacks.spectra import SpectraRecord

__all__ = [
    "BSIImportance",
    "KeepPhase",
    "MagnitudeScorer",
    "PruneScheduler",
    "Scorer",
    "SpectraRecord",
    "full_rank_weights",
]
