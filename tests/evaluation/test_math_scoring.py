"""Scoring: gold answers score 100%, perturbed answers 0%, on the packaged GSM8K and MATH test sets."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from importlib import resources

import pytest
from sympy import Basic, MatrixBase

from basel_app.evaluation.math_scoring import (
    answers_equivalent,
    gsm8k_flexible,
    gsm8k_reference,
    gsm8k_strict,
    last_boxed,
    math_equivalent,
    math_extract_answer,
    math_reference_answer,
    math_verify_equivalent,
    math_verify_parse,
    normalize_number,
    score_gsm8k,
    score_math,
)

# Gold MATH answers (last \boxed{} of the 5,000 test solutions) that Math-Verify cannot turn into a SymPy
# object, measured: 1 — "\frac{12}{5,\!525}" (a thousands comma inside a fraction). Such answers are still
# compared, as strings. Percent answers ("44\%") parse because the percent sign is dropped first.
MAX_UNPARSED_MATH_REFERENCES = 1


def read_resource(*parts: str) -> list[dict]:
    path = resources.files("basel_app").joinpath("resources", *parts)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def gsm8k_test() -> list[dict]:
    return read_resource("gsm8k", "test.jsonl")


@pytest.fixture(scope="module")
def math_test() -> list[dict]:
    return read_resource("math", "test.jsonl")


@pytest.fixture(scope="module")
def math500() -> list[dict]:
    return read_resource("math", "test500_prm800k.jsonl")


# ---------------------------------------------------------------------------------------------- GSM8K


@pytest.mark.parametrize(
    "written,canonical",
    [("18", "18"), ("18.00", "18"), ("$18", "18"), ("18.", "18"), ("1,200", "1200"), ("$1,200.50", "1200.5"),
     ("-3", "-3"), ("-0", "0"), ("0.250", "0.25"), (".5", "0.5"), ("abc", None)],
)
def test_normalize_number(written, canonical):
    assert normalize_number(written) == canonical


def test_strict_takes_the_number_after_the_last_marker():
    assert gsm8k_strict("first #### 3\nthen 5 apples\n#### $1,200.") == "1200"
    assert gsm8k_strict("The answer is 18.") is None
    assert gsm8k_strict("#### eighteen") is None


def test_flexible_takes_the_last_number():
    assert gsm8k_flexible("She pays 3 * $6 = $18.00.") == "18"
    assert gsm8k_flexible("Groups 3,4 and 5") == "5"  # "3,4" is not a thousands number
    assert gsm8k_flexible("no digits") is None


def test_strict_and_flexible_can_disagree():
    text = "#### 10\nWait, it is actually 12."
    assert (gsm8k_strict(text), gsm8k_flexible(text)) == ("10", "12")


def test_gold_gsm8k_answers_score_100_percent(gsm8k_test):
    assert len(gsm8k_test) == 1319
    scores = score_gsm8k([r["answer"] for r in gsm8k_test], gsm8k_test)
    assert scores["accuracy_strict"] == 1.0
    assert scores["accuracy_flexible"] == 1.0
    assert scores["n"] == 1319 and all(scores["correct_strict"]) and all(scores["correct_flexible"])


def test_off_by_one_gsm8k_answers_score_0_percent(gsm8k_test):
    perturbed = []
    for record in gsm8k_test:
        body, _ = record["answer"].rsplit("####", 1)
        wrong = int(gsm8k_reference(record)) + 1  # every GSM8K test answer is an integer
        perturbed.append(f"{body}#### {wrong:,}")
    scores = score_gsm8k(perturbed, gsm8k_test)
    assert scores["accuracy_strict"] == 0.0
    assert scores["accuracy_flexible"] == 0.0


def test_gsm8k_scores_are_per_item_and_in_order(gsm8k_test):
    records = gsm8k_test[:4]
    texts = [records[0]["answer"], "no answer", "The total is $" + gsm8k_reference(records[2]) + ".", "#### 0.5"]
    scores = score_gsm8k(texts, records)
    assert scores["correct_strict"] == [True, False, False, False]
    assert scores["correct_flexible"] == [True, False, True, False]
    assert scores["accuracy_strict"] == pytest.approx(0.25) and scores["accuracy_flexible"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one generation per record"):
        score_gsm8k(texts[:3], records)


# ---------------------------------------------------------------------------------------------- MATH


def test_last_boxed_keeps_nested_braces():
    assert last_boxed(r"so \boxed{1} or rather \boxed{\frac{1}{\sqrt{2}}}.") == r"\frac{1}{\sqrt{2}}"
    assert last_boxed(r"$\boxed{\{1, 2\}}$") == r"\{1, 2\}"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"is $\boxed 5$.") == "5"
    assert last_boxed(r"cut off \boxed{\frac{1}{2") is None
    assert last_boxed("nothing") is None


def test_extract_answer_prefers_the_box_then_the_final_answer_line():
    assert math_extract_answer(r"\boxed{2} and finally \boxed{3}") == "3"
    minerva = "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct."
    assert math_extract_answer(minerva) == r"\frac{1}{2}"
    assert math_extract_answer("So the answer is: 7.\n") == "7"
    assert math_extract_answer("I do not know") is None


@pytest.mark.parametrize("a,b", [(r"\frac{1}{2}", "0.5"), ("0.5", r"\dfrac12"), (r"\frac{1}{2}", r"\dfrac12"),
                                 (r"2\sqrt{2}", r"\sqrt{8}"), (r"\{1,2\}", r"\{2,1\}"), ("44\\%", "44"),
                                 (r"\text{(C)}", "C"), (r"x^2+2x+1", r"(x+1)^2")])
def test_equivalent_answers(a, b):
    assert answers_equivalent(a, b)
    assert math_equivalent(rf"Thus the answer is $\boxed{{{a}}}$.", b)


@pytest.mark.parametrize("a,b", [(r"\frac{1}{2}", r"\frac{1}{3}"), ("3", "-3"), ("x+1", "x+2"), ("(1,2)", "(2,1)"),
                                 (r"\pi", "3.14"), ("0.5", "5")])
def test_non_equivalent_answers(a, b):
    assert not answers_equivalent(a, b)
    assert not math_equivalent(rf"\boxed{{{a}}}", b)


def test_no_answer_is_not_equivalent():
    assert not math_equivalent("I could not solve it.", "3")


def test_math_verify_works_from_a_worker_thread():
    # signal.alarm only works in the main thread; off it the timeout is switched off instead of raising
    result: dict[str, bool] = {}
    thread = threading.Thread(target=lambda: result.update(ok=math_verify_equivalent("0.5", r"\frac{1}{2}")))
    thread.start()
    thread.join(timeout=60)
    assert result == {"ok": True}


def test_every_math_test_solution_has_a_boxed_answer_that_math_verify_matches_to_itself(math_test):
    assert len(math_test) == 5000
    references = [math_reference_answer(r["solution"]) for r in math_test]
    unparsed = [a for a in references if not any(isinstance(x, (Basic, MatrixBase)) for x in math_verify_parse(a))]
    assert len(unparsed) <= MAX_UNPARSED_MATH_REFERENCES, unparsed
    # Math-Verify alone (no string shortcut): the parsed reference equals itself for every record
    assert all(math_verify_equivalent(a, a) for a in references)
    # and the whole gold solution scores 100% against its reference
    scores = score_math([r["solution"] for r in math_test], math_test)
    assert scores["accuracy"] == 1.0 and scores["n"] == 5000


def test_math500_solutions_match_their_answer_field(math500):
    assert len(math500) == 500
    scores = score_math([r["solution"] for r in math500], math500)
    assert scores["reference"] == [r["answer"] for r in math500]  # MATH500 records carry the answer
    assert scores["accuracy"] == 1.0


def test_perturbed_numeric_math_answers_are_wrong(math500):
    numeric = [r for r in math500 if normalize_number(r["answer"]) is not None and "," not in r["answer"]]
    assert len(numeric) > 200
    generations = [rf"The answer is $\boxed{{{normalize_number(str(Decimal(r['answer']) + 1))}}}$" for r in numeric]
    scores = score_math(generations, numeric)
    assert scores["accuracy"] == 0.0
    assert all(p is not None for p in scores["predicted"])
