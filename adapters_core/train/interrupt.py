"""Ctrl-C during training: finish the current step, save, then exit (status 130).

The first SIGINT only sets a flag that the loop checks between optimizer steps, so the saved
adapter and state are never caught half-updated. A second SIGINT aborts at once.
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

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt: finishing this step, then saving the adapter and state (Ctrl-C again aborts)")

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class TrainingInterrupted(Exception):
    """Raised after the adapter and state were saved on Ctrl-C; the CLI exits with status 130."""

    def __init__(self, adapter: str, state: str | None) -> None:
        super().__init__(f"interrupted; saved {adapter}" + (f" and {state}" if state else ""))
        self.adapter = adapter
        self.state = state
