"""Wall seconds per phase, measured as consecutive splits of one clock."""

from __future__ import annotations

from time import perf_counter


class PhaseClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = perf_counter()

    def split(self, phase: str) -> float:
        """Charge the time since the previous split to `phase` (added up if the phase recurs)."""
        now = perf_counter()
        elapsed, self._last = now - self._last, now
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + elapsed, 3)
        return elapsed
