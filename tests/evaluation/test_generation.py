"""Batched greedy generation: left padding changes nothing, stops are honoured, order is kept.

The padding test is the one that catches the classic bugs (right padding, pad = eos without a mask,
positions counted from the pads): on a random Llama whose argmax jumps around, any of them changes the
greedy text of the shorter prompts.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LlamaForCausalLM

from basel_app.evaluation.generation import (
    decode_greedy,
    default_stop_token_ids,
    generate_greedy,
    left_pad,
    truncate_at_stop_strings,
    weights_cast_once,
)

from ..tiny_llama import tiny_llama_config
from ..weight_casts import CountWeightCasts

MAX_NEW = 24


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and when other processes load the 2 CPU cores the
    threads' barriers made these tests 100x slower (measured: 56 s instead of 0.4 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = tiny_llama_config(len(tokenizer), tokenizer, max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper logits than the 0.02-std init: the argmax depends on every input token
        model.lm_head.weight.mul_(20)
    return model


def prompts_of(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


TEXTS = ["Q: 2+2?", "Question: how many apples does Tom have if he buys 3 and eats 1?", "Hi", "x = 12 * 7, y ="]


def unpadded_greedy_ids(model, prompt: list[int], max_new: int, stop_ids: list[int]) -> list[int]:
    """Plain greedy decoding without cache or padding: argmax of the full forward, token by token."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if token in stop_ids:
                break
            ids.append(token)
    return ids[len(prompt):]


def unpadded_reference(model, tokenizer, prompt: list[int], max_new: int, stop_ids: list[int]) -> str:
    return tokenizer.decode(unpadded_greedy_ids(model, prompt, max_new, stop_ids), skip_special_tokens=True)


def test_left_pad_right_aligns_prompts_and_masks_the_pads():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_batched_left_padded_equals_one_by_one_unpadded(model, tokenizer):
    prompts = prompts_of(tokenizer, TEXTS)
    assert len({len(p) for p in prompts}) == len(prompts)  # all lengths differ: every row but one is padded
    stop_ids = default_stop_token_ids(model, tokenizer)
    # eos disabled so that every row decodes all MAX_NEW tokens: the comparison covers the whole length.
    no_stop = [tokenizer.pad_token_id]
    batched = generate_greedy(model, tokenizer, prompts, MAX_NEW, batch_size=4, stop_token_ids=no_stop)
    one_by_one = [generate_greedy(model, tokenizer, [p], MAX_NEW, batch_size=1, stop_token_ids=no_stop)[0]
                  for p in prompts]
    reference = [unpadded_reference(model, tokenizer, p, MAX_NEW, no_stop) for p in prompts]
    assert batched == one_by_one == reference
    assert len(set(batched)) == len(batched)  # the prompts really lead to different texts
    # and with the default stops (eos / <|im_end|>) the same holds
    assert generate_greedy(model, tokenizer, prompts, MAX_NEW, batch_size=3) == [
        unpadded_reference(model, tokenizer, p, MAX_NEW, stop_ids) for p in prompts
    ]


def test_static_cache_gives_the_dynamic_cache_tokens_in_float32(model, tokenizer):
    """The static cache against the dynamic one (the default): same text, every row padded but one, every
    row decoding all its tokens (no stops), batch sizes 4 and 3."""
    prompts = prompts_of(tokenizer, TEXTS)
    no_stop = [tokenizer.pad_token_id]
    for batch_size in (4, 3):
        static = generate_greedy(model, tokenizer, prompts, 2 * MAX_NEW, batch_size, stop_token_ids=no_stop,
                                 cache="static")
        dynamic = generate_greedy(model, tokenizer, prompts, 2 * MAX_NEW, batch_size, stop_token_ids=no_stop)
        assert static == dynamic
        assert len(set(static)) == len(static)  # the prompts lead to different texts


def _weight_casts(model, tokenizer, prompts, new_tokens: int) -> tuple[list[str], int]:
    """Greedy texts of `model` under bf16 autocast, and how many casts of its weights it made."""
    no_stop = [tokenizer.pad_token_id]
    with torch.autocast("cpu", dtype=torch.bfloat16), CountWeightCasts(list(model.parameters())) as counter:
        texts = generate_greedy(model, tokenizer, prompts, new_tokens, len(prompts), stop_token_ids=no_stop)
    return texts, counter.casts


def test_a_frozen_model_casts_its_weights_once_per_call_under_autocast(model, tokenizer):
    """Autocast caches a weight's bf16 copy only if it requires grad; decoding a frozen model must not cast
    every weight again at every step (weights_cast_once), and gives the flags back as they were."""
    prompts = prompts_of(tokenizer, TEXTS[:2])
    model.requires_grad_(False)
    try:
        short_texts, short = _weight_casts(model, tokenizer, prompts, 2)
        long_texts, long = _weight_casts(model, tokenizer, prompts, 12)
        assert short > 0 and long == short  # one cast per weight per call, however many steps
        assert not any(p.requires_grad for p in model.parameters())
        with weights_cast_once(model):  # outside autocast: nothing to cache, nothing touched
            assert not any(p.requires_grad for p in model.parameters())
    finally:
        model.requires_grad_(True)
    trainable_texts, _ = _weight_casts(model, tokenizer, prompts, 12)
    assert long_texts == trainable_texts and all(p.requires_grad for p in model.parameters())


def test_order_is_preserved_across_batches(model, tokenizer):
    prompts = prompts_of(tokenizer, TEXTS)
    singles = generate_greedy(model, tokenizer, prompts, 8, batch_size=1)
    reversed_batched = generate_greedy(model, tokenizer, prompts[::-1], 8, batch_size=3)
    assert reversed_batched == singles[::-1]


def test_stop_strings_truncate_the_text(model, tokenizer):
    prompts = prompts_of(tokenizer, TEXTS)
    no_stop = [tokenizer.pad_token_id]
    full = generate_greedy(model, tokenizer, prompts, MAX_NEW, batch_size=2, stop_token_ids=no_stop)
    # a stop string taken from the middle of the first row's text: that row is cut before it, the others
    # are cut at their own first occurrence (if any) and otherwise unchanged
    stop = full[0][5:7]
    assert stop and stop in full[0]
    cut = generate_greedy(model, tokenizer, prompts, MAX_NEW, batch_size=2, stop_strings=[stop],
                          stop_token_ids=no_stop)
    assert cut[0] == full[0][: full[0].find(stop)]
    for text, whole in zip(cut, full):
        assert text == truncate_at_stop_strings(whole, [stop])
        assert stop not in text


def test_truncate_at_the_earliest_stop_string():
    assert truncate_at_stop_strings("a #### 5\nQuestion: b", ["Question:", "\n"]) == "a #### 5"
    assert truncate_at_stop_strings("no stop here", ["Question:"]) == "no stop here"


def test_stops_at_a_stop_token_and_decodes_only_new_tokens(model, tokenizer):
    prompt = prompts_of(tokenizer, ["Q: 2+2?"])[0]
    new_ids = unpadded_greedy_ids(model, prompt, 6, [tokenizer.pad_token_id])
    stop = new_ids[3]
    assert stop not in new_ids[:3]
    # the 4th generated token made a stop token: the text is the first three new tokens, no prompt
    [short] = generate_greedy(model, tokenizer, [prompt, prompt[:-2]], 6, batch_size=2, stop_token_ids=[stop])[:1]
    assert short == tokenizer.decode(new_ids[:3])


def test_decoding_counts_the_batch_steps_and_each_row_s_tokens_to_its_stop(model, tokenizer):
    """A batch steps until its last row stops; a row's new tokens end at its stop token (or stop string)."""
    prompts = prompts_of(tokenizer, TEXTS)
    no_stop = [tokenizer.pad_token_id]
    full = decode_greedy(model, tokenizer, prompts, 7, batch_size=3, stop_token_ids=no_stop)
    assert (full.decode_steps, full.new_tokens) == (2 * 7, 4 * 7)  # batches of 3 and 1, every row to the limit
    first = unpadded_greedy_ids(model, prompts[0], 7, no_stop)
    stop = first[2]  # the first prompt's 3rd token stops it; what the other rows make of it is their own
    stopped = decode_greedy(model, tokenizer, prompts, 7, batch_size=3, stop_token_ids=[stop])
    lengths = [len(unpadded_greedy_ids(model, p, 7, [stop])) for p in prompts]
    assert lengths[0] == 2 and stopped.new_tokens == sum(lengths)
    assert stopped.decode_steps == min(max(lengths[:3]) + 1, 7) + min(lengths[3] + 1, 7)
    assert stopped.texts == generate_greedy(model, tokenizer, prompts, 7, batch_size=3, stop_token_ids=[stop])


def test_default_stop_tokens_include_eos_and_end_of_turn(model, tokenizer):
    ids = default_stop_token_ids(model, tokenizer)
    assert tokenizer.eos_token_id in ids
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids


def test_checkpoint_generation_config_does_not_change_greedy(model, tokenizer):
    prompts = prompts_of(tokenizer, TEXTS)
    plain = generate_greedy(model, tokenizer, prompts, 12, batch_size=4)
    saved = model.generation_config
    model.generation_config = GenerationConfig(repetition_penalty=5.0, do_sample=True, temperature=3.0,
                                               min_new_tokens=12)
    try:
        assert generate_greedy(model, tokenizer, prompts, 12, batch_size=4) == plain
        assert model.generation_config.repetition_penalty == 5.0  # restored afterwards
    finally:
        model.generation_config = saved


def test_rejects_bad_arguments(model, tokenizer):
    with pytest.raises(ValueError, match="batch_size"):
        generate_greedy(model, tokenizer, [[1]], 4, batch_size=0)
    with pytest.raises(ValueError, match="at least one token"):
        generate_greedy(model, tokenizer, [[]], 4, batch_size=1)
    with pytest.raises(ValueError, match="cache='paged'"):
        generate_greedy(model, tokenizer, [[1]], 4, batch_size=1, cache="paged")
    assert generate_greedy(model, tokenizer, [], 4, batch_size=2) == []
    assert decode_greedy(model, tokenizer, [], 4, batch_size=2).decode_steps == 0


@pytest.mark.slow
def test_smollm2_gsm8k_batch_of_two_equals_batch_of_one(model_cache):
    from omegaconf import OmegaConf

    from basel_app.config.schema import ModelConfig, TaskConfig
    from basel_app.models import load_model
    from basel_app.tasks.math import MathTask
    from basel_app.tasks.records import read_packaged_split

    loaded = load_model(OmegaConf.to_object(OmegaConf.structured(ModelConfig)), model_cache)
    task = MathTask(TaskConfig())
    records = read_packaged_split("gsm8k", "test", MathTask.fields)[:2]
    prompts = [task.prompt_ids(loaded.tokenizer, r) for r in records]
    assert len(prompts[0]) != len(prompts[1])  # the batch of two is padded
    batched = generate_greedy(loaded.model, loaded.tokenizer, prompts, 48, batch_size=2)
    singles = generate_greedy(loaded.model, loaded.tokenizer, prompts, 48, batch_size=1)
    assert batched == singles
    assert all(len(text.strip()) > 0 for text in batched)
