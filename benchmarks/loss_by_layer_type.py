"""Where a compressed model's loss comes from: put one layer type back to the input model's dense weights.

For a finished run, the validation answer loss (the training records the run held out) of its compressed
model as saved, then with every layer of one type (q_proj, ..., down_proj) replaced by the dense layer of the
input model, one type at a time, and with all of them replaced. A type whose restoration recovers most of the
gap to the dense model is where compression cost the most. Restored layers meet weights that post-fine-tuning
adapted to the compressed ones, so the parts need not add up to the whole.

    .venv/bin/python benchmarks/loss_by_layer_type.py results/quality/basel_x2 --out /tmp/by_type.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the repo's basel_app, not an installed one

from basel_app.bench.models import load  # noqa: E402
from basel_app.config.schema import TaskConfig  # noqa: E402
from basel_app.data import TaskDataModule  # noqa: E402
from basel_app.evaluation.answer_loss import answer_loss  # noqa: E402
from basel_app.files import atomic_write_json  # noqa: E402
from basel_app.lowrank import set_submodule  # noqa: E402
from basel_app.models import load_compressed  # noqa: E402

TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def restored(compressed: nn.Module, dense: nn.Module, types: list[str]) -> nn.Module:
    """`compressed` with every targeted layer whose name ends in one of `types` swapped for the dense one."""
    for name, module in dict(dense.named_modules()).items():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in types:
            set_submodule(compressed, name, module)
    return compressed


def params(model: nn.Module, layer_type: str) -> int:
    """Parameters of every layer of one type, dense (`….q_proj.weight`) or thin (`….q_proj.down.weight`)."""
    return sum(p.numel() for name, p in model.named_parameters() if f".{layer_type}." in name)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run dir (metrics.json, compressed_model/)")
    parser.add_argument("--model", default="smollm2_135m", help="the dense input model (a conf/model option)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    args = parser.parse_args(argv)
    metrics = json.loads((args.run / "metrics.json").read_text())
    config = metrics["config"]
    if not config["task"]["validation_samples"]:
        parser.error(f"{args.run} held out no validation records (task.validation_samples=0): nothing to measure on "
                     "that was not trained on; use a run with task.validation_samples > 0")
    datamodule = TaskDataModule.from_config(TaskConfig(**config["task"]), seed=config["seed"])
    datamodule.load_records()
    dense, tokenizer = load(args.model)
    datamodule.attach_tokenizer(tokenizer)
    datamodule.setup("validate")
    items = datamodule.validation_dataset.items
    bf16 = metrics["precision"] == "bf16-mixed"  # what the run evaluated under ("auto" resolved)
    precision = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def loss(model: nn.Module) -> float:
        with precision():
            return answer_loss(model, tokenizer, items, datamodule.eval_batch_size)["answer_loss"]

    start = time.perf_counter()
    rows = {"dense": loss(dense), "compressed": loss(load_compressed(args.run / "compressed_model")[0])}
    for restore in [[t] for t in TYPES] + [TYPES]:
        name = "all" if len(restore) > 1 else restore[0]
        model = restored(load_compressed(args.run / "compressed_model")[0], load(args.model)[0], restore)
        rows[name] = loss(model)
        print(f"{name:>10}: {rows[name]:.4f}", flush=True)
    compressed_model = load_compressed(args.run / "compressed_model")[0]
    table = {
        "run": str(args.run), "validation_items": len(items), "precision": metrics["precision"],
        "seconds": round(time.perf_counter() - start, 1),
        "loss": rows,
        "recovered": {t: rows["compressed"] - rows[t] for t in [*TYPES, "all"]},
        "params": {t: {"dense": params(dense, t), "compressed": params(compressed_model, t)} for t in TYPES},
    }
    atomic_write_json(args.out, table)
    print(f"validation answer loss on {len(items)} held-out training records ({table['precision']}): dense "
          f"{rows['dense']:.4f}, compressed {rows['compressed']:.4f}")
    print("| type restored | loss | recovered | dense params | compressed params |\n| --- | ---: | ---: | ---: | ---: |")
    for t in [*TYPES, "all"]:
        p = table["params"].get(t, {"dense": sum(v["dense"] for v in table["params"].values()),
                                    "compressed": sum(v["compressed"] for v in table["params"].values())})
        print(f"| {t} | {rows[t]:.4f} | {table['recovered'][t]:+.4f} | {p['dense']:,} | {p['compressed']:,} |")
    print(f"\n`.venv/bin/python benchmarks/loss_by_layer_type.py {args.run} --model {args.model} --out {args.out}`")
    return table


if __name__ == "__main__":
    main()
