"""One run's pictures, drawn from what it records in spectra.json and metrics.json.

`spectra.png`: one panel per projection type (q_proj, ..., lm_head). In a panel each layer of that type
is one line per stage, |value_i| against its position i on a log scale:

    at decomposition        the input weight's singular values σ_i (or the baseline's weighted ones)
    after relearning        s̃_i at the end of the keep phase, same bases, same order as at decomposition
    after recomposition     the singular values of the recomposed W̃ = U diag(s̃) Vᵀ + Ũ Ṽᵀ

`ranks.png`: a heatmap, rows the decoder layers, columns the projection types, each cell the rank the layer
kept (`metrics.json`'s `ranks`). Each figure function returns the Figure, so a test can read back the
plotted arrays and compare them with the JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from basel_app.plots.canvas import note_figure, save_figure

# The stages of spectra.json that spectra.png shows, with their legend text.
SPECTRA_STAGES = {
    "decomposition": "at decomposition",
    "relearned": "after relearning (keep phase)",
    "recomposed": "after recomposition",
}
RUN_PICTURES = {"spectra": "spectra.png", "ranks": "ranks.png"}
MAX_ANNOTATED_CELLS = 400  # beyond this the rank numbers in the heatmap's cells are unreadable


def layer_position(name: str) -> tuple[str, str]:
    """(layer, projection) of a module name: ('3', 'q_proj') for `model.layers.3.self_attn.q_proj`; a module
    outside the numbered decoder layers is its own row: ('lm_head', 'lm_head')."""
    parts = name.split(".")
    return next((part for part in parts[:-1] if part.isdigit()), name), parts[-1]


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _layer_order(layers: Sequence[str]) -> list[str]:
    """Numbered decoder layers in numeric order, then the other modules in the order they came."""
    unique = _unique(layers)
    return sorted((x for x in unique if x.isdigit()), key=int) + [x for x in unique if not x.isdigit()]


def spectra_figure(stages: Mapping[str, Mapping[str, Sequence[float]]], title: str) -> Figure:
    """`stages` is spectra.json: {stage: {layer name: values}}. Each line's gid is `<stage>|<layer name>`."""
    shown = [stage for stage in SPECTRA_STAGES if stages.get(stage)]
    kinds = _unique([layer_position(name)[1] for stage in shown for name in stages[stage]])
    if not kinds:
        return note_figure(title, "no spectra recorded: this run decomposed no layer")
    columns = min(4, len(kinds))
    figure = Figure(figsize=(4 * columns, 3.2 * math.ceil(len(kinds) / columns)), layout="constrained")
    panels = figure.subplots(math.ceil(len(kinds) / columns), columns, squeeze=False).ravel()
    for axes, kind in zip(panels, kinds):
        for number, stage in enumerate(SPECTRA_STAGES):
            names = [name for name in stages.get(stage, {}) if layer_position(name)[1] == kind]
            for i, name in enumerate(names):
                values = np.abs(np.asarray(stages[stage][name], dtype=float))
                (line,) = axes.plot(np.arange(1, len(values) + 1), values, color=f"C{number}", alpha=0.6, linewidth=1,
                                    label=SPECTRA_STAGES[stage] if i == 0 else "_nolegend_")
                line.set_gid(f"{stage}|{name}")
        layers = len({layer_position(name)[0] for stage in shown for name in stages[stage]
                      if layer_position(name)[1] == kind})
        axes.set_yscale("log")
        axes.set_title(f"{kind} ({layers} layer{'s' * (layers != 1)})")
        axes.set_xlabel("index i")
        axes.set_ylabel("|σ_i| (log)")
    for axes in panels[len(kinds):]:
        axes.remove()
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    figure.suptitle(title)
    return figure


def rank_grid(ranks: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str], np.ndarray]:
    """(layers, projections, grid): grid[i, j] the kept rank of layer i's projection j, NaN where none was targeted."""
    positions = {name: layer_position(name) for name in ranks}
    layers = _layer_order([layer for layer, _ in positions.values()])
    kinds = _unique([kind for _, kind in positions.values()])
    grid = np.full((len(layers), len(kinds)), np.nan)
    for name, (layer, kind) in positions.items():
        grid[layers.index(layer), kinds.index(kind)] = ranks[name]["rank"]
    return layers, kinds, grid


def ranks_figure(ranks: Mapping[str, Mapping[str, Any]], title: str) -> Figure:
    """`ranks` is metrics.json's: {layer name: {"rank", "kind", ...}}; a cell of a layer left dense says so."""
    if not ranks:
        return note_figure(title, "no ranks recorded: this run compressed no layer")
    layers, kinds, grid = rank_grid(ranks)
    figure = Figure(figsize=(2.5 + 1.1 * len(kinds), 2 + 0.35 * len(layers)), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis")
    figure.colorbar(image, ax=axes, label="kept rank")
    axes.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right")
    axes.set_yticks(range(len(layers)), layers)
    axes.set_xlabel("projection")
    axes.set_ylabel("layer")
    if grid.size <= MAX_ANNOTATED_CELLS:
        for name, record in ranks.items():
            layer, kind = layer_position(name)
            i, j = layers.index(layer), kinds.index(kind)
            dark = image.norm(grid[i, j]) < 0.5
            text = f"{record['rank']}" + ("\ndense" if record.get("kind") == "dense" else "")
            axes.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    axes.set_title(title)
    return figure


def save_run_pictures(
    run_dir: Path, spectra: Mapping[str, Mapping[str, Sequence[float]]], ranks: Mapping[str, Mapping[str, Any]],
    run_name: str,
) -> dict[str, Path]:
    """Write spectra.png and ranks.png into `run_dir`; returns {"spectra": path, "ranks": path}."""
    figures = {
        "spectra": spectra_figure(spectra, f"Singular values per layer type: {run_name}"),
        "ranks": ranks_figure(ranks, f"Kept rank per layer and projection: {run_name}"),
    }
    return {key: save_figure(figure, run_dir / RUN_PICTURES[key]) for key, figure in figures.items()}
