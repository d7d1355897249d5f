"""Every method on one model, one task, one size budget and one post-fine-tuning: the comparison a paper plots.

Each method runs as its own `python -m basel_app` process (exactly what a user runs), in its own run dir
under `--out`; the table is read back from each `metrics.json`.

    .venv/bin/python benchmarks/compare_methods.py --out /tmp/compare -- method.compression_ratio=1.1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["basel", "bsi", "svd", "fwsvd", "svd_llm", "asvd"]
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="one run dir per method is made below it")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides shared by every method (after --)")
    args = parser.parse_args()

    rows = []
    for method in args.methods:
        run_dir = args.out / method
        command = [sys.executable, "-m", "basel_app", f"method={method}", f"hydra.run.dir={run_dir}", "logger=csv",
                   *args.overrides]
        print("$", " ".join(command[1:]), flush=True)
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rows.append((method, metrics, time.perf_counter() - start))

    print("\n| method | parameters | compression | answer loss before | after | wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for method, m, seconds in rows:
        before, after = m["eval"]["before"]["answer_loss"], m["eval"]["after"]["answer_loss"]
        print(f"| {method} | {m['params_compressed']:,} | {m['compression_ratio']:.3f}x | {before:.3f} | {after:.3f} "
              f"| {seconds:.0f} |")


if __name__ == "__main__":
    main()
