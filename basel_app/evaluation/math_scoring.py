"""Scoring generated answers to math word problems: GSM8K (numbers) and MATH (LaTeX expressions).

GSM8K — two extractions, both reported, because they can differ by tens of points:

- **strict**: the number after the last ``####`` (the format the ``math`` task trains the model to end with);
  an answer without a ``#### N`` line scores 0 however right its working is.
- **flexible**: the last number anywhere in the text (what a model that never learned ``####`` is judged by).

Numbers are normalised before comparison: thousands commas, a ``$`` sign and a trailing ``.`` are dropped and
the value is written canonically, so ``"$1,200.00"``, ``"1200."`` and ``"1200"`` are all ``"1200"``.

MATH — the reference is the content of the last ``\\boxed{...}`` of the reference solution (PRM800K's
MATH500 records carry it as ``answer``). A generation's answer is its last ``\\boxed{...}``, else the text after
its last "answer is"/"answer:". Two answers are equivalent when their whitespace-normalised strings are equal
or when ``math_verify`` (HuggingFace Math-Verify: LaTeX → SymPy, then numeric/symbolic/set comparison) says
so; ``\\frac{1}{2}``, ``\\dfrac12`` and ``0.5`` are one answer.

Timeouts: Math-Verify bounds each parse and each comparison with ``signal.alarm`` (whole seconds), which works
only in the main thread. Here the timeout (:data:`MATH_VERIFY_TIMEOUT_S`) is used in the main thread — a
parse or comparison that runs over is abandoned and counts as *not equivalent* (Math-Verify logs a warning) —
and is switched off in any other thread, where a pathological expression could then run unbounded (SymPy
cannot be interrupted from outside the main thread). An outer ``SIGALRM`` timer (e.g. pytest-timeout) is
re-armed after each call, since Math-Verify's ``alarm(0)`` would otherwise cancel it.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import torch
from torchmetrics.aggregation import MeanMetric

log = logging.getLogger(__name__)

MATH_VERIFY_TIMEOUT_S = 5  # per parse / per comparison, main thread only (signal.alarm takes whole seconds)

# ---------------------------------------------------------------------------------------------- GSM8K

# A number as written in an answer: optional minus and dollar sign, digits with optional thousands commas
# ("1,200" but not the list "3,4"), optional decimals. A trailing "." (end of sentence) is never included.
_NUMBER = r"-?\$?-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_NUMBER_RE = re.compile(_NUMBER)
_STRICT_RE = re.compile(r"####\s*(" + _NUMBER + ")")


def normalize_number(text: str) -> str | None:
    """Canonical form of a written number, or ``None`` if ``text`` is not one.

    ``"$1,200.00"`` → ``"1200"``, ``"18."`` → ``"18"``, ``"0.50"`` → ``"0.5"``, ``"-0"`` → ``"0"``.
    """
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def gsm8k_strict(text: str) -> str | None:
    """The normalised number right after the last ``####`` (``"... #### 1,200"`` → ``"1200"``), else ``None``."""
    matches = _STRICT_RE.findall(text)
    return normalize_number(matches[-1]) if matches else None


def gsm8k_flexible(text: str) -> str | None:
    """The normalised last number anywhere in ``text``, else ``None``."""
    matches = _NUMBER_RE.findall(text)
    return normalize_number(matches[-1]) if matches else None


def gsm8k_reference(record: Mapping[str, Any]) -> str:
    """The gold answer of a GSM8K record (its ``#### N`` number, normalised)."""
    reference = gsm8k_strict(record["answer"])
    if reference is None:
        raise ValueError(f"GSM8K record has no '#### <number>' line in its answer: {record['answer'][-80:]!r}")
    return reference


# ---------------------------------------------------------------------------------------------- MATH

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:)\s*:?", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; else ``None``.

    Nested braces are kept: ``"\\boxed{\\frac{1}{2}}"`` → ``"\\frac{1}{2}"``. The brace-less form
    ``"\\boxed 5"`` gives ``"5"``. An unclosed ``\\boxed{`` (a generation cut off mid-answer) gives ``None``.
    """
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    for start in reversed(starts):
        rest = text[start:]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            content = _balanced(stripped)
            if content is not None:
                return content.strip()
        elif rest[:1].isspace() and stripped:
            # "\boxed 5": the argument runs to the next space, "$" or end of text.
            return re.split(r"[\s$]", stripped, maxsplit=1)[0].rstrip(".")
    return None


def _balanced(text: str) -> str | None:
    """The content of the brace group that opens ``text`` (``text[0] == "{"``), or ``None`` if unclosed."""
    depth = 0
    for i, char in enumerate(text):
        if char == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif char == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[1:i]
    return None


def math_reference_answer(solution: str) -> str:
    """The final answer of a MATH reference solution: the content of its last ``\\boxed{...}``."""
    answer = last_boxed(solution)
    if answer is None:
        raise ValueError(f"MATH solution has no \\boxed{{...}} answer: ...{solution[-120:]!r}")
    return answer


def math_extract_answer(text: str) -> str | None:
    """A generation's final answer: its last ``\\boxed{...}``, else what follows its last "answer is" / "answer:".

    The second form covers "The final answer is $\\frac{1}{2}$." — the rest of that line, with ``$``,
    ``\\(``/``\\)`` and a closing period removed. ``None`` when neither is present.
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    line = text[matches[-1].end():].strip().split("\n", 1)[0]
    line = re.sub(r"\.?\s*I hope it is correct\.?$", "", line).strip()  # Minerva's few-shot format
    line = line.strip().rstrip(".").strip()
    for opening, closing in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if line.startswith(opening) and line.endswith(closing) and len(line) >= len(opening) + len(closing):
            line = line[len(opening) : len(line) - len(closing)].strip()
            break
    return line.rstrip(".").strip() or None


def _normalize_latex(answer: str) -> str:
    """Whitespace- and spelling-insensitive form for the string comparison (``\\dfrac`` ≡ ``\\frac``)."""
    answer = re.sub(r"\\[dt]frac", r"\\frac", answer)
    answer = answer.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    answer = answer.replace("\\%", "").replace("%", "")
    return re.sub(r"\s+", "", answer)


T = TypeVar("T")


@contextmanager
def _keep_outer_alarm() -> Iterator[None]:
    """Re-arm a ``SIGALRM`` timer set by someone else after Math-Verify's ``alarm(0)`` cancelled it."""
    delay, interval = signal.getitimer(signal.ITIMER_REAL)
    start = time.monotonic()
    try:
        yield
    finally:
        if delay > 0 and signal.getitimer(signal.ITIMER_REAL)[0] == 0:
            remaining = max(delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, interval)


def _call_math_verify(fn: Callable[..., T], *args: Any, timeout_key: str) -> T:
    """Call a Math-Verify function with its signal timeout in the main thread and none elsewhere."""
    in_main = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not in_main:
        return fn(*args, **{timeout_key: None})
    with _keep_outer_alarm():
        return fn(*args, **{timeout_key: MATH_VERIFY_TIMEOUT_S})


def math_verify_parse(answer: str) -> list[Any]:
    """Math-Verify's parse of one answer (wrapped in ``\\boxed{}`` so it is read as a whole).

    Returns SymPy objects followed by the matched string; ``[]`` when nothing could be extracted, or when
    parsing raised or timed out (Math-Verify swallows both and logs).
    """
    from math_verify import parse  # imported lazily: it pulls in SymPy and an ANTLR parser (~0.4 s)

    # As in the MATH grader (Hendrycks et al.): percent signs are dropped ("44\\%" ≡ "44") and so are
    # thin negative spaces ("5,\\!525"); Math-Verify parses neither.
    cleaned = answer.replace("\\!", "").replace("\\%", "").replace("%", "")
    return _call_math_verify(parse, "\\boxed{" + cleaned + "}", timeout_key="parsing_timeout")


def math_verify_equivalent(predicted: str, reference: str) -> bool:
    """Whether Math-Verify judges the two answers (not whole solutions) equal; ``False`` on errors/timeouts."""
    from math_verify import verify

    gold, target = math_verify_parse(reference), math_verify_parse(predicted)
    if not gold or not target:
        return False
    return bool(_call_math_verify(verify, gold, target, timeout_key="timeout_seconds"))


def answers_equivalent(predicted: str, reference: str) -> bool:
    """Whether two final answers agree: equal normalised strings, or equal per Math-Verify."""
    if _normalize_latex(predicted) == _normalize_latex(reference):
        return True
    return math_verify_equivalent(predicted, reference)


def math_equivalent(predicted_text: str, reference: str) -> bool:
    """Whether a generation's final answer (see :func:`math_extract_answer`) equals the reference answer."""
    predicted = math_extract_answer(predicted_text)
    return predicted is not None and answers_equivalent(predicted, reference)


def math_record_reference(record: Mapping[str, Any]) -> str:
    """A MATH record's gold answer: its ``answer`` field (PRM800K/MATH500), else its solution's last box."""
    answer = record.get("answer")
    return answer if isinstance(answer, str) and answer.strip() else math_reference_answer(record["solution"])


# ---------------------------------------------------------------------------------------------- scores


def _mean(values: Sequence[bool]) -> float:
    """Accuracy of a list of per-item results, aggregated by torchmetrics (0.0 for an empty list)."""
    if not values:
        return 0.0
    metric = MeanMetric()
    metric.update(torch.tensor(values, dtype=torch.float64))
    return float(metric.compute())


def _check_lengths(generations: Sequence[str], records: Sequence[Mapping[str, Any]]) -> None:
    if len(generations) != len(records):
        raise ValueError(
            f"got {len(generations)} generations for {len(records)} records; pass one generation per record, "
            "in the records' order"
        )


def score_gsm8k(generations: Sequence[str], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Strict and flexible accuracy of GSM8K generations against their records' ``#### N`` answers.

    Returns ``accuracy_strict``, ``accuracy_flexible`` (fractions in [0, 1]), ``n``, and per item:
    ``reference``, ``predicted_strict``, ``predicted_flexible`` (normalised numbers or ``None``),
    ``correct_strict``, ``correct_flexible`` (bools).
    """
    _check_lengths(generations, records)
    references = [gsm8k_reference(record) for record in records]
    strict = [gsm8k_strict(text) for text in generations]
    flexible = [gsm8k_flexible(text) for text in generations]
    correct_strict = [p is not None and p == r for p, r in zip(strict, references)]
    correct_flexible = [p is not None and p == r for p, r in zip(flexible, references)]
    return {
        "accuracy_strict": _mean(correct_strict),
        "accuracy_flexible": _mean(correct_flexible),
        "n": len(records),
        "reference": references,
        "predicted_strict": strict,
        "predicted_flexible": flexible,
        "correct_strict": correct_strict,
        "correct_flexible": correct_flexible,
    }


def score_math(generations: Sequence[str], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy of MATH generations: final answer (last box / "answer is") equivalent to the reference.

    Returns ``accuracy`` (fraction in [0, 1]), ``n``, and per item ``reference``, ``predicted`` (the
    extracted answer or ``None``) and ``correct`` (bools).
    """
    _check_lengths(generations, records)
    references = [math_record_reference(record) for record in records]
    predicted = [math_extract_answer(text) for text in generations]
    correct = [p is not None and answers_equivalent(p, r) for p, r in zip(predicted, references)]
    return {
        "accuracy": _mean(correct),
        "n": len(records),
        "reference": references,
        "predicted": predicted,
        "correct": correct,
    }
