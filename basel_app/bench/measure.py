"""How every sub-benchmark measures: alternating repeats after warm-up, median with spread, peak memory,
and the machine and versions the numbers came from.

Variants are timed round-robin (a, b, c, a, b, c, ...) in one process, so load from other processes on a
shared machine falls on all of them alike and their *ratios* stay meaningful when absolute times do not.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from basel_app.allocator import allocator_in_use, release_free_memory


def summary(samples: list[float]) -> dict[str, Any]:
    """Median and spread (min, max) of the timed repeats, and the repeats themselves."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": samples}


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a block above what was held when it began, in bytes.

    On a GPU it is the allocator's peak (`torch.cuda.max_memory_allocated`); on the CPU the process's
    resident size, sampled every `interval_s` by a thread (Linux `/proc`), after freed heap pages were given
    back to the OS; a peak shorter than the interval can be missed, so read it to a few MB.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.002) -> None:
        self.device, self.interval_s, self.peak = device, interval_s, 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        release_free_memory()
        self._base = self._highest = _resident_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._highest = max(self._highest, _resident_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self._highest, _resident_bytes()) - self._base


def alternate(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int,
              device: torch.device = torch.device("cpu")) -> dict[str, dict[str, Any]]:
    """Each variant called `warmup` times untimed, then `repeats` timed rounds in alternation.

    Returns per variant the seconds `summary`, the peak memory of its timed calls (the largest over the
    repeats) and the last call's return value (`result`), for the caller to compare outputs.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, int] = dict.fromkeys(variants, 0)
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in variants.items():
            with PeakMemory(device) as memory:
                start = time.perf_counter()
                results[name] = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], memory.peak)
    return {name: {"seconds": summary(seconds[name]), "peak_bytes": peaks[name], "result": results[name]}
            for name in variants}


def weights_only(model: nn.Module, batch: int, steps: int, dtype: torch.dtype) -> tuple[Callable[[], None], int]:
    """A call making `steps` rounds of one `batch`-row product with each distinct linear weight of `model`, in
    `dtype`, and nothing else, and the bytes of those weights: the floor under a decode step of `batch` rows,
    whatever the model does around its linears."""
    weights = list({id(m.weight): m.weight.detach().to(dtype) for m in model.modules() if isinstance(m, nn.Linear)}
                   .values())
    inputs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=dtype) for w in weights}

    @torch.no_grad()
    def products() -> None:
        for _ in range(steps):
            for weight in weights:
                torch.nn.functional.linear(inputs[weight.shape[1]], weight)
    return products, sum(w.numel() * w.element_size() for w in weights)


def machine() -> dict[str, Any]:
    """Where the numbers came from: CPU, threads, load, accelerator, versions."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            lines = info.read().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    except OSError:
        flags = []
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "bf16_flags": sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile")),
        "torch_threads": torch.get_num_threads(),
        "allocator": allocator_in_use(),
        "load_average": os.getloadavg(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (numbers right-aligned)."""
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def autocast(bf16: bool) -> torch.autocast:
    """The forward context of a `bf16-mixed` run (CPU bf16 autocast) when `bf16`, else a disabled one."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
