"""The settings a run dir's checkpoints were made with: a resumed run must use the same ones.

Re-running with `hydra.run.dir=<dir>` resumes from `<dir>/checkpoints`. Resuming with other settings (another
compression ratio, other training data, another schedule) would go on training one run under another's plan
and report the mixture as the new settings' result. So every attempt records its settings in
`<dir>/run_settings.json`, and an attempt that finds checkpoints first compares its settings with those.
Settings that cannot change what is trained (where results and logs go, the cache, the evaluation, how often
checkpoints are written, the progress bar) may differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from basel_app.config.errors import ConfigError
from basel_app.files import atomic_write_json

SETTINGS_FILE = "run_settings.json"
RESULT_NEUTRAL = ("output_dir", "logger", "cache", "eval", "trainer.enable_progress_bar",
                  "trainer.checkpoint_every_n_steps")


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"method.compression_ratio": 2.0, ...}: the leaves of nested dicts under dotted keys, as overrides name them."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        leaves.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return leaves


def neutral(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in RESULT_NEUTRAL)


def check_and_record_settings(out: Path, checkpoints: Path, settings: dict[str, Any]) -> None:
    """Refuse (a ConfigError naming each changed setting) to resume run dir `out`'s `checkpoints` under other
    settings; then record `settings` as the ones they are made with."""
    now = json.loads(json.dumps(settings, default=str))  # as the file stores them: tuples as lists, paths as text
    recorded = out / SETTINGS_FILE
    resuming = checkpoints.is_dir() and any(checkpoints.iterdir())
    if resuming and recorded.is_file():
        before, after = flat(json.loads(recorded.read_text())), flat(now)
        changed = sorted(key for key in before.keys() | after.keys()
                         if not neutral(key) and before.get(key) != after.get(key))
        if changed:
            differences = "; ".join(f"{key}={before.get(key)!r} there, {after.get(key)!r} now" for key in changed)
            raise ConfigError(
                f"hydra.run.dir={out} holds checkpoints of a run with other settings ({differences}). Resume it "
                f"with its own settings ({recorded}), or give this run another hydra.run.dir"
            )
    atomic_write_json(recorded, now)
