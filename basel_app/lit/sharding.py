"""FSDP2 for one training stage (`trainer.strategy=fsdp`): the model's parameters, gradients and AdamW state
are sharded over the processes while the stage trains, and the stage hands back a plain model.

    before fit     blueprint = meta_replica(model)        the module tree on the meta device (no memory)
    configure      shard(model)                           `fully_shard` per decoder layer, then the root
    fit            forward/backward all-gather a layer's parameters, reduce-scatter its gradients
    after fit      consolidate(model, blueprint)          full tensors gathered, loaded into the blueprint

`fully_shard` converts the model in place (its parameters become DTensors, its classes FSDP subclasses), and
every later step of the pipeline (recomposition, evaluation, saving) works on plain tensors; so the stage
returns a new, unsharded model built from the blueprint. Between steps the phase callbacks read s̃ through
`full_tensor` (every rank calls it: it is a collective). Lightning's `ModelParallelStrategy` runs the stage
with `data_parallel_size` = every process and no tensor parallelism.

What this does not do yet (README, "Several processes"): load or decompose the model shard by shard (every
rank holds the whole input model before the first stage), nor consolidate on rank 0 alone (every rank
gathers the whole trained model onto its CPU).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from basel_app.distributed import full_tensor


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The units FSDP shards one at a time: a Llama's decoder layers."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise TypeError(f"trainer.strategy=fsdp shards a causal LM's `model.layers`; {type(model).__name__} has none")
    return list(layers)


def shard(model: nn.Module) -> None:
    """`fully_shard` each decoder layer, then the root (embedding, final norm, head), in place."""
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def meta_replica(model: nn.Module) -> nn.Module:
    """A deep copy of `model`'s module tree whose parameters and buffers live on the meta device (no storage):
    what `consolidate` later fills. Taken before `shard` changes the model."""
    memo: dict[int, torch.Tensor] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        empty = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(empty, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def consolidate(sharded: nn.Module, blueprint: nn.Module) -> nn.Module:
    """`blueprint` (from `meta_replica`) on the CPU holding `sharded`'s full state, on every rank.

    Tensors are gathered one at a time and moved to the CPU at once, so the accelerator never holds more than
    one whole parameter beyond its shards. Materialising a meta module gives every parameter new storage,
    which unties tied ones (a tied head and embedding); they are tied again as the blueprint has them. The
    state dict misses non-persistent buffers (a Llama's rotary `inv_freq`): those are copied over directly,
    since FSDP leaves buffers whole on every rank."""
    state = {key: full_tensor(value).detach().cpu() for key, value in sharded.state_dict().items()}
    first_name: dict[int, str] = {}
    ties = []  # (name, name of the parameter it shares)
    for name, parameter in blueprint.named_parameters(remove_duplicate=False):
        if id(parameter) in first_name:
            ties.append((name, first_name[id(parameter)]))
        first_name.setdefault(id(parameter), name)
    plain = blueprint.to_empty(device="cpu")
    for name, source in ties:
        owner, _, leaf = name.rpartition(".")
        setattr(plain.get_submodule(owner), leaf, plain.get_parameter(source))
    plain.load_state_dict(state)
    with torch.no_grad():
        for name, buffer in sharded.named_buffers():
            plain.get_buffer(name).copy_(buffer)
    return plain
