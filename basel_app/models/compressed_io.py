"""Saving and loading a compressed model as an ordinary Hugging Face directory.

Layout of a saved model (nothing is pickled):

    <path>/config.json           model_type "basel_lowrank_llama", lowrank_ranks = every factored module's rank
    <path>/model.safetensors     the weights (LowRankLinear as `<name>.down.weight`, `<name>.up.weight/bias`);
                                 a quantized model (config `basel_quantization`) in torchao's safetensors form
    <path>/generation_config.json, tokenizer files
    <path>/basel_metadata.json   what the caller passed as `metadata` (method, ratios, provenance, ...) and the
                                 sha256 of every other file, checked on every load

The directory is written under a temporary name next to `path` and renamed into place only once complete,
so a crash mid-save never leaves something that looks like a finished model. Weights holding a NaN or inf
are never written; a load refuses a file whose sha256 differs and weights that miss or add a tensor.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from basel_app.config.errors import CorruptArtifact, NonFiniteError
from basel_app.files import OLD, PARTIAL, checksum_mismatch, sha256_of
from basel_app.finite import first_nonfinite
from basel_app.lowrank import is_wrapper_tensor
from basel_app.lowrank.thin import LowRankLinear
from basel_app.models.lowrank_llama import MODEL_TYPE, LowRankLlamaConfig, LowRankLlamaForCausalLM
from basel_app.models.quantization import METADATA_KEY, from_safetensors, is_quantized, to_safetensors
from basel_app.models.rebuild import rebuild_sharing_tensors

logger = logging.getLogger(__name__)

METADATA_FILE = "basel_metadata.json"
FORMAT_VERSION = 2  # 2: basel_metadata.json holds each file's sha256
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
    # Check the metadata serialises and the weights are finite before anything is written.
    json.dumps(metadata or {})
    nonfinite = first_nonfinite(_plain_tensors(model.state_dict()))
    if nonfinite is not None:
        raise NonFiniteError(f"refusing to save {path}: tensor {nonfinite} holds NaN or inf (the training diverged)")

    ranks = lowrank_ranks(model)
    target = _as_lowrank_llama(model, ranks)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{PARTIAL}", dir=path.parent))
    try:
        if is_quantized(target.state_dict()):
            _save_quantized(target, tmp)
        else:
            target.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _check_no_pickles(tmp)
        checksums = {f.name: sha256_of(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / METADATA_FILE).write_text(json.dumps(
            {"format_version": FORMAT_VERSION, "metadata": metadata or {}, "sha256": checksums}, indent=2))
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

    `dtype=None` keeps the dtype the model was saved in. Raises CorruptArtifact, naming the file, when a file
    fails its sha256 or the weights miss or add a tensor.
    """
    path = Path(path)
    if path.is_dir():
        verify_checksums(path)  # first: a damaged config.json is named as such, not parsed
    _check_compressed_dir(path)
    config = LowRankLlamaConfig.from_pretrained(path)
    if getattr(config, METADATA_KEY, None):
        model, wrong = _load_quantized(path, config, dtype)
    else:
        model, info = LowRankLlamaForCausalLM.from_pretrained(path, dtype=dtype or "auto", use_safetensors=True,
                                                              output_loading_info=True)
        wrong = {kind: sorted(info[kind]) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
                 if info[kind]}
    if wrong:
        raise CorruptArtifact(f"{path}: the weights do not match the model config ({wrong}); re-save the model")
    if device is not None:
        model = model.to(device)
    model.eval()
    tokenizer = None
    if (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def weight_bytes_on_disk(path: str | Path) -> int:
    """Bytes of the weight files (*.safetensors) of a saved model."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


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


def verify_checksums(path: str | Path) -> None:
    """Check every file listed in `path`'s basel_metadata.json against its sha256; CorruptArtifact names the first
    that differs or is missing. A model saved before checksums (format 1) is loaded unverified, with a warning."""
    path = Path(path)
    listed = json.loads((path / METADATA_FILE).read_text()).get("sha256") if (path / METADATA_FILE).is_file() else None
    if listed is None:
        logger.warning("%s has no checksums (saved by an older basel_app): loading it unverified", path)
        return
    problem = checksum_mismatch(path, listed)
    if problem is not None:
        raise CorruptArtifact(f"{problem}; the saved model at {path} cannot be loaded as it is")


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


def _plain_tensors(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every stored tensor: a quantized weight's own tensors (data, scales) by their names."""
    plain = []
    for name, tensor in state.items():
        if is_wrapper_tensor(tensor):
            inner, _ = tensor.__tensor_flatten__()
            plain += [(f"{name}.{part}", getattr(tensor, part)) for part in inner]
        else:
            plain.append((name, tensor))
    return plain


def _save_quantized(model: LowRankLlamaForCausalLM, directory: Path) -> None:
    """config.json, generation_config.json and model.safetensors of a model with torchao-quantized weights."""
    model.config.save_pretrained(directory)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(directory)
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")  # the embedding's tensor again: tied back on load
    tensors, header = to_safetensors(state, getattr(model.config, METADATA_KEY))
    save_file({k: v.contiguous() for k, v in tensors.items()}, directory / "model.safetensors", metadata=header)


def _load_quantized(
    path: Path, config: LowRankLlamaConfig, dtype: torch.dtype | str | None
) -> tuple[LowRankLlamaForCausalLM, dict[str, list[str]]]:
    """What `_save_quantized` wrote, and the tensors it misses or adds. Quantized weights keep their own
    dtype, so `dtype` must be None."""
    if dtype is not None:
        raise ValueError(f"{path} is quantized ({getattr(config, METADATA_KEY)}); load it with dtype=None, not {dtype}")
    with safe_open(path / "model.safetensors", framework="pt") as weights:
        header = weights.metadata() or {}
        tensors = {name: weights.get_tensor(name) for name in weights.keys()}
    try:
        state = from_safetensors(tensors, header)
    except (ValueError, KeyError) as err:
        raise CorruptArtifact(f"{path / 'model.safetensors'}: {err}") from err
    with torch.device("meta"):
        model = LowRankLlamaForCausalLM(config)
    result = model.load_state_dict(state, strict=False, assign=True)
    model.model.rotary_emb = LlamaRotaryEmbedding(config)  # its buffers are computed, never stored
    tied = ["lm_head.weight"] if config.tie_word_embeddings else []
    if tied:
        model.tie_weights()
    wrong = {"missing_keys": sorted(set(result.missing_keys) - set(tied)), "unexpected_keys": result.unexpected_keys}
    return model, {kind: names for kind, names in wrong.items() if names}


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished `tmp` to `path`; an existing `path` is moved aside first and deleted after."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}{OLD}{tmp.name.rsplit('-', 1)[-1]}")
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
