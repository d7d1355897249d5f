"""Saving and loading a compressed model as an ordinary Hugging Face directory.

Layout of a saved model (nothing is pickled):

    <path>/config.json           model_type "basel_lowrank_llama", lowrank_ranks = every factored module's rank
    <path>/model.safetensors     the weights (LowRankLinear as `<name>.down.weight`, `<name>.up.weight/bias`)
    <path>/generation_config.json, tokenizer files
    <path>/basel_metadata.json   what the caller passed as `metadata` (method, ratios, provenance, ...)

The directory is written under a temporary name next to `path` and renamed into place only once complete,
so a crash mid-save never leaves something that looks like a finished model.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from basel_app.lowrank.thin import LowRankLinear
from basel_app.models.lowrank_llama import MODEL_TYPE, LowRankLlamaConfig, LowRankLlamaForCausalLM
from basel_app.models.rebuild import rebuild_sharing_tensors

logger = logging.getLogger(__name__)

METADATA_FILE = "basel_metadata.json"
FORMAT_VERSION = 1
# Config keys that describe the source model, not the compressed one.
_DROPPED_CONFIG_KEYS = ("model_type", "architectures", "quantization_config", "transformers_version", "auto_map")


def lowrank_ranks(model: torch.nn.Module) -> dict[str, int]:
    """Module name -> rank of every `LowRankLinear` in `model`."""
    return {name: module.rank for name, module in model.named_modules() if isinstance(module, LowRankLinear)}


def save_compressed(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase | None,
    path: str | Path,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a Llama with some `nn.Linear`s replaced by `LowRankLinear` as a `basel_lowrank_llama` directory.

    The ranks are read off the modules; dense `nn.Linear`s stay dense. Everything is written to a temporary
    directory next to `path` and renamed into place when complete. Raises FileExistsError if `path` is a
    non-empty directory and `overwrite` is False. Returns `path` (absolute).
    """
    path = Path(path).absolute()
    if not isinstance(model, LlamaForCausalLM):
        raise TypeError(f"save_compressed needs a LlamaForCausalLM (or subclass); got {type(model).__name__}")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
    # Serialise the metadata first: a non-JSON value should fail before anything is written.
    metadata_json = json.dumps({"format_version": FORMAT_VERSION, "metadata": metadata or {}}, indent=2)

    ranks = lowrank_ranks(model)
    target = _as_lowrank_llama(model, ranks)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        target.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(metadata_json)
        _check_no_pickles(tmp)
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved compressed model (%d low-rank modules) to %s", len(ranks), path)
    return path


def load_compressed(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> tuple[LowRankLlamaForCausalLM, PreTrainedTokenizerBase | None]:
    """Load what `save_compressed` wrote: (model in eval mode, tokenizer or None if none was saved).

    `dtype=None` keeps the dtype the model was saved in.
    """
    path = Path(path)
    _check_compressed_dir(path)
    model = LowRankLlamaForCausalLM.from_pretrained(path, dtype=dtype or "auto", use_safetensors=True)
    if device is not None:
        model = model.to(device)
    model.eval()
    tokenizer = None
    if (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def is_compressed_dir(path: str | Path) -> bool:
    """Whether `path` holds a model written by `save_compressed`."""
    try:
        _check_compressed_dir(Path(path))
    except (FileNotFoundError, ValueError):
        return False
    return True


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The `metadata` dict that was passed to `save_compressed` for the model at `path`."""
    file = Path(path) / METADATA_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} was not written by save_compressed")
    return json.loads(file.read_text())["metadata"]


def _as_lowrank_llama(model: LlamaForCausalLM, ranks: dict[str, int]) -> LowRankLlamaForCausalLM:
    """A `LowRankLlamaForCausalLM` sharing `model`'s tensors (built on the meta device: no copy, no init)."""
    config_dict = model.config.to_dict()
    for key in _DROPPED_CONFIG_KEYS:
        config_dict.pop(key, None)
    config_dict["lowrank_ranks"] = ranks
    config_dict["dtype"] = str(model.dtype).removeprefix("torch.")

    embed_weight = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied_in_fact = isinstance(head, torch.nn.Linear) and head.weight is embed_weight
    if config_dict.get("tie_word_embeddings") and not tied_in_fact:
        # The config says tied but the head was factored or untied: saving as tied would drop the head's
        # weights, so save both.
        logger.info("lm_head is not tied to the embedding (factored or untied); saving tie_word_embeddings=False")
        config_dict["tie_word_embeddings"] = False

    config = LowRankLlamaConfig.from_dict(config_dict)
    try:
        return rebuild_sharing_tensors(LowRankLlamaForCausalLM, config, model)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            "the model holds modules that the compressed Llama format cannot express (only nn.Linear and "
            f"LowRankLinear may stand in Llama's linear layers; recompose first?): {err}"
        ) from err


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished `tmp` to `path`; an existing `path` is moved aside first and deleted after."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        path.rename(old)
    try:
        tmp.rename(path)
    except BaseException:
        if old is not None:
            old.rename(path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_no_pickles(directory: Path) -> None:
    pickled = [p.name for p in directory.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]
    if pickled:
        raise RuntimeError(f"refusing to save pickled files {pickled}: the compressed format is safetensors only")


def _check_compressed_dir(path: Path) -> None:
    what = (
        f"a compressed model directory written by save_compressed (config.json with model_type {MODEL_TYPE!r} "
        "and *.safetensors weights)"
    )
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist or is not a directory; expected {what}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} has no config.json; expected {what}")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != MODEL_TYPE:
        raise ValueError(f"{path} holds model_type {model_type!r}, not {MODEL_TYPE!r}; expected {what}")
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"{path} has no *.safetensors weights; expected {what}")
