"""Teacher-forced answer loss: the shared code path against an independent computation, the loss
benchmarks against the run's own evaluation, and the validation split held out of training.

The independent computation scores one example at a time with no padding: log-softmax of the model's
logits, −log p of each labelled token summed in float64. One tolerance for the tiny model: 1e-5 relative.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from basel_app.config.schema import ConfigError, EvalConfig, MethodConfig, TrainerConfig
from basel_app.data import TaskDataModule
from basel_app.evaluate import evaluate_on_task
from basel_app.evaluation.answer_loss import answer_loss
from basel_app.evaluation.benchmarks import MATH_INSTRUCTION, BenchmarkSettings, run_benchmarks
from basel_app.tasks.encoding import IGNORE_INDEX, encode_example
from basel_app.tasks.math import MathTask
from basel_app.tasks.records import read_packaged_split
from tests.tasks.helpers import task_cfg

REL = 1e-5
MAX_LENGTH = 1024  # bytes: the byte tokenizer spends one token per character


@pytest.fixture(scope="module")
def tiny_model(tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_LENGTH, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def reference_loss(model, examples) -> float:
    """Σ −log p(answer token | prefix) / answer tokens, one unpadded example at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for example in examples:
            ids = torch.tensor([example["input_ids"]])
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            for t, label in enumerate(example["labels"]):
                if t > 0 and label != IGNORE_INDEX:
                    total -= logprobs[t - 1, label].item()
                    count += 1
    return total / count


def test_answer_loss_matches_an_unpadded_per_example_computation(tiny_model, tokenizer):
    task = MathTask.packaged()
    examples = [task.encode(tokenizer, r, MAX_LENGTH) for r in task.read_split("test")[:5]]
    result = answer_loss(tiny_model, tokenizer, examples + [None], batch_size=2)  # uneven lengths: padding matters
    assert result["answer_loss"] == pytest.approx(reference_loss(tiny_model, examples), rel=REL)
    assert (result["items"], result["skipped"]) == (5, 1)
    assert result["answer_tokens"] == sum(sum(label != IGNORE_INDEX for label in e["labels"]) for e in examples)


def test_math500_loss_scores_the_solutions_of_math500(tiny_model, tokenizer):
    records = read_packaged_split("math", "test500_prm800k", {"problem": str, "solution": str})[:3]
    examples = [encode_example(tokenizer, r["problem"] + MATH_INSTRUCTION, r["solution"], MAX_LENGTH) for r in records]
    result = run_benchmarks(tiny_model, tokenizer, ["math500_loss"], BenchmarkSettings(limit=3, max_length=MAX_LENGTH))
    assert result["math500_loss"]["answer_loss"] == pytest.approx(reference_loss(tiny_model, examples), rel=REL)
    assert result["math500_loss"]["items"] == 3


def datamodule(tokenizer, **kwargs) -> TaskDataModule:
    dm = TaskDataModule(MathTask(task_cfg()), train_batch_size=2, eval_batch_size=2, max_length=MAX_LENGTH, **kwargs)
    dm.load_records()
    dm.attach_tokenizer(tokenizer)
    return dm


def test_gsm8k_loss_equals_the_runs_own_answer_loss_and_validation_is_scored(tiny_model, tokenizer, tmp_path):
    dm = datamodule(tokenizer, max_train_samples=4, max_eval_samples=3, validation_samples=2)
    dm.setup("validate")
    result = evaluate_on_task(tiny_model, tokenizer, dm, EvalConfig(benchmarks=["gsm8k_loss"], limit=3),
                              TrainerConfig(enable_progress_bar=False), None, tmp_path)
    assert result["benchmarks"]["gsm8k_loss"]["answer_loss"] == pytest.approx(result["answer_loss"], rel=REL)
    assert result["validation"]["answer_loss"] == pytest.approx(
        reference_loss(tiny_model, dm.validation_dataset.items), rel=REL)


def test_validation_split_is_held_out_of_training_deterministically(tokenizer):
    first = datamodule(tokenizer, max_train_samples=50, validation_samples=20, seed=3)
    again = datamodule(tokenizer, max_train_samples=50, validation_samples=20, seed=3)
    questions = [r["question"] for r in first.validation_records]
    assert len(set(questions)) == 20 and questions == [r["question"] for r in again.validation_records]
    assert not set(questions) & {r["question"] for r in first.train_records}
    assert len(first.train_records) == 50
    with pytest.raises(ValueError, match="task.validation_samples=100000 is not allowed"):
        datamodule(tokenizer, validation_samples=100_000)


def test_the_dense_reference_refuses_a_parameter_budget():
    with pytest.raises(ConfigError, match="method=finetune compresses nothing"):
        MethodConfig(name="finetune", compression_ratio=2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent device machine)")
def test_on_a_gpu_the_benchmarks_after_lightnings_validate_run_on_the_gpu(tiny_model, tokenizer, tmp_path, monkeypatch):
    seen = []

    def spy(model, *args, **kwargs):
        seen.append(next(model.parameters()).device.type)
        return {}

    monkeypatch.setattr("basel_app.evaluate.run_benchmarks", spy)
    dm = datamodule(tokenizer, max_train_samples=4, max_eval_samples=3, validation_samples=2)
    dm.setup("validate")
    result = evaluate_on_task(tiny_model, tokenizer, dm, EvalConfig(benchmarks=["gsm8k_loss"], limit=3),
                              TrainerConfig(accelerator="gpu", enable_progress_bar=False), None, tmp_path)
    assert seen == ["cuda"] and result["device"].startswith("cuda")
    assert next(tiny_model.parameters()).device.type == "cpu"  # handed back where the pipeline keeps it
