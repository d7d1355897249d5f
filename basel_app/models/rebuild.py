"""Rebuilding a model as another transformers class that shares its tensors (no copy, no random init).

Used twice: a GGUF-loaded Llama refuses `save_pretrained`, so it is rebuilt as a plain `LlamaForCausalLM`; a
Llama with `LowRankLinear` modules is rebuilt as a `LowRankLlamaForCausalLM` to be saved. In both cases the
new model is built on the meta device (free, whatever the size) and then takes over the source's tensors.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from transformers import PreTrainedConfig, PreTrainedModel

from basel_app.lowrank.inject import parent_module

ModelT = TypeVar("ModelT", bound=PreTrainedModel)


def rebuild_sharing_tensors(
    model_class: type[ModelT],
    config: PreTrainedConfig,
    source: torch.nn.Module,
    dtype: torch.dtype | None = None,
) -> ModelT:
    """`model_class(config)` holding `source`'s parameters and buffers; raises if the module trees differ.

    With `dtype`, the floating-point parameters are cast (copied) to it; buffers keep their dtype, as in a
    `from_pretrained(dtype=...)` load (the rotary frequencies stay float32).
    """
    state = source.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        config.dtype = dtype
    with torch.device("meta"):
        target = model_class(config)
    # strict: every parameter of the new model must come from the source and vice versa (names and shapes).
    target.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: take the source's, by name.
    for name, buffer in source.named_buffers():
        owner, buffer_name = parent_module(target, name)
        setattr(owner, buffer_name, buffer)
    if getattr(config, "tie_word_embeddings", False):
        target.tie_weights()  # assign=True gave head and embedding the same storage; make them one Parameter
    left_on_meta = [name for name, t in [*target.named_parameters(), *target.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise ValueError(f"the source model has no tensors for {left_on_meta[:5]}")
    generation_config = getattr(source, "generation_config", None)
    if generation_config is not None:
        target.generation_config = copy.deepcopy(generation_config)
    return target
