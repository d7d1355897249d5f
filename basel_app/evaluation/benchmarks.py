"""The benchmarks each target application is judged by, as the papers measure them, behind one registry.

| task   | benchmarks (items)                       | metric                                                   |
| ------ | ---------------------------------------- | -------------------------------------------------------- |
| `math` | `gsm8k` (1319 test), `math` (5000 test)  | greedy pass@1: GSM8K strict `#### N` and flexible last number; MATH by math-verify equivalence |
| `code` | `humaneval` (164), `mbpp` (500, ids 11-510) | greedy pass@1, each program run in the sandbox        |
| `lm`   | `wikitext2` (test split)                 | perplexity, sliding window (`context_length`, `stride`)  |
| any    | `gsm8k_loss` (1319 test), `math500_loss` (MATH500) | teacher-forced answer loss (`answer_loss.py`), no generation |

Prompt protocol (fixed across methods, zero-shot, through the model's chat template when it has one):
GSM8K asks exactly the training prompt of `task=math` (the question); MATH asks the problem followed by
"Put your final answer within \\boxed{}."; MBPP asks the training prompt of `task=code` (problem text and
its test asserts); HumanEval asks to complete the function whose signature and docstring are given, in a
fenced code block. Decoding is greedy with a fixed, recorded batch size.

The loss sets score the reference answer under teacher forcing, encoded exactly as training encodes an
example (`max_length` tokens, the same chat template and system prompt): GSM8K's worked answer to the
training prompt (task=math's encoding, so `gsm8k_loss` on the first N items equals the run's own
`answer_loss` with task.max_eval_samples=N), and MATH500's worked solution to the MATH prompt above.
They cost one forward pass per item, where generation costs hundreds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from basel_app.modes import eval_mode

if TYPE_CHECKING:
    from basel_app.evaluation.generation import GreedyDecoding

log = logging.getLogger(__name__)

MATH_INSTRUCTION = "\n\nPut your final answer within \\boxed{}."
HUMANEVAL_INSTRUCTION = "Complete this Python function. Answer with the whole function in a ```python code block.\n\n"


@dataclass(frozen=True)
class BenchmarkSettings:
    limit: int | None = None  # the first N items (None: all)
    batch_size: int = 8  # generation batch size (greedy results depend on it)
    max_new_tokens: int = 512
    context_length: int = 1024  # perplexity window
    stride: int = 512
    code_timeout_s: float = 10.0
    system_prompt: str | None = None
    max_length: int = 512  # loss sets: tokens per example (the run's task.max_length)


def _first(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


def _generate(model: nn.Module, tokenizer: Any, prompts: list[str], settings: BenchmarkSettings) -> GreedyDecoding:
    from basel_app.evaluation.generation import decode_greedy
    from basel_app.tasks.encoding import prompt_ids

    ids = [prompt_ids(tokenizer, prompt, settings.system_prompt) for prompt in prompts]
    return decode_greedy(model, tokenizer, ids, settings.max_new_tokens, settings.batch_size)


def _decoding(decoded: GreedyDecoding) -> dict[str, int]:
    """What the generation cost, beside a benchmark's "seconds": two models' times compare per decode step."""
    return {"decode_steps": decoded.decode_steps, "new_tokens": decoded.new_tokens}


def _examples(prompts: list[str], generations: list[str], correct: list[bool], n: int = 3) -> list[dict[str, Any]]:
    return [{"prompt": p[-300:], "generated": g, "correct": c} for p, g, c in list(zip(prompts, generations, correct))[:n]]


def run_gsm8k(model: nn.Module, tokenizer: Any, settings: BenchmarkSettings) -> dict[str, Any]:
    from basel_app.evaluation.math_scoring import score_gsm8k
    from basel_app.tasks.records import read_packaged_split

    records = _first(read_packaged_split("gsm8k", "test", {"question": str, "answer": str}), settings.limit)
    prompts = [r["question"] for r in records]
    decoded = _generate(model, tokenizer, prompts, settings)
    scores = score_gsm8k(decoded.texts, records)
    return {**_summary(scores), **_decoding(decoded), "examples": _examples(prompts, decoded.texts, scores["correct_strict"])}


def run_math(model: nn.Module, tokenizer: Any, settings: BenchmarkSettings) -> dict[str, Any]:
    from basel_app.evaluation.math_scoring import score_math
    from basel_app.tasks.records import read_packaged_split

    records = _first(read_packaged_split("math", "test", {"problem": str, "solution": str}), settings.limit)
    prompts = [r["problem"] + MATH_INSTRUCTION for r in records]
    decoded = _generate(model, tokenizer, prompts, settings)
    scores = score_math(decoded.texts, records)
    return {**_summary(scores), **_decoding(decoded), "examples": _examples(prompts, decoded.texts, scores["correct"])}


def run_humaneval(model: nn.Module, tokenizer: Any, settings: BenchmarkSettings) -> dict[str, Any]:
    from basel_app.evaluation.code_scoring import extract_code, humaneval_problems, humaneval_program

    problems = _first(humaneval_problems(), settings.limit)
    prompts = [HUMANEVAL_INSTRUCTION + "```python\n" + p["prompt"] + "```" for p in problems]
    decoded = _generate(model, tokenizer, prompts, settings)
    programs = [humaneval_program(p, extract_code(g)) for p, g in zip(problems, decoded.texts)]
    return _run_code(programs, prompts, decoded, settings)


def run_mbpp(model: nn.Module, tokenizer: Any, settings: BenchmarkSettings) -> dict[str, Any]:
    from basel_app.evaluation.code_scoring import extract_code, mbpp_program
    from basel_app.tasks.code import CodeTask

    task = CodeTask.packaged()
    records = _first(task.read_split("test"), settings.limit)
    prompts = [task.to_example(r)[0] for r in records]
    decoded = _generate(model, tokenizer, prompts, settings)
    programs = [mbpp_program(r, extract_code(g)) for r, g in zip(records, decoded.texts)]
    return _run_code(programs, prompts, decoded, settings)


def _run_code(programs: list[str], prompts: list[str], decoded: GreedyDecoding, settings: BenchmarkSettings
              ) -> dict[str, Any]:
    from basel_app.evaluation.code_scoring import pass_at_1
    from basel_app.evaluation.sandbox import Limits, isolation, run_programs

    outcomes = run_programs(programs, Limits(wall_time_s=settings.code_timeout_s))
    statuses = [o.status for o in outcomes]
    return {
        "pass@1": pass_at_1(outcomes),
        "items": len(outcomes),
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "sandbox": isolation(),
        **_decoding(decoded),
        "examples": _examples(prompts, decoded.texts, [o.passed for o in outcomes]),
    }


def run_gsm8k_loss(model: nn.Module, tokenizer: Any, settings: BenchmarkSettings) -> dict[str, Any]:
    from basel_app.tasks.math import MathTask

    task = MathTask.packaged(settings.system_prompt)
    records = _first(task.read_split("test"), settings.limit)
    return _answer_loss(model, tokenizer, [task.encode(tokenizer, r, settings.max_length) for r in records], settings)


def run_math500_loss(model: nn.Module, tokenizer: Any, settings: BenchmarkSettings) -> dict[str, Any]:
    from basel_app.tasks.encoding import encode_example
    from basel_app.tasks.records import read_packaged_split

    records = _first(read_packaged_split("math", "test500_prm800k", {"problem": str, "solution": str}), settings.limit)
    examples = [encode_example(tokenizer, r["problem"] + MATH_INSTRUCTION, r["solution"], settings.max_length,
                               settings.system_prompt) for r in records]
    return _answer_loss(model, tokenizer, examples, settings)


def _answer_loss(model: nn.Module, tokenizer: Any, examples: list, settings: BenchmarkSettings) -> dict[str, Any]:
    from basel_app.evaluation.answer_loss import answer_loss

    return answer_loss(model, tokenizer, examples, settings.batch_size)


def run_wikitext2(model: nn.Module, tokenizer: Any, settings: BenchmarkSettings) -> dict[str, Any]:
    from basel_app.evaluation.perplexity import wikitext_perplexity
    from basel_app.tasks.lm import wikitext_test_text

    return wikitext_perplexity(model, tokenizer, wikitext_test_text(), settings.context_length, settings.stride,
                               max_windows=settings.limit)


def _summary(scores: dict[str, Any]) -> dict[str, Any]:
    """The aggregate numbers of a scorer's result (its per-item lists stay out of metrics.json)."""
    return {k: v for k, v in scores.items() if not isinstance(v, list)}


BENCHMARKS: dict[str, Callable[[nn.Module, Any, BenchmarkSettings], dict[str, Any]]] = {
    "gsm8k": run_gsm8k, "math": run_math, "humaneval": run_humaneval, "mbpp": run_mbpp, "wikitext2": run_wikitext2,
    "gsm8k_loss": run_gsm8k_loss, "math500_loss": run_math500_loss,
}
TASK_BENCHMARKS: dict[str, tuple[str, ...]] = {
    "math": ("gsm8k", "math"), "code": ("humaneval", "mbpp"), "lm": ("wikitext2",),
}


def run_benchmarks(model: nn.Module, tokenizer: Any, names: list[str], settings: BenchmarkSettings,
                   forward_context: Callable[[], AbstractContextManager] = nullcontext) -> dict[str, Any]:
    """Each named benchmark on `model` (eval mode, no grad); results carry the settings that produced them.

    Every forward runs inside `forward_context()`, e.g. the trainer's bf16 autocast, so a benchmark sees the
    model at the precision it was trained at.
    """
    results: dict[str, Any] = {}
    with eval_mode(model):
        for name in names:
            start = time.perf_counter()
            log.info("benchmark %s (limit %s, batch size %d)", name, settings.limit, settings.batch_size)
            with forward_context():
                result = BENCHMARKS[name](model, tokenizer, settings)
            results[name] = {**result, "settings": asdict(settings), "seconds": round(time.perf_counter() - start, 2)}
    return results
