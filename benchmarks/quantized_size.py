"""Bytes on disk of a saved compressed model in float32, int8 and int4, and of the dense input model in float32
and int8, each saved by `save_compressed` and reloaded to check the logits are unchanged.

    .venv/bin/python benchmarks/quantized_size.py outputs/.../compressed_model --out /tmp/quantized
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the repo's basel_app, not an installed one

from basel_app.bench.models import load  # noqa: E402
from basel_app.models import load_compressed, save_compressed  # noqa: E402
from basel_app.models.compressed_io import weight_bytes_on_disk  # noqa: E402
from basel_app.models.quantization import quantize_linears  # noqa: E402


def saved_and_reloaded(model, tokenizer, directory: Path) -> dict:
    """Save, reload, and compare the logits of a fixed random batch."""
    path = save_compressed(model, tokenizer, directory, overwrite=True)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(model(ids).logits, load_compressed(path)[0](ids).logits)
    return {"bytes_on_disk": weight_bytes_on_disk(path), "reloads_to_the_same_logits": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compressed", type=Path, help="a compressed_model/ dir of a finished run")
    parser.add_argument("--model", default="smollm2_135m", help="the dense input model (a conf/model option)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sizes = {"compressed float32": {"bytes_on_disk": weight_bytes_on_disk(args.compressed)}}
    for scheme in ("int8", "int4"):
        model, tokenizer = load_compressed(args.compressed)
        quantize_linears(model, scheme)
        sizes[f"compressed {scheme}"] = saved_and_reloaded(model, tokenizer, args.out / f"compressed_{scheme}")
    dense, tokenizer = load(args.model)
    sizes["dense float32"] = saved_and_reloaded(dense, tokenizer, args.out / "dense_float32")
    quantize_linears(dense, "int8")
    sizes["dense int8"] = saved_and_reloaded(dense, tokenizer, args.out / "dense_int8")
    print(json.dumps(sizes, indent=1))


if __name__ == "__main__":
    main()
