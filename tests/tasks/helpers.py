"""Test helpers shared by tests/tasks and tests/data.

- byte-level tokenizers: one token per UTF-8 byte, so every token boundary is exact; built with the
  `tokenizers` library (no download, no dependency on basel_app.models);
- task configs: ``TaskConfig``s, validated as a run's are.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from basel_app.config.schema import TaskConfig

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_byte_tokenizer(
    chat_template: str | None = None, eos: str = "<|endoftext|>", pad: str | None = None, bos: bool = False
) -> PreTrainedTokenizerFast:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<s>"])
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos, pad_token=pad, bos_token="<s>" if bos else None
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def task_cfg(**overrides) -> TaskConfig:
    """The validated task config a run builds its task from, with `overrides`."""
    return TaskConfig(**overrides)
