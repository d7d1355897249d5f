"""SIGTERM — what SLURM and Kubernetes send before they kill a job — as a request to stop resumably.

Outside training the handler raises `Preempted` at once: what was being done there (evaluation, a
decomposition, a save) is redone on resume, and every write is complete or absent. Inside a `deferred()`
block (a `Trainer.fit`) it only records the request; the stage's checkpoint callback then saves a
checkpoint after the current optimizer step and raises `Preempted` itself. The command lines turn
`Preempted` into exit status 75, and re-running on the same output dir continues the run.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from basel_app.config.errors import Preempted


class Preemption:
    def __init__(self) -> None:
        self.requested = False
        self._deferring = False

    @contextmanager
    def installed(self) -> Iterator[Preemption]:
        """Handle SIGTERM within the block (from the main thread only, where Python delivers signals)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Within the block SIGTERM is only recorded; a request still pending at its end raises Preempted."""
        self._deferring = True
        try:
            yield
        except SystemExit as exit_:  # Lightning turns SIGTERM into SIGTERMException, a SystemExit
            if self.requested:
                raise Preempted("pre-empted by SIGTERM during training; re-run on the same output dir to continue "
                                "from its last checkpoint") from exit_
            raise
        finally:
            self._deferring = False
        if self.requested:
            raise Preempted("pre-empted by SIGTERM as training ended; re-run on the same output dir to continue")

    def reclaim(self) -> None:
        """Make this SIGTERM's only handler again, over one installed since `installed()`: Lightning's, which
        under several processes runs a collective inside the handler, so ranks that get the signal at different
        moments call different collectives and wait for ever. The stage's checkpoint callback agrees on the
        stop across ranks instead."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        if not self._deferring:
            raise Preempted("pre-empted by SIGTERM outside training; re-run on the same output dir to continue "
                            "from the last stage boundary or checkpoint")
