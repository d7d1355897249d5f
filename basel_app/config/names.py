"""The names config values are checked against. They live here, at the top of the layers, so the schema
needs no code module to validate a value; the code modules that implement each name import it from here
(and their registries are checked against these lists by tests/test_architecture.py)."""

from __future__ import annotations

ONE_SHOT_METHODS = ("svd", "fwsvd", "svd_llm", "asvd")  # factor and truncate once
# Algorithm 1 (relearn, prune progressively, recompose); the pruning criterion each one implies.
PRUNING_SCORERS = {"basel": "magnitude", "bsi": "taylor"}
PRUNING_METHODS = tuple(PRUNING_SCORERS)
DENSE_METHODS = ("finetune",)  # the reference: no compression, only the shared post-fine-tuning
METHODS = PRUNING_METHODS + ONE_SHOT_METHODS + DENSE_METHODS
CROSS_LAYER_METHODS = ("bsi",)  # whose scores are loss changes, comparable across layers (global allocation)
# Basel/BSI's starting bases: svd (the paper) | whitened (SVD-LLM's) | asvd (ASVD's), see METHODS.md.
BASIS_INITS = ("svd", "whitened", "asvd")
ALLOCATIONS = ("per_layer", "global")
HESSIAN_ESTIMATORS = ("hutchinson", "fisher", "gnb")  # BSI's diag(H): see basel_app/methods/importance.py
HVP_MODES = ("finite_difference", "double_backward")
SCORE_VARIANTS = ("both", "first", "second")
TASK_NAMES = ("math", "code", "lm")
BENCHMARK_NAMES = ("gsm8k", "math", "humaneval", "mbpp", "wikitext2", "gsm8k_loss", "math500_loss")
# Which ablation presets (conf/ablation/) change something for which methods.
ABLATION_METHODS = {
    "additional_dim": PRUNING_METHODS,
    "pruning_times": PRUNING_METHODS,
    "free_bases": PRUNING_METHODS,
    "score": ("bsi",),
}
MODEL_SOURCES = ("gguf", "hub", "random")
DTYPES = ("float32", "bfloat16", "float16")
TASK_SOURCES = ("packaged", "local", "hub")
LOGGERS = ("wandb", "csv")
# Lightning's precision names, plus `auto`: bf16-mixed where the hardware computes in bf16, else 32-true.
# auto: one process on one device; ddp: one process per device, gradients all-reduced (lit/trainer.py)
STRATEGIES = ("auto", "ddp", "fsdp")  # fsdp: FSDP2, `fully_shard` per decoder layer (lit/sharding.py)
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
WANDB_MODES = ("auto", "offline", "online", "disabled")
POST_FINETUNE_PARAMS = ("all", "lowrank")
LR_DECAYS = ("constant", "cosine")  # a fine-tuning stage's lr after its warm-up (lit/schedule.py)
# The linear layers of one Llama decoder block.
BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Weight-only quantization of the saved model (basel_app/models/quantization.py)
QUANTIZE_SCHEMES = ("none", "int8", "int4")
# What a NaN or inf in a training loss or gradient does: stop the run (naming phase, step, layer) or skip the batch.
NONFINITE_POLICIES = ("stop", "skip")
# Every linear layer of a Llama decoder plus the output head (METHODS.md, "Which layers").
LLAMA_LINEARS = [*BLOCK_LINEARS, "lm_head"]
