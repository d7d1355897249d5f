"""What each rank of an FSDP run (`trainer=fsdp`) holds, phase by phase, counted on the meta device: the bytes
a model of this shape needs, known before anyone rents the GPUs, from the same module trees the run builds.

The model states are counted exactly: the input model and the model `reparameterize` makes of it are built on
the meta device (no storage) and measured with `state_bytes`; the bases are taken at full rank min(n, m), the
most a run keeps (a real weight's numerical rank is no higher). Who holds what follows `lit/sharding.py`:
rank 0 alone holds the model between training stages, the other ranks its meta replica; while a stage
trains, every rank holds 1/world of the parameters, gradients, AdamW moments and the frozen teacher, plus
the whole parameters of the decoder layers being computed, all-gathered in bf16 (`trainer.precision=bf16-mixed`,
which the plan assumes throughout).

Activations are an estimate, stated where they are counted: per decoder layer, s·b·h·(34 + 5·a·s/h) bytes
in 16-bit (Korthikanti et al., 2022, without activation recomputation; a Llama has no dropout masks, so this
is an upper bound), plus each reparameterised linear's saved intermediate (its rank × tokens, or its
materialised n×m weight, whichever path `cheaper_path` takes), plus the fp32 logits of student and teacher.
Allocator fragmentation and the CUDA context are not counted; `HEADROOM` keeps a margin for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from basel_app.lit.trainable import reparameterized_parameters
from basel_app.lowrank import find_target_linears, reparameterize, state_bytes
from basel_app.lowrank.factorizations import Factorization
from basel_app.lowrank.reparam import cheaper_path, decomposition_dtype

ALL_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPU_BYTES = 80 * 10**9  # an A100-80GB / H100-80GB
HEADROOM = 0.85  # the share of a GPU the counted bytes may take: the rest is the allocator's and CUDA's
RANK_ZERO_HOST_BYTES = 320 * 10**9  # rank 0's host RAM: a third of an 8-GPU node's 1 TB; the others need none
ACTIVATION_BYTES = 2  # bf16-mixed: activations are kept in 16-bit
GRAM_BYTES = 8  # SVD-LLM's Gram matrices accumulate in float64 (methods/calibration.py)
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass(frozen=True)
class RunShape:
    """The run being planned: processes, micro-batch and what the method keeps."""

    world_size: int = 16
    micro_batch: int = 1  # sequences per rank per step
    seq_len: int = 512
    additional_dim: int = 32  # r̃
    compression_ratio: float = 2.0  # of the whole model, for what stage 2 and saving hold
    distill: bool = True  # a frozen teacher (the input model) beside the student in stages 1 and 2
    calibration_batches: int = 8  # method.calibration_batches (of micro_batch × seq_len tokens)
    target_modules: tuple[str, ...] = ALL_LINEARS


@dataclass(frozen=True)
class Phase:
    name: str
    gpu: int  # bytes on each rank's accelerator (the same on every rank)
    host_zero: int  # bytes of model state in rank 0's host RAM
    host_other: int  # ... in each other rank's host RAM
    what: str = field(default="", compare=False)


def input_of(name: str) -> str:
    """The tensor a Llama linear reads: q/k/v_proj share their attention block's input, gate/up_proj their MLP's,
    and `activation_statistics` keeps one Gram matrix per input (tests/methods/test_calibration.py)."""
    parent, _, kind = name.rpartition(".")
    shared = next((group for group in SHARED_INPUTS if kind in group), (kind,))
    return f"{parent}:{'/'.join(shared)}"


def meta_llama(config: LlamaConfig) -> LlamaForCausalLM:
    """The model on the meta device, in the dtype the run loads it in (float32: `conf/model`)."""
    with torch.device("meta"):
        return LlamaForCausalLM(config).float()


def full_rank_factors(targets: dict[str, nn.Linear]) -> dict[str, Factorization]:
    """Meta U (n×k), s (k,), V (m×k) at k = min(n, m) for every target: the shapes `reparameterize` takes."""
    factors = {}
    for name, linear in targets.items():
        n, m = linear.weight.shape
        k = min(n, m)
        factors[name] = Factorization(*(torch.empty(shape, device="meta") for shape in ((n, k), (k,), (m, k))))
    return factors


def factors_bytes(n: int, m: int) -> int:
    """An n×m weight's full-rank U, s, V in the decomposition dtype (what a one-shot factorisation returns)."""
    k = min(n, m)
    return (n * k + k + m * k) * (torch.finfo(decomposition_dtype(n * m)).bits // 8)


def svd_workspace_bytes(n: int, m: int) -> int:
    """One layer's SVD beside the model: the weight cast to the decomposition dtype, and U, s, V."""
    return factors_bytes(n, m) + n * m * (torch.finfo(decomposition_dtype(n * m)).bits // 8)


def layer_activation_bytes(config: LlamaConfig, shape: RunShape, ranks: dict[str, tuple[int, int, int]]) -> int:
    """Saved activations of one decoder layer for one micro-batch: the transformer's, and the intermediate
    of each reparameterised linear (`ranks`: {type: (n, m, r + r̃)})."""
    s, b, h, a = shape.seq_len, shape.micro_batch, config.hidden_size, config.num_attention_heads
    tokens = s * b
    block = s * b * h * (34 + 5 * a * s / h)
    extra = 0
    for n, m, k in ranks.values():
        extra += tokens * k if cheaper_path(tokens, m, n, k) == "factored" else n * m
    return int(block + extra * ACTIVATION_BYTES)


def memory_plan(config: LlamaConfig, shape: RunShape) -> list[Phase]:
    """Bytes per rank in each phase of a Basel/BSI run under FSDP, and in SVD-LLM's one-shot stage."""
    w = shape.world_size
    dense = meta_llama(config)
    dense_bytes = state_bytes(dense)
    dense_layer = state_bytes(dense.model.layers[0])
    targets = find_target_linears(dense, list(shape.target_modules))
    first_layer = {name.rsplit(".", 1)[-1]: lin for name, lin in targets.items() if ".layers.0." in name}
    largest = max(targets.values(), key=lambda lin: lin.weight.numel()).weight.shape
    svd_workspace = svd_workspace_bytes(*largest)
    grams = {input_of(name): lin.in_features for name, lin in targets.items()}
    in_flight = max(grams.values()) ** 2 * GRAM_BYTES  # one batch's product, or one mean beside the sums
    gram_bytes = sum(m * m * GRAM_BYTES for m in grams.values()) + in_flight
    target_bytes = sum(state_bytes(lin) for lin in targets.values())
    hidden = shape.calibration_batches * shape.micro_batch * shape.seq_len * config.hidden_size * 4
    calibrate_gpu = dense_layer + 2 * hidden + max(grams.values()) ** 2 * 4  # a layer, its in/outputs, a product
    all_factors = sum(factors_bytes(*lin.weight.shape) for lin in targets.values())

    reparam = meta_llama(config)
    reparam_targets = find_target_linears(reparam, list(shape.target_modules))
    reparameterize(reparam, reparam_targets, additional_dim=shape.additional_dim,
                   factorizations=full_rank_factors(reparam_targets))
    reparam_bytes = state_bytes(reparam)
    reparam_layer = state_bytes(reparam.model.layers[0])
    trainable = sum(p.numel() * p.element_size() for p in reparameterized_parameters(reparam))
    root = reparam_bytes - config.num_hidden_layers * reparam_layer  # embedding, final norm, head: one FSDP unit

    teacher_shard = dense_bytes // w if shape.distill else 0
    # Whole while computed: 2 decoder layers (one prefetched) and the root, all-gathered in bf16 (half of float32).
    teacher_gathered = (2 * dense_layer) // 2 if shape.distill else 0
    logits = shape.micro_batch * shape.seq_len * config.vocab_size * 4 * (4 if shape.distill else 2)
    ranks = {t: (lin.out_features, lin.in_features, min(lin.weight.shape) + shape.additional_dim)
             for t, lin in first_layer.items()}
    activations = config.num_hidden_layers * layer_activation_bytes(config, shape, ranks) + logits

    compressed = int(dense_bytes / shape.compression_ratio)
    compressed_layer = int(dense_layer / shape.compression_ratio)
    teacher_host = dense_bytes if shape.distill else 0
    return [
        Phase("load", 0, dense_bytes, 0, "rank 0 loads the input model; the others build its meta replica"),
        Phase("reparameterise (init=svd)", svd_workspace,
              teacher_host + target_bytes + reparam_bytes + svd_workspace, 0,
              "rank 0: the teacher, the reparameterised model and the replaced dense layers (referenced until "
              "`reparameterize` returns); each GPU: the SVD of one layer at a time (`spread`)"),
        Phase("reparameterise (init=whitened)", svd_workspace + in_flight,
              teacher_host + max(dense_bytes + gram_bytes + all_factors + svd_workspace, target_bytes + reparam_bytes),
              0, "rank 0: the teacher, the model, the Gram matrices and every layer's factors; each is handed to "
              "`reparameterize` once and freed"),
        Phase("train (stage 1)",
              reparam_bytes // w + 3 * trainable // w + teacher_shard + (2 * reparam_layer + root) // 2
              + teacher_gathered + activations, reparam_bytes + 2 * trainable, 0,
              "shards of params, grads and AdamW moments and of the teacher; 2 decoder layers and the root whole "
              "(gathered in bf16); "
              "activations. Rank 0's host: a checkpoint, consolidated (a resume reads it by mmap)"),
        Phase("recompose", teacher_shard + svd_workspace, reparam_bytes + svd_workspace, 0,
              "rank 0: the gathered model; each GPU: the teacher's shards and one layer's QR/SVD at a time"),
        Phase("post-finetune (stage 2)",
              4 * compressed // w + teacher_shard + (2 * compressed_layer + root) // 2 + teacher_gathered + activations,
              compressed * 3, 0, "every parameter trains (post_finetune_params=all); a checkpoint on rank 0"),
        Phase("save", teacher_shard, 2 * compressed, 0, "rank 0: the model and its serialised copy"),
        Phase("factorise (SVD-LLM)", max(svd_workspace + in_flight, calibrate_gpu),
              dense_bytes + gram_bytes + all_factors + svd_workspace, 0,
              "rank 0: the input model, one float64 Gram matrix per distinct layer input (q/k/v and gate/up share; "
              "one more in flight), every layer's factors; rank 0's GPU: one decoder layer at a time over the "
              "calibration batches' hidden states; each GPU: one layer's whitened SVD at a time"),
        Phase("truncate (SVD-LLM)", 0, dense_bytes + all_factors + compressed, 0,
              "rank 0: the model, the factors, the thin layers made of them"),
    ]


def llama2_13b() -> LlamaConfig:
    """Llama-2-13B's published shape (meta-llama/Llama-2-13b-hf config.json)."""
    return LlamaConfig(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096,
                       tie_word_embeddings=False)


def table(phases: list[Phase]) -> str:
    """A Markdown table in GB (10⁹ bytes)."""
    lines = ["| phase | GPU per rank | rank 0 host | other ranks' host | what |", "| --- | ---: | ---: | ---: | --- |"]
    for p in phases:
        gb = [f"{value / 1e9:.1f}" for value in (p.gpu, p.host_zero, p.host_other)]
        lines.append(f"| {p.name} | {' | '.join(gb)} | {p.what} |")
    return "\n".join(lines)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Per-rank memory of a Basel/BSI run on Llama-2-13B under FSDP")
    defaults = RunShape()
    parser.add_argument("--world-size", type=int, default=defaults.world_size)
    parser.add_argument("--micro-batch", type=int, default=defaults.micro_batch)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--additional-dim", type=int, default=defaults.additional_dim)
    parser.add_argument("--no-distill", action="store_true")
    args = parser.parse_args()
    shape = RunShape(args.world_size, args.micro_batch, args.seq_len, args.additional_dim,
                     distill=not args.no_distill)
    print(f"Llama-2-13B, {shape}")
    print(table(memory_plan(llama2_13b(), shape)))


if __name__ == "__main__":
    main()
