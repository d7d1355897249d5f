"""Pictures of a run (spectra, kept ranks) and of a sweep (quality against model size), drawn with
matplotlib's object API on the Agg canvas: no display, no pyplot state, safe in any worker process."""

from basel_app.plots.canvas import save_figure
from basel_app.plots.run import RUN_PICTURES, ranks_figure, save_run_pictures, spectra_figure
from basel_app.plots.sweep import SizePoint, quality_vs_size_figure

__all__ = [
    "RUN_PICTURES",
    "SizePoint",
    "quality_vs_size_figure",
    "ranks_figure",
    "save_figure",
    "save_run_pictures",
    "spectra_figure",
]
