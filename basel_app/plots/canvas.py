"""What every picture shares: a PNG that is complete or absent, and a figure that says why it is empty."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from basel_app.files import atomic_path


def save_figure(figure: Figure, path: Path, dpi: int = 120) -> Path:
    FigureCanvasAgg(figure)  # headless whatever matplotlib's configured backend
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def note_figure(title: str, note: str) -> Figure:
    """A figure with only `title` and `note`, for a run or sweep that has nothing of its kind to draw."""
    figure = Figure(figsize=(6, 2), layout="constrained")
    axes = figure.subplots()
    axes.set_axis_off()
    axes.text(0.5, 0.5, note, ha="center", va="center")
    axes.set_title(title)
    return figure
