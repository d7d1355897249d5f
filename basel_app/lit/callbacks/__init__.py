"""One callback per phase of Algorithm 1, plus the spectra record they share."""

from basel_app.lit.callbacks.keep_phase import KeepPhase
from basel_app.lit.callbacks.prune_scheduler import PruneScheduler
from basel_app.lit.callbacks.recompose import Recompose
from basel_app.lit.callbacks.spectra import SpectraRecord

__all__ = ["KeepPhase", "PruneScheduler", "Recompose", "SpectraRecord"]
