"""Every run dir gets spectra.png and ranks.png, and they show what spectra.json and metrics.json hold: the
figures the pipeline drew are caught on their way to disk and their plotted arrays read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from basel_app.pipeline import run
from basel_app.plots import run as run_plots

from ..lit.test_pipeline import tiny_config

QUICK = ("eval.enabled=false", "method.post_finetune_epochs=0")


@pytest.fixture
def drawn(monkeypatch):
    """{"spectra": Figure, "ranks": Figure}: the figures save_run_pictures builds, as it builds them."""
    figures = {}
    for key in ("spectra", "ranks"):
        build = getattr(run_plots, f"{key}_figure")

        def record(*args, _build=build, _key=key, **kwargs):
            figures[_key] = _build(*args, **kwargs)
            return figures[_key]

        monkeypatch.setattr(run_plots, f"{key}_figure", record)
    return figures


def assert_png_shows_something(path, min_side=200):
    pixels = imread(path)  # fails on anything but a complete PNG
    assert min(pixels.shape[:2]) >= min_side
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > 20  # lines, text and colour maps, not a blank canvas


def expected_rank_grid(ranks):
    """The heatmap the test expects, built independently: row = the decoder layer's number, column = projection."""
    kinds = list(dict.fromkeys(name.rsplit(".", 1)[1] for name in ranks))
    layers = sorted({int(name.split(".")[2]) for name in ranks})
    grid = np.full((len(layers), len(kinds)), np.nan)
    for name, record in ranks.items():
        grid[layers.index(int(name.split(".")[2])), kinds.index(name.rsplit(".", 1)[1])] = record["rank"]
    return [str(x) for x in layers], kinds, grid


@pytest.mark.parametrize("method", ["basel", "svd"])
def test_the_run_pictures_plot_exactly_the_recorded_spectra_and_ranks(compose_config, tmp_path, drawn, method):
    run(tiny_config(compose_config, tmp_path, f"method={method}", "method.compression_ratio=1.5", *QUICK))
    spectra = json.loads((tmp_path / "spectra.json").read_text())
    ranks = json.loads((tmp_path / "metrics.json").read_text())["ranks"]

    # Spectra: one line per (shown stage, layer), in the panel of its projection type, |values| against 1..n.
    shown = [stage for stage in ("decomposition", "relearned", "recomposed") if stage in spectra]
    assert shown == (["decomposition", "relearned", "recomposed"] if method == "basel" else ["decomposition"])
    lines = {}
    for axes in drawn["spectra"].axes:
        kind = axes.get_title().split(" ")[0]
        assert axes.get_xlabel() and axes.get_ylabel() and axes.get_yscale() == "log"
        for line in axes.get_lines():
            stage, name = line.get_gid().split("|")
            assert name.rsplit(".", 1)[1] == kind
            lines[stage, name] = line
    assert set(lines) == {(stage, name) for stage in shown for name in spectra[stage]}
    for (stage, name), line in lines.items():
        values = np.abs(np.asarray(spectra[stage][name]))
        np.testing.assert_array_equal(line.get_ydata(), values)
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, len(values) + 1))
    assert drawn["spectra"].get_suptitle()

    # Ranks: the heatmap's cells are metrics.json's ranks, rows and columns labelled.
    (axes,) = [a for a in drawn["ranks"].axes if a.images]
    layers, kinds, grid = expected_rank_grid(ranks)
    shown_grid = axes.images[0].get_array()
    np.testing.assert_array_equal(np.ma.filled(shown_grid, np.nan), grid)
    assert [t.get_text() for t in axes.get_xticklabels()] == kinds
    assert [t.get_text() for t in axes.get_yticklabels()] == layers
    assert axes.get_xlabel() == "projection" and axes.get_ylabel() == "layer" and axes.get_title()

    for name in ("spectra.png", "ranks.png"):
        assert_png_shows_something(tmp_path / name)


def test_the_dense_reference_still_gets_both_pictures_saying_there_is_nothing_to_draw(compose_config, tmp_path,
                                                                                    drawn):
    run(tiny_config(compose_config, tmp_path, "method=finetune", "eval.enabled=false"))
    for key in ("spectra", "ranks"):
        (axes,) = drawn[key].axes
        assert not axes.get_lines() and not axes.images
        assert "no " in axes.texts[0].get_text()
        assert_png_shows_something(tmp_path / f"{key}.png", min_side=100)
