"""`python -m basel_app.bench <sub-benchmark> [--setting value ...] [--out DIR]`: measure, print a table,
write `<out>/<sub-benchmark>.json` (the settings, the machine and versions, every variant's median, spread
and repeats).

    python -m basel_app.bench generation --model smollm2_135m --batch 4 --new-tokens 64
    python -m basel_app.bench all --model tiny_random --repeats 2     # every sub-benchmark, in seconds

Each sub-benchmark's settings are the fields of its settings dataclass, given as `--field-name value`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from basel_app.bench import SUB_BENCHMARKS
from basel_app.bench.measure import machine
from basel_app.files import atomic_write_json

log = logging.getLogger("basel_app.bench")


def _add_settings(parser: argparse.ArgumentParser, settings_types: list[type]) -> None:
    seen: set[str] = set()
    for settings_type in settings_types:
        for field in dataclasses.fields(settings_type):
            if field.name in seen:
                continue
            seen.add(field.name)
            parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=type(field.default),
                                default=argparse.SUPPRESS, help=f"default {field.default}")


def run_one(name: str, overrides: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run sub-benchmark `name` with the settings in `overrides` it knows; print its table; write its JSON."""
    settings_type, run, render = SUB_BENCHMARKS[name]
    known = {f.name for f in dataclasses.fields(settings_type)}
    settings = settings_type(**{k: v for k, v in overrides.items() if k in known})
    result = {"machine": machine(), **run(settings)}
    atomic_write_json(out / f"{name}.json", result)
    print(render(result) + "\n", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m basel_app.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=[*SUB_BENCHMARKS, "all"])
    parser.add_argument("--out", type=Path, default=Path("bench_results"), help="where the JSON files go")
    _add_settings(parser, [settings for settings, _, _ in SUB_BENCHMARKS.values()])
    args = vars(parser.parse_args(argv))
    name, out = args.pop("benchmark"), args.pop("out")
    logging.basicConfig(level=logging.WARNING)
    for each in SUB_BENCHMARKS if name == "all" else [name]:
        run_one(each, args, out)


if __name__ == "__main__":
    main()
