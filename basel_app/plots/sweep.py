"""A sweep's figure, the papers' accuracy-against-model-size plot: one panel per evaluation metric, in each
one line per method through its runs' (parameters, metric after compression) points, sorted by size,
and the input model(s) as black stars (their metric before compression)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from matplotlib.figure import Figure

from basel_app.plots.canvas import note_figure


class SizePoint(NamedTuple):
    """One model in the figure: its parameter count and its metrics (a metric it lacks is not drawn)."""

    params: int
    metrics: Mapping[str, float]


def quality_vs_size_figure(
    curves: Mapping[str, Sequence[SizePoint]], metrics: Sequence[str], title: str,
    inputs: Sequence[SizePoint] = (),
) -> Figure:
    """`curves` is {method: its runs}. Each method's line is labelled with the method's name."""
    if not metrics:
        return note_figure(title, "no evaluation metric in any finished run (eval.enabled=false?)")
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure = Figure(figsize=(5 * columns, 3.8 * rows), layout="constrained")
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, metric in zip(panels, metrics):
        for method, points in curves.items():
            drawn = sorted((p.params, p.metrics[metric]) for p in points if metric in p.metrics)
            if drawn:
                axes.plot(*zip(*drawn), marker="o", label=method)
        reference = [(p.params, p.metrics[metric]) for p in inputs if metric in p.metrics]
        if reference:
            axes.plot(*zip(*reference), linestyle="none", marker="*", markersize=12, color="black",
                      label="input model (before compression)")
        axes.set_xlabel("parameters")
        axes.set_ylabel(metric)
        axes.set_title(f"{metric} against model size")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    for axes in panels[len(metrics):]:
        axes.remove()
    figure.suptitle(title)
    return figure
