"""One callback per phase of Algorithm 1, the pruning criteria they plug in, and the spectra record."""

from basel_app.lit.callbacks.bsi_importance import BSIImportance
from basel_app.lit.callbacks.keep_phase import KeepPhase
from basel_app.lit.callbacks.prune_scheduler import PruneScheduler, full_rank_weights
from basel_app.lit.callbacks.recompose import Recompose
from basel_app.lit.callbacks.scorers import MagnitudeScorer, Scorer
from basel_app.lit.callbacks.spectra import SpectraRecord

__all__ = [
    "BSIImportance",
    "KeepPhase",
    "MagnitudeScorer",
    "PruneScheduler",
    "Recompose",
    "Scorer",
    "SpectraRecord",
    "full_rank_weights",
]
