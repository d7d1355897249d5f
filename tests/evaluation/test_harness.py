"""The lm-evaluation-harness adapter, offline: a local YAML task on the tiny Llama, before and after compression.

The task is multiple choice, so the harness scores every (question, choice) pair by the log-likelihood of the
choice. Each of those numbers is checked against one computed here from scratch: the byte tokenizer maps
text to its bytes (id == byte value), so the ids are the UTF-8 bytes of prompt + choice, and the score is the
sum of the log-softmax of the model's logits at each choice byte. The compressed model goes through
reparameterize, pruning, recompose, save_compressed and load_compressed first, as a user's model would.
"""

from __future__ import annotations

import copy
import json
import re
import sys

import pytest
import torch
from transformers import LlamaForCausalLM

from basel_app.evaluation.harness import evaluate_with_harness, harness_model
from basel_app.lowrank import basel_layers, find_target_linears, recompose_model, reparameterize
from basel_app.models import load_compressed, save_compressed
from basel_app.models.compressed_io import lowrank_ranks
from tests.lowrank.helpers import perturb_as_if_trained
from tests.tiny_llama import tiny_llama_config

TASK = "basel_tiny_choice"
# Choices of different lengths, so a wrongly sliced continuation changes the scores.
ITEMS = [
    {"question": "2 + 3", "choices": ["5", "six", "23"], "label": 0},
    {"question": "7 - 4", "choices": ["11", "3", "three"], "label": 1},
    {"question": "capital of France", "choices": ["Rome", "Paris", "Lyon"], "label": 1},
    {"question": "opposite of hot", "choices": ["cold", "warm", "ice"], "label": 0},
    {"question": "first letter", "choices": ["b", "z", "a"], "label": 2},
]
ABS_TOL = 1e-4  # the harness takes the log-softmax in float32, the reference in float64


@pytest.fixture(scope="module")
def model(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(len(tokenizer), tokenizer)).eval()


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A directory holding the task's YAML, which reads its items from a local JSONL file."""
    root = tmp_path_factory.mktemp("harness")
    data = root / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    (root / "tasks").mkdir()
    (root / "tasks" / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Q: {{question}}\\nA:"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return root / "tasks"


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep the harness's `datasets` cache of the JSONL file out of the user's cache."""
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "datasets")


@torch.no_grad()
def reference_loglikelihood(model: LlamaForCausalLM, context: str, continuation: str) -> float:
    ids = list((context + continuation).encode())
    first = len(ids) - len(continuation.encode())
    logprobs = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    return sum(logprobs[i - 1, ids[i]].item() for i in range(first, len(ids)))


def check_against_reference(model, tokenizer, task_dir) -> list[list[float]]:
    """Run the task through the adapter, check every score and the accuracy; return the scores."""
    results = evaluate_with_harness(model, tokenizer, [TASK], include_path=task_dir, batch_size=4)
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    assert len(samples) == len(ITEMS)
    scores, correct = [], []
    for item, sample in zip(ITEMS, samples):
        context = f"Q: {item['question']}\nA:"
        assert [tuple(a) for a in sample["arguments"]] == [(context, " " + c) for c in item["choices"]]
        expected = [reference_loglikelihood(model, context, " " + c) for c in item["choices"]]
        got = [resp[0] for resp in sample["filtered_resps"]]
        assert got == pytest.approx(expected, abs=ABS_TOL)
        scores.append(expected)
        correct.append(max(range(len(expected)), key=expected.__getitem__) == item["label"])
    assert results["results"][TASK]["acc,none"] == pytest.approx(sum(correct) / len(correct))
    return scores


def test_harness_scores_the_model_as_its_logits_say(model, tokenizer, task_dir):
    check_against_reference(model, tokenizer, task_dir)


def test_a_compressed_model_runs_through_the_harness(model, tokenizer, task_dir, tmp_path):
    compressed = copy.deepcopy(model)
    targets = find_target_linears(compressed, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    reparameterize(compressed, targets, additional_dim=4, seed=1)
    gen = torch.Generator().manual_seed(2)
    for layer in basel_layers(compressed).values():
        perturb_as_if_trained(layer, gen, prune_to=min(layer.out_features, layer.in_features) // 4)
    recompose_model(compressed)
    loaded, loaded_tokenizer = load_compressed(save_compressed(compressed, tokenizer, tmp_path / "compressed"))
    assert len(lowrank_ranks(loaded)) == 14  # 7 projections x 2 layers, all below break-even

    scores = check_against_reference(loaded, loaded_tokenizer, task_dir)
    original = [[reference_loglikelihood(model, f"Q: {i['question']}\nA:", " " + c) for c in i["choices"]]
                for i in ITEMS]
    assert max(abs(s - o) for row, orow in zip(scores, original) for s, o in zip(row, orow)) > 1e-2


def test_missing_lm_eval_names_the_install_command(model, tokenizer, monkeypatch):
    for name in [m for m in list(sys.modules) if m.startswith("lm_eval.")] + ["lm_eval"]:
        monkeypatch.setitem(sys.modules, name, None)  # a None entry makes `import` raise ImportError
    hint = re.escape("pip install 'basel_app[harness]'")
    with pytest.raises(ImportError, match=hint):
        harness_model(model, tokenizer)
    with pytest.raises(ImportError, match=hint):
        evaluate_with_harness(model, tokenizer, [TASK])
