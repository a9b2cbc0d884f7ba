"""Delayed actions for the emulated controllers, all cancelled when the sandbox stops.

Each action runs once on its own daemon thread; an exception is logged, never raised, because a
controller that dies silently would leave the sandbox in a state no real cluster gets into.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("sandbox.timers")


class Timers:
    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._pending: set[threading.Timer] = set()
        self._stopping = threading.Event()

    def later(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` after ``delay`` seconds unless the sandbox stops first."""

        def run() -> None:
            with self._lock:
                self._pending.discard(timer)
            if self._stopping.is_set():
                return
            try:
                action()
            except Exception:
                log.exception("%s: a delayed action failed", self._name)

        timer = threading.Timer(max(0.0, delay), run)
        timer.daemon = True
        with self._lock:
            if self._stopping.is_set():
                return
            self._pending.add(timer)
        timer.start()

    def cancel_all(self) -> None:
        self._stopping.set()
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        for timer in pending:
            timer.cancel()
