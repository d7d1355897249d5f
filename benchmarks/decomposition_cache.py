"""The decomposition phase on a cache miss and on a hit (SmolLM2-135M by default, the run's own config).

Run it twice with the same `--cache-dir`: the first run computes and stores, the second loads. Each run
times, per basis init, what the pipeline's "decompose" phase does (calibration statistics and the
factorisation where the init needs them, then `reparameterize`), on a fresh copy of the input model.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/decomposition_cache.py --cache-dir /tmp/dc   # miss
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/decomposition_cache.py --cache-dir /tmp/dc   # hit
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from basel_app.config.schema import register_schema
from basel_app.data import TaskDataModule
from basel_app.decomposition_cache import DecompositionCache
from basel_app.lowrank import find_target_linears, reparameterize
from basel_app.methods.one_shot import INIT_FACTORIZATIONS, factorize_layers, svd_bases_of
from basel_app.models import load_model

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--inits", nargs="+", default=["svd", "whitened"])
    parser.add_argument("overrides", nargs="*", help="config overrides, as for python -m basel_app")
    args = parser.parse_args()
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name="config", overrides=["output_dir=unused", *args.overrides]))

    loaded = load_model(cfg.model)
    data = TaskDataModule.from_config(cfg.task, seed=cfg.seed)
    data.load_records()
    data.attach_tokenizer(loaded.tokenizer)
    data.setup("fit")
    cache = DecompositionCache(args.cache_dir)
    print(f"model {cfg.model.name}, targets {cfg.model.target_modules}, {cfg.method.calibration_batches} "
          f"calibration batches, torch threads {torch.get_num_threads()}")
    for init in args.inits:
        model = copy.deepcopy(loaded.model)
        targets = find_target_linears(model, cfg.model.target_modules, cfg.model.exclude_modules,
                                      cfg.model.include_tied_head)
        start = time.perf_counter()
        if init == "svd":
            factorizations = svd_bases_of(targets, cache)
        else:
            batches = data.calibration_batches(cfg.method.calibration_batches, seed=cfg.seed)
            factorizations = factorize_layers(INIT_FACTORIZATIONS[init], model, targets, lambda: batches,
                                              lambda m, b: m(**b).loss, cfg.method.asvd_alpha, cache)
        reparameterize(model, targets, additional_dim=cfg.method.additional_dim, seed=cfg.seed,
                       factorizations=factorizations)
        print(f"init={init}: decomposition phase {time.perf_counter() - start:.2f} s ({len(targets)} layers)")


if __name__ == "__main__":
    main()
