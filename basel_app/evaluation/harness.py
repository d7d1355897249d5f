"""Any lm-evaluation-harness task on a model already in memory, compressed or not.

`basel_app.evaluate` runs the papers' protocol for each target task; the harness covers everything else
(MMLU, ARC, HellaSwag, ...) with its own prompts and metrics. Its HF wrapper (`HFLM`) loads models by hub
id or path through `AutoModelForCausalLM`, but also takes a model instance, which is how a compressed model
(`basel_app.models.load_compressed`) or a `load_model` result gets in without being saved again.

lm-eval is an optional extra (`pip install 'basel_app[harness]'`): it is imported only here, when called.
Hub tasks download their data sets; tasks defined in local YAML files (`include_path`) run offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

INSTALL_HINT = "lm-evaluation-harness is not installed; run: pip install 'basel_app[harness]'"


def harness_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int | str = 8,
    max_length: int | None = None,
) -> Any:
    """Wrap `model` as the harness's `HFLM`; it runs on the model's own device and dtype (move it first).

    `max_length=None` takes the model's `max_position_embeddings`; `batch_size` may also be "auto".
    """
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    # backend="causal": the harness picks it from transformers' table of model types, which does not list
    # the compressed `basel_lowrank_llama` (it would fall back to causal with a warning).
    return HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                max_length=max_length)


def evaluate_with_harness(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str],
    limit: int | float | None = None,
    include_path: str | Path | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str = 8,
    log_samples: bool = True,
) -> dict[str, Any]:
    """Run harness `tasks` on `model`; returns the harness's results dict.

    `results["results"][task]` holds the metrics (e.g. "acc,none"), and with `log_samples` each item's
    requests and responses are in `results["samples"][task]`. `limit` caps the items per task (a float:
    a fraction); `include_path` is a directory of task YAML files, indexed alongside the built-in tasks.
    """
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    results = lm_eval.simple_evaluate(
        model=harness_model(model, tokenizer, batch_size=batch_size),
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=log_samples,
        task_manager=TaskManager(include_path=include_path),
    )
    return dict(results)
