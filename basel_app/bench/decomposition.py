"""Decomposition: the whole model's "decompose" phase on a cache miss, on a hit, and with the cache off.

Per basis init (`svd`: Basel's plain SVD bases; `whitened`: SVD-LLM's calibration Gram statistics and
factorisation), what the pipeline does before stage 1 on a fresh copy of the input model, with the run's
own config (`scale=cpu`: every linear type, `method.calibration_batches` batches of training examples):
the statistics and the factorisation the init needs, then `reparameterize`. Each repeat uses a new empty
cache dir, alternating:

    off     `cache.enabled=false`: computed, nothing stored
    miss    computed and stored (safetensors, sha256 manifest)
    hit     the same again: loaded and checksummed

A hit still hashes the weights (and for `whitened` the model state and calibration batches) and runs
`reparameterize`. Entry bytes on disk are reported beside the times.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basel_app.bench.measure import summary, table
from basel_app.bench.models import run_config
from basel_app.data import TaskDataModule
from basel_app.decomposition_cache import DecompositionCache
from basel_app.lowrank import find_target_linears, reparameterize
from basel_app.methods.one_shot import INIT_FACTORIZATIONS, factorize_layers, svd_bases_of
from basel_app.models import load_model

CACHE_MODES = ("off", "miss", "hit")


@dataclass(frozen=True)
class DecompositionSettings:
    model: str = "smollm2_135m"
    inits: str = "svd,whitened"
    calibration_batches: int = 8
    repeats: int = 1


def run(settings: DecompositionSettings) -> dict[str, Any]:
    cfg = run_config([f"model={settings.model}", f"method.calibration_batches={settings.calibration_batches}"])
    loaded = load_model(cfg.model, DecompositionCache.from_config(cfg.cache))  # the input model; not what is timed
    data = TaskDataModule.from_config(cfg.task, seed=cfg.seed)
    data.load_records()
    data.attach_tokenizer(loaded.tokenizer)
    data.setup("fit")
    batches = data.calibration_batches(cfg.method.calibration_batches, seed=cfg.seed)

    def decompose(init: str, cache: DecompositionCache) -> int:
        model = copy.deepcopy(loaded.model)
        targets = find_target_linears(model, cfg.model.target_modules, cfg.model.exclude_modules,
                                      cfg.model.include_tied_head)
        if init == "svd":
            factorizations = svd_bases_of(targets, cache)
        else:
            factorizations = factorize_layers(INIT_FACTORIZATIONS[init], model, targets, lambda: batches,
                                              lambda m, b: m(**b).loss, cfg.method.asvd_alpha, cache)
        reparameterize(model, targets, additional_dim=cfg.method.additional_dim, seed=cfg.seed,
                       factorizations=factorizations)
        return len(targets)

    results = {}
    for init in settings.inits.split(","):
        seconds: dict[str, list[float]] = {mode: [] for mode in CACHE_MODES}
        computed: dict[str, int] = {}
        for _ in range(settings.repeats):
            with tempfile.TemporaryDirectory(prefix="basel-bench-cache-") as directory:
                for mode in CACHE_MODES:
                    cache = DecompositionCache(None if mode == "off" else directory)
                    start = time.perf_counter()
                    layers = decompose(init, cache)
                    seconds[mode].append(time.perf_counter() - start)
                    computed[mode] = cache.computed
                stored = sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())
        results[init] = {"layers": layers, "entry_bytes": stored, "entries_computed": computed,
                         **{m: summary(s) for m, s in seconds.items()}}
        results[init]["miss_over_hit"] = results[init]["miss"]["median"] / results[init]["hit"]["median"]
    return {"settings": settings.__dict__, "inits": results}


def render(result: dict[str, Any]) -> str:
    rows = [[init, v["layers"], v["off"]["median"], v["miss"]["median"], v["hit"]["median"],
             f"{v['miss_over_hit']:.1f}x", v["entry_bytes"] / 2**20, v["entries_computed"]["hit"]]
            for init, v in result["inits"].items()]
    s = result["settings"]
    header = ["basis init", "layers", "cache off s", "miss s", "hit s", "miss / hit", "entries MB", "computed on hit"]
    return (f"decomposition: {s['model']}, {s['calibration_batches']} calibration batches, median of "
            f"{s['repeats']}\n\n" + table(header, rows))
