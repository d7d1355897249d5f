"""The ``code`` task: MBPP Python problems, problem statement + test asserts → reference solution.

Prompt protocol (fixed across methods; the MBPP paper's wording, zero-shot, and exactly what the ``mbpp``
benchmark asks, see :mod:`basel_app.evaluation.benchmarks`)::

    You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:

    {test_list[0]}
    {test_list[1]}
    {test_list[2]}

The response is the reference ``code`` as bare Python (no Markdown fence), with ``\\r\\n`` line endings made
``\\n`` (972 of the 974 MBPP solutions are written with ``\\r\\n``; a model should not learn to emit ``\\r``) and
surrounding whitespace stripped. Nothing else is changed, so the trained response passes its own tests
(checked for the whole test split in ``tests/evaluation/test_code_scoring.py``). Scoring accepts bare or fenced
code (:func:`basel_app.evaluation.code_scoring.extract_code`).

Splits: MBPP is one file holding all 974 problems; a split is a range of ``task_id``s, as the MBPP release
defines them (google-research ``mbpp/README.md``):

==============  ===========  =======  ===============================================
split           task_ids     records  used for
==============  ===========  =======  ===============================================
``train``       601–974      374      compression training data (``train_split``)
``test``        11–510       500      evaluation (``eval_split``, the ``mbpp`` benchmark)
``validation``  511–600      90       —
``prompt``      1–10         10       few-shot examples (unused: the protocol is zero-shot)
==============  ===========  =======  ===============================================

Data: the packaged copy (``basel_app/resources/mbpp/mbpp.jsonl``, CC BY 4.0, split by the id ranges above),
a local ``task.data_dir`` holding one ``<split>.jsonl`` per split in MBPP's fields, or the hub
(``task.source=hub task.hub_id=google-research-datasets/mbpp task.hub_config=full``), whose split names are the
same. See :mod:`basel_app.tasks.base` for how the source is chosen.
"""

from __future__ import annotations

from importlib import resources

from basel_app.tasks.base import Task
from basel_app.tasks.records import Record, TaskDataError, read_jsonl
from basel_app.tasks.registry import register_task

PROMPT_TEMPLATE = (
    "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{tests}"
)
RESOURCE_DIR = "mbpp"
RESOURCE_FILE = "mbpp.jsonl"
# split name -> the task_ids it holds (the MBPP release's own split definition)
SPLITS: dict[str, range] = {
    "train": range(601, 975),
    "test": range(11, 511),
    "validation": range(511, 601),
    "prompt": range(1, 11),
}


def split_ids(split: str) -> range:
    """The MBPP ``task_id``s of ``split``; an unknown name is refused with the known ones."""
    if split not in SPLITS:
        raise TaskDataError(f"MBPP has no split {split!r}; choose one of: {', '.join(SPLITS)}")
    return SPLITS[split]


def normalize_code(code: str) -> str:
    """MBPP's reference code as the model should write it: ``\\n`` line endings, no surrounding whitespace."""
    return code.replace("\r\n", "\n").replace("\r", "\n").strip()


@register_task
class CodeTask(Task):
    """MBPP: prompt = problem text + its test asserts, response = the reference solution."""

    name = "code"
    fields = {"task_id": int, "text": str, "code": str, "test_list": list[str], "test_setup_code": str}
    resource_dir = RESOURCE_DIR

    def read_split(self, split: str) -> list[Record]:
        """The packaged copy is one file, so a split is selected by its id range; other sources read per split."""
        if self.source != "packaged":
            return super().read_split(split)
        ids = split_ids(split)
        resource = resources.files("basel_app").joinpath("resources", RESOURCE_DIR, RESOURCE_FILE)
        with resources.as_file(resource) as path:
            records = read_jsonl(path, self.fields)
        selected = sorted((r for r in records if r["task_id"] in ids), key=lambda r: r["task_id"])
        found = [r["task_id"] for r in selected]
        if found != list(ids):
            # A damaged copy would otherwise silently shrink (or duplicate) an evaluation set.
            missing = sorted(set(ids) - set(found))
            duplicated = sorted({i for i in found if found.count(i) > 1})
            raise TaskDataError(
                f"packaged {RESOURCE_DIR}/{RESOURCE_FILE}: split {split!r} needs each task_id "
                f"{ids.start}..{ids.stop - 1} once; missing {missing[:10]}, duplicated {duplicated[:10]}; "
                "restore the file from basel_app/resources/mbpp/README.md"
            )
        return selected

    def to_example(self, record: Record) -> tuple[str, str]:
        tests = "\n".join(test.strip() for test in record["test_list"])
        prompt = PROMPT_TEMPLATE.format(text=record["text"].strip(), tests=tests)
        return prompt, normalize_code(record["code"])
