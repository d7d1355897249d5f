"""How much each kind of layer tolerates pruning, before any retraining.

For each module type (and the first/last decoder layer), keep the largest-|s| bases holding `--keep-ratio`
of the singular-value mass (the Basel rule applied once, on the input model's own spectra), leave every
other layer intact, and measure the teacher-forced GSM8K answer loss on the first evaluation items.

    .venv/bin/python benchmarks/layer_sensitivity.py --keep-ratio 0.9 --eval-items 8
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from basel_app.config.schema import ModelConfig, TaskConfig
from basel_app.data import TaskDataModule
from basel_app.evaluation.answer_loss import answer_nll
from basel_app.lowrank import find_target_linears, mass_keep_mask, reparameterize
from basel_app.models import load_model

TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@torch.no_grad()
def answer_loss(model, batches) -> float:
    nll = tokens = 0.0
    for batch in batches:
        total, count = answer_nll(model, batch)
        nll, tokens = nll + total.item(), tokens + count.item()
    return nll / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-ratio", type=float, default=0.9)
    parser.add_argument("--eval-items", type=int, default=8)
    args = parser.parse_args()

    start = time.perf_counter()
    loaded = load_model(OmegaConf.to_object(OmegaConf.structured(ModelConfig)))
    task = OmegaConf.to_object(OmegaConf.structured(TaskConfig(max_eval_samples=args.eval_items, max_length=256)))
    data = TaskDataModule.from_config(task, seed=0)
    data.load_records()
    data.attach_tokenizer(loaded.tokenizer)
    data.setup("validate")
    batches = list(data.val_dataloader())
    model = loaded.model
    print(f"model {loaded.provenance['name']}, {args.eval_items} GSM8K test items, keep_ratio {args.keep_ratio}")
    print(f"{'pruned layers':<16} {'mean kept rank':>15} {'answer loss':>12}")
    print(f"{'none (input)':<16} {'':>15} {answer_loss(model, batches):12.3f}")
    layers = reparameterize(model, find_target_linears(model, TYPES), additional_dim=0)
    initial = {name: layer.keep_mask.clone() for name, layer in layers.items()}
    for group in [*TYPES, "layers.0.", f"layers.{model.config.num_hidden_layers - 1}."]:
        chosen = [layer for name, layer in layers.items() if group in name]
        for name, layer in layers.items():
            layer.keep_mask.copy_(initial[name])
        for layer in chosen:
            layer.prune(mass_keep_mask(layer.singular_values.abs(), layer.keep_mask, args.keep_ratio))
        ranks = [layer.kept_rank for layer in chosen]
        print(f"{group:<16} {sum(ranks) / len(ranks):15.1f} {answer_loss(model, batches):12.3f}", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
