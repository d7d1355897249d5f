"""FSDP2 for one training stage (`trainer.strategy=fsdp`): the model's parameters, gradients and AdamW state
are sharded over the processes while the stage trains, and the stage hands back a plain model.

Between stages rank 0 alone holds the model's storage; every other rank holds its module tree on the meta
device (no memory), so the host RAM of a node holds one model, not one per process:

    between stages  on_host(build)                     rank 0 builds or changes the model, the others run the
                                                       SVDs it spreads, then get its meta replica (the
                                                       module tree, shapes and ties)
    before fit      blueprint = meta_replica(model)    what the stage's end fills
    configure       shard_from_rank_zero(model, dev)   `fully_shard` per decoder layer, then the root; every
                                                       rank's shards filled from rank 0, one tensor at a time
    fit             forward/backward all-gather a layer's parameters, reduce-scatter its gradients
    after fit       consolidate(model, blueprint)      full tensors gathered (every rank takes part), kept on
                                                       rank 0's CPU; the others keep the meta blueprint

`fully_shard` converts the model in place (its parameters become DTensors, its classes FSDP subclasses), and
every later step of the pipeline (recomposition, evaluation, saving) works on plain tensors; so the stage
returns a new, unsharded model built from the blueprint. Between steps the phase callbacks read s̃ through
`full_tensor` (every rank calls it: it is a collective). Lightning's `ModelParallelStrategy` runs the stage
with `data_parallel_size` = every process and no tensor parallelism.

What this does not do yet (README, "Several processes"): load the model shard by shard (rank 0 loads the
whole model, and calibrates it for the data-aware factorisations, on its CPU).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from basel_app.distributed import broadcast_from_zero, full_tensor, is_distributed, on_rank_zero, world_rank
from basel_app.spread import serve, serving

T = TypeVar("T")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The units FSDP shards one at a time: a Llama's decoder layers."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise TypeError(f"trainer.strategy=fsdp shards a causal LM's `model.layers`; {type(model).__name__} has none")
    return list(layers)


def shard(model: nn.Module, compute_dtype: torch.dtype | None = None) -> None:
    """`fully_shard` each decoder layer, then the root (embedding, final norm, head), in place.

    With `compute_dtype` (bf16 under `trainer.precision=bf16-mixed`) the parameters are all-gathered in it, which
    halves the gathered layers and the traffic, while the shards, the optimizer and the gradients' reduce-scatter
    stay in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32 if compute_dtype else None)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


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


def on_host(build: Callable[[], tuple[nn.Module, T]], hosted: bool) -> tuple[nn.Module, T]:
    """`build()` -> (model, result). With `hosted` and several processes, rank 0 alone runs it and keeps the
    model; every other rank meanwhile runs the decompositions rank 0 spreads (`spread`), then gets the
    model's meta replica and rank 0's (picklable) result. Otherwise every rank runs it (DDP keeps a whole
    model on every rank)."""
    if not (hosted and is_distributed()):
        return build()
    built: list[nn.Module] = []

    def on_zero() -> tuple[nn.Module, T]:
        with serving():
            model, result = build()
        built.append(model)
        return meta_replica(model), result

    if world_rank() != 0:
        serve()
    replica, result = on_rank_zero(on_zero)
    return (built[0] if built else replica), result


def has_storage(model: nn.Module) -> bool:
    """False for a meta replica: a rank that holds the module tree but not the model (`on_host`)."""
    return not any(t.is_meta for t in model.parameters())


def shard_from_rank_zero(model: nn.Module, device: torch.device, compute_dtype: torch.dtype | None = None) -> None:
    """`shard` `model` (in `compute_dtype`), whose values rank 0 holds (the others may hold its meta replica),
    and fill every rank's shards on `device` from rank 0, one full tensor broadcast at a time; non-persistent
    buffers (a Llama's rotary `inv_freq`), which are in no state dict, are broadcast too."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    source = model.state_dict() if world_rank() == 0 else {}  # references into rank 0's model, no copies
    persistent = set(source) if world_rank() == 0 else set(model.state_dict())
    stateless = [name for name, _ in model.named_buffers() if name not in persistent]
    shard(model, compute_dtype)
    if world_rank() == 0:
        model.to(device)
    else:
        model.to_empty(device=device)
    set_model_state_dict(model, source, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    buffers = [model.get_buffer(name) for name in stateless]
    with torch.no_grad():
        for buffer, value in zip(buffers, broadcast_from_zero(buffers)):
            buffer.copy_(value)


def consolidate(sharded: nn.Module, blueprint: nn.Module) -> nn.Module:
    """`blueprint` (from `meta_replica`) on rank 0's CPU holding `sharded`'s full state; on every other rank
    the blueprint as it is, on the meta device (`on_host`).

    Tensors are gathered one at a time (every rank takes part) and rank 0 moves each to the CPU at once, so an
    accelerator never holds more than one whole parameter beyond its shards, and the CPU one copy of the model:
    the gathered tensors become the blueprint's own (`assign`). That gives each key its own tensor, which
    unties tied ones (a tied head and embedding); they are tied again as the blueprint has them. The state
    dict misses non-persistent buffers (a Llama's rotary `inv_freq`): those are copied over directly, since
    FSDP leaves buffers whole on every rank."""
    keep = world_rank() == 0
    state = {}
    for key, value in sharded.state_dict().items():
        whole = full_tensor(value).detach()
        if keep:
            state[key] = whole.cpu()
    if not keep:
        return blueprint
    first_name: dict[int, str] = {}
    ties = []  # (name, name of the parameter it shares)
    for name, parameter in blueprint.named_parameters(remove_duplicate=False):
        if id(parameter) in first_name:
            ties.append((name, first_name[id(parameter)]))
        first_name.setdefault(id(parameter), name)
    blueprint.load_state_dict(state, assign=True)
    for name, source in ties:
        owner, _, leaf = name.rpartition(".")
        setattr(blueprint.get_submodule(owner), leaf, blueprint.get_parameter(source))
    for name, buffer in sharded.named_buffers():
        if name not in state:
            owner, _, leaf = name.rpartition(".")
            blueprint.get_submodule(owner)._buffers[leaf] = buffer.detach().to("cpu", copy=True)
    return blueprint
