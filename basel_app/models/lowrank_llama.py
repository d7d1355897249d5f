"""The compressed architecture: a Llama in which some `nn.Linear` modules are `LowRankLinear`.

It is a registered transformers architecture (`model_type = "basel_lowrank_llama"`) rather than a pickled
module tree, so a compressed model saves as safetensors + config.json and loads back with plain
`AutoModelForCausalLM.from_pretrained(dir)` under any process that imported `basel_app.models`.

The config records every factored module's rank (`lowrank_ranks`), which is all that is needed to rebuild
the exact module shapes before the weights are read. Only `nn.Linear` modules are swapped: attention, rotary
embeddings and the decoder layers are transformers' own code, so the format follows transformers releases.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from basel_app.lowrank.inject import set_submodule
from basel_app.lowrank.thin import LowRankLinear

logger = logging.getLogger(__name__)

MODEL_TYPE = "basel_lowrank_llama"


class LowRankLlamaConfig(LlamaConfig):
    """`LlamaConfig` plus `lowrank_ranks`: module name (e.g. "model.layers.0.self_attn.q_proj") -> rank."""

    model_type = MODEL_TYPE
    # Tensor-parallel plans shard q_proj etc. as if they were nn.Linear; a LowRankLinear would be sharded
    # wrongly, so tensor parallelism is switched off for this architecture (FSDP is unaffected).
    base_model_tp_plan = None

    lowrank_ranks: dict[str, int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.lowrank_ranks = {str(name): int(rank) for name, rank in (self.lowrank_ranks or {}).items()}
        bad = {name: rank for name, rank in self.lowrank_ranks.items() if rank < 1}
        if bad:
            raise ValueError(f"lowrank_ranks must all be >= 1; got {bad}")
        super().__post_init__(**kwargs)
        if "lm_head" in self.lowrank_ranks and self.tie_word_embeddings:
            raise ValueError(
                "lowrank_ranks factors 'lm_head' but tie_word_embeddings=True: a factored head has no weight "
                "to tie to the embedding; set tie_word_embeddings=False"
            )


class LowRankLlamaForCausalLM(LlamaForCausalLM):
    """A `LlamaForCausalLM` whose modules named in `config.lowrank_ranks` are `LowRankLinear`s of that rank."""

    config_class = LowRankLlamaConfig
    _tp_plan: dict[str, str] = {}  # see LowRankLlamaConfig.base_model_tp_plan

    def __init__(self, config: LowRankLlamaConfig) -> None:
        # LlamaForCausalLM.__init__ builds the dense Llama and ends with self.post_init(), which is overridden
        # below to factor the listed modules first.
        super().__init__(config)

    def post_init(self) -> None:
        """Swap in the low-rank modules, then finish as transformers does.

        The swap must come before `PreTrainedModel.post_init`, so that weight initialisation, the tied-weight
        bookkeeping and the parallel plans all see the final module tree (and weights are initialised once).
        """
        self._factor_listed_linears()
        super().post_init()

    def _factor_listed_linears(self) -> None:
        ranks = self.config.lowrank_ranks or {}
        for name, rank in ranks.items():
            try:
                dense = self.get_submodule(name)
            except AttributeError as err:
                raise ValueError(f"lowrank_ranks names {name!r}, which is not a module of this Llama") from err
            if not isinstance(dense, nn.Linear):
                raise ValueError(f"lowrank_ranks names {name!r}, a {type(dense).__name__}; only nn.Linear is factored")
            thin = LowRankLinear(
                dense.in_features,
                dense.out_features,
                rank,
                bias=dense.bias is not None,
                device=dense.weight.device,
                dtype=dense.weight.dtype,
            )
            set_submodule(self, name, thin)
        if ranks:
            logger.debug("built %d LowRankLinear modules", len(ranks))


_registered = False


def register_with_transformers() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` know the compressed architecture (safe to call repeatedly)."""
    global _registered
    if _registered:
        return
    AutoConfig.register(MODEL_TYPE, LowRankLlamaConfig, exist_ok=True)
    AutoModelForCausalLM.register(LowRankLlamaConfig, LowRankLlamaForCausalLM, exist_ok=True)
    _registered = True
