"""Getting a Llama in (GGUF, hub id, local path, tiny random) and the compressed one out.

Importing this package registers `basel_lowrank_llama` with transformers' Auto classes, so a saved compressed
model loads with plain `AutoModelForCausalLM.from_pretrained(dir)`, without trust_remote_code.
"""

from basel_app.models.byte_tokenizer import byte_tokenizer
from basel_app.models.compressed_io import (
    is_compressed_dir,
    load_compressed,
    read_metadata,
    save_compressed,
    verify_checksums,
)
from basel_app.models.loading import LoadedModel, ModelSourceError, check_model_source, load_config, load_model
from basel_app.models.lowrank_llama import (
    LowRankLlamaConfig,
    LowRankLlamaForCausalLM,
    register_with_transformers,
)

register_with_transformers()

__all__ = [
    "LoadedModel",
    "LowRankLlamaConfig",
    "LowRankLlamaForCausalLM",
    "ModelSourceError",
    "byte_tokenizer",
    "check_model_source",
    "is_compressed_dir",
    "load_config",
    "load_compressed",
    "load_model",
    "read_metadata",
    "register_with_transformers",
    "save_compressed",
    "verify_checksums",
]
