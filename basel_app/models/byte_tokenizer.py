"""A byte-level tokenizer built in code, for the tiny random Llama.

The random model needs a tokenizer that exists without a download, covers every input (any unicode text is a
sequence of bytes) and speaks the same chat format as SmolLM2-Instruct, so the task and evaluation code paths
(`apply_chat_template`, padding, EOS handling) run unchanged on a model that builds in milliseconds.

Vocabulary: ids 0..255 are the bytes (in the byte-level alphabet of GPT-2, so the ids are stable), followed by
the special tokens below. No merges: one byte is one token.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # also the EOS token: a chat turn ends generation, as in SmolLM2-Instruct
PAD_TOKEN = "<|pad|>"  # its own token: padding with EOS hides real end-of-turn tokens from the loss
SPECIAL_TOKENS = (BOS_TOKEN, IM_START, IM_END, PAD_TOKEN)

# ChatML, as SmolLM2-Instruct uses; `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Build the byte tokenizer: 256 byte tokens + bos/eos/pad/chat markers, with a ChatML chat template."""
    # Token id == byte value; the characters are the ones the ByteLevel pre-tokenizer maps bytes to.
    vocab = {char: byte for byte, char in _char_of_byte().items()}
    if set(vocab) != set(pre_tokenizers.ByteLevel.alphabet()):
        raise RuntimeError("the tokenizers library changed its byte-level alphabet")

    core = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    # No prefix space and no regex split: the text maps to its bytes one to one, so decode(encode(t)) == t.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,  # cleanup would rewrite " ." to "." and break the round trip
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _char_of_byte() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: printable bytes stand for themselves, the other 68 move to 256, 257, ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}
