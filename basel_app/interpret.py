"""`python -m basel_app.interpret [overrides]`: a model's singular bases read as tokens (Basel, Table 1), and
what a finished Basel/BSI run kept of its input's bases.

For each chosen layer and head, the top bases of W_O^h W_V^h (GQA-paired), and for each chosen block
linear its own top bases, each read through the final norm and the output head (the math is in
`basel_app.lowrank.interpretation`). With `run_dir=`, the model is the run's compressed_model/, and for
each layer the run compressed, `kept_bases.json` says which of the input's bases survived (original rank
index, relearned weight); the strongest kept (largest |s̃|) and the strongest pruned (largest input σ)
are de-embedded from the input model, so a user sees what the task kept and what it threw away.

Writes interpret.md and interpret.json (into run_dir, or Hydra's run dir for a plain model) and logs
the same tables.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from basel_app.cli import run_validated
from basel_app.config.errors import ConfigError
from basel_app.config.names import BLOCK_LINEARS
from basel_app.config.schema import InterpretConfig, ModelConfig, register_schema
from basel_app.decomposition_cache import DecompositionCache
from basel_app.evaluate import load_any_model
from basel_app.files import atomic_write_json, atomic_write_text
from basel_app.lowrank import BaselLinear
from basel_app.lowrank.factorizations import Factorization
from basel_app.lowrank.interpretation import (
    block_linear,
    deembed,
    head_ov_bases,
    kv_head,
    linear_bases,
    residual_directions,
    top_tokens,
)
from basel_app.models import is_compressed_dir, load_config, load_model
from basel_app.pipeline import KEPT_BASES_FILE

register_schema()
log = logging.getLogger(__name__)

ReadTokens = Callable[[torch.Tensor], list[list[str]]]  # residual directions (hidden × k) -> k token lists


def token_reader(model: torch.nn.Module, tokenizer: Any, count: int) -> ReadTokens:
    """Reads residual directions as the `count` tokens the model's final norm and head rank highest."""

    def read(directions: torch.Tensor) -> list[list[str]]:
        ids = top_tokens(deembed(directions, model.model.norm, model.lm_head), count)
        return [[tokenizer.decode([i]) for i in row] for row in ids]

    return read


def basis_rows(bases: Factorization, directions: torch.Tensor, indices: list[int], read: ReadTokens) -> list[dict]:
    """One row per basis in `indices`: its index, singular value and tokens."""
    tokens = read(directions[:, indices]) if indices else []
    return [{"index": i, "singular_value": float(bases.values[i]), "tokens": t} for i, t in zip(indices, tokens)]


def head_sections(model: torch.nn.Module, layers: list[int], heads: list[int], count: int, read: ReadTokens) -> list[dict]:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    sections = []
    for layer in layers:
        attention = model.model.layers[layer].self_attn
        for head in heads:
            bases = head_ov_bases(attention.o_proj, attention.v_proj, head, config.num_attention_heads,
                                  config.num_key_value_heads, head_dim)
            top = list(range(min(count, bases.values.numel())))
            sections.append({"layer": layer, "head": head,
                             "kv_head": kv_head(head, config.num_attention_heads, config.num_key_value_heads),
                             "bases": basis_rows(bases, bases.left, top, read)})
    return sections


def linear_sections(model: torch.nn.Module, layers: list[int], linears: list[str], count: int,
                    read: ReadTokens) -> list[dict]:
    sections = []
    for layer in layers:
        block = model.model.layers[layer]
        for name in linears:
            bases = linear_bases(block_linear(block, name))
            top = list(range(min(count, bases.values.numel())))
            sections.append({"layer": layer, "linear": name, "bases": basis_rows(
                bases, residual_directions(block, name, bases), top, read)})
    return sections


def kept_sections(run_dir: Path, model: torch.nn.Module, layers: list[int], count: int, tokens: int) -> dict[str, Any]:
    """Which of the input's bases each chosen layer of a Basel/BSI run (`model`: its compressed model) kept,
    and the strongest kept and pruned ones de-embedded from the input model, loaded here, when the run's
    bases are the input model's plain SVD."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    record_file = run_dir / KEPT_BASES_FILE
    if not record_file.is_file():
        return {"note": f"no {KEPT_BASES_FILE}: method {metrics['method']} relearns and prunes no bases (only "
                        "basel and bsi do), or the run predates the record"}
    kept = json.loads(record_file.read_text())
    decomposition = json.loads((run_dir / "spectra.json").read_text())["decomposition"]
    method = metrics["config"]["method"]
    readable = method["init"] == "svd" and method["pre_finetune_epochs"] == 0
    if not readable:
        note = ("tokens omitted: the run's bases are not the input model's plain SVD (method.init="
                f"{method['init']}, method.pre_finetune_epochs={method['pre_finetune_epochs']})")
    elif method["free_bases"]:
        note = "method.free_bases=true: the bases trained on; the tokens are those of the input's bases"
    else:
        note = None
    names = {module: name for name, module in model.named_modules()}  # the input's names: only modules swapped
    original = load_model(ModelConfig(**metrics["config"]["model"])) if readable else None
    read = token_reader(original.model, original.tokenizer, tokens) if original else None
    sections = []
    for layer in layers:
        input_block = original.model.model.layers[layer] if original else None
        for linear in BLOCK_LINEARS:
            name = names[block_linear(model.model.layers[layer], linear)]
            if name in kept:
                sections.append(kept_section(input_block, layer, linear, kept[name], decomposition[name], count,
                                             read))
    return {"method": metrics["method"], "task": metrics["task"], "base_model": metrics["model"], "note": note,
            "layers": sections}


def kept_section(block: torch.nn.Module | None, layer: int, linear: str, record: dict[str, list], decomposed: list[float],
                 count: int, read: ReadTokens | None) -> dict[str, Any]:
    """One layer's kept bases (`record`: kept_bases.json's entry) among the `decomposed` ones (their
    singular values at the run's decomposition, spectra.json's); tokens, from the input `block`, when `read`
    is given."""
    weights = dict(zip(record["index"], record["weight"]))
    rank = len(decomposed)
    strongest_kept = sorted(weights, key=lambda i: -abs(weights[i]))[:count]
    strongest_pruned = [i for i in range(rank) if i not in weights][:count]
    if read is None:
        kept_rows, pruned_rows = ([{"index": i, "singular_value": decomposed[i]} for i in indices]
                                  for indices in (strongest_kept, strongest_pruned))
    else:
        original = BaselLinear.from_linear(block_linear(block, linear), additional_dim=0)  # as the run decomposed it
        bases = Factorization(original.U.detach(), original.singular_values.detach(), original.V.detach())
        # Another input model (a new revision, another dtype) would have other bases under the same indices.
        if bases.values.numel() != rank or not torch.allclose(bases.values.double(), torch.tensor(decomposed).double(),
                                                              rtol=1e-4, atol=1e-6):
            raise ConfigError(f"layer {layer} {linear}: the input model loaded now is not the one the run decomposed "
                              "(its singular values differ from spectra.json's); check the model source in "
                              "metrics.json")
        directions = residual_directions(block, linear, bases)
        kept_rows, pruned_rows = (basis_rows(bases, directions, indices, read)
                                  for indices in (strongest_kept, strongest_pruned))
    return {"layer": layer, "linear": linear, "rank": rank, "kept": len(weights),
            "kept_bases": [{"index": i, "weight": w} for i, w in weights.items()],
            "most_kept": [{**row, "weight": weights[row["index"]]} for row in kept_rows],
            "most_pruned": pruned_rows}


# --------------------------------------------------------------------------------------------- rendering


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table padded to line up in a terminal too."""
    cells = [header, *[[str(c).replace("|", "\\|") for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def shown(tokens: list[str]) -> str:
    return " ".join(json.dumps(t, ensure_ascii=False) for t in tokens)


def index_ranges(indices: list[int], most: int = 12) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8' (the first `most` runs)."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs[:most])
    return text + (f", … ({len(runs) - most} more runs)" if len(runs) > most else "")


def render(report: dict[str, Any]) -> str:
    parts = [f"# Singular bases of {report['label']}, read as tokens",
             "Each basis is read through the final norm and the output head; tokens are the top logits."]
    if report["heads"]:
        parts += ["## Attention heads: W_O^h W_V^h", table(
            ["layer", "head", "kv", "basis", "σ", "top tokens"],
            [[s["layer"], s["head"], s["kv_head"], b["index"], f"{b['singular_value']:.3g}", shown(b["tokens"])]
             for s in report["heads"] for b in s["bases"]])]
    if report["linears"]:
        parts += ["## Block linears' own bases (o/down_proj: what they write; others: what they read)", table(
            ["layer", "linear", "basis", "σ", "top tokens"],
            [[s["layer"], s["linear"], b["index"], f"{b['singular_value']:.3g}", shown(b["tokens"])]
             for s in report["linears"] for b in s["bases"]])]
    kept = report.get("kept")
    if kept is not None:
        parts.append("## What the run kept of the input's bases")
        if kept.get("layers") is None:
            return "\n\n".join([*parts, kept["note"]]) + "\n"
        parts.append(f"method {kept['method']}, task {kept['task']}, input model {kept['base_model']}. Basis = "
                     "original rank index (0 = largest σ of the input); s̃ = relearned weight."
                     + (f" {kept['note']}." if kept["note"] else ""))
        parts.append(table(["layer", "linear", "kept / rank", "kept bases"],
                           [[s["layer"], s["linear"], f"{s['kept']} / {s['rank']}",
                             index_ranges([b["index"] for b in s["kept_bases"]])] for s in kept["layers"]]))
        parts.append(table(
            ["layer", "linear", "which", "basis", "σ input", "s̃ relearned", "top tokens"],
            [[s["layer"], s["linear"], which, b["index"], f"{b['singular_value']:.3g}",
              f"{b['weight']:.3g}" if "weight" in b else "pruned", shown(b.get("tokens", []))]
             for s in kept["layers"] for which, key in (("kept", "most_kept"), ("pruned", "most_pruned"))
             for b in s[key]]))
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------- the command


def chosen(key: str, value: int | None, count: int, model_name: str) -> list[int]:
    """[value], or every index when value is None; a value out of range is a one-line ConfigError."""
    if value is None:
        return list(range(count))
    if value >= count:
        raise ConfigError(f"{key}={value} is out of range; {model_name} has {key}s 0-{count - 1}")
    return [value]


def interpret(cfg: InterpretConfig) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir) if cfg.run_dir else None
    model_cfg = replace(cfg.model, path=str(run_dir / "compressed_model")) if run_dir else cfg.model
    compressed = bool(model_cfg.path) and is_compressed_dir(model_cfg.path)
    label = f"the compressed model {model_cfg.path}" if compressed else model_cfg.name
    # Cheap checks first: the layer and head numbers against the model's config, before its weights load.
    config = json.loads((Path(model_cfg.path) / "config.json").read_text()) if compressed else \
        load_config(model_cfg).to_dict()
    layers = chosen("layer", cfg.layer, config["num_hidden_layers"], label)
    heads = chosen("head", cfg.head, config["num_attention_heads"], label)

    model, tokenizer, provenance = load_any_model(model_cfg, DecompositionCache.from_config(cfg.cache))
    read = token_reader(model, tokenizer, cfg.tokens)
    report: dict[str, Any] = {
        "label": label,
        "model": provenance,
        "settings": {"layer": cfg.layer, "head": cfg.head, "ov": cfg.ov, "linears": cfg.linears, "bases": cfg.bases,
                     "tokens": cfg.tokens},
        "heads": head_sections(model, layers, heads, cfg.bases, read) if cfg.ov else [],
        "linears": linear_sections(model, layers, cfg.linears, cfg.bases, read),
    }
    if run_dir:
        report["kept"] = kept_sections(run_dir, model, layers, cfg.bases, cfg.tokens)
    text = render(report)
    out = run_dir or Path(cfg.output_dir)
    atomic_write_json(out / "interpret.json", report)
    atomic_write_text(out / "interpret.md", text)
    log.info("\n%s", text)
    log.info("written: %s, %s", out / "interpret.md", out / "interpret.json")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="interpret")
def main(cfg: DictConfig) -> None:
    run_validated(cfg, interpret)


if __name__ == "__main__":
    main()
