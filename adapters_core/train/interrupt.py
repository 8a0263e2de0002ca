"""Ctrl-C or SIGTERM during training: finish the current step, save, then exit (130 / 143).

The first SIGINT or SIGTERM (what job schedulers and ``docker stop`` send) only sets a flag
that the loop checks between optimizer steps, so the saved adapter and state are never caught
half-updated. A second signal aborts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)


class GracefulInterrupt:
    """Context manager; ``requested`` becomes True after the first Ctrl-C."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_number = signum
        name = signal.Signals(signum).name
        log.warning("%s: finishing this step, then saving the adapter and state (a second signal aborts)", name)

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}


class TrainingInterrupted(Exception):
    """Raised after the adapter and state were saved on a signal; the CLI exits with status
    130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, adapter: str, state: str | None, signal_number: int = signal.SIGINT) -> None:
        what = "terminated" if signal_number == signal.SIGTERM else "interrupted"
        super().__init__(f"{what}; saved {adapter}" + (f" and {state}" if state else ""))
        self.adapter = adapter
        self.state = state
        self.exit_code = 128 + int(signal_number)
