"""Ctrl-C that waits for storage writes: an interrupt inside Optuna's ``tell`` escapes it as an
``UnboundLocalError`` (exit 1, a traceback) and can leave a journal half applied, so the Optuna
backend lets SIGINT through only while a trial computes."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any


class InterruptGate:
    """Ctrl-C stops a trial only while it computes (build, fine-tune, measure). One that lands
    while Optuna or the backend writes to storage waits until the write is done: an interrupt
    inside Optuna's ``tell`` escapes it as an ``UnboundLocalError`` and can leave a journal
    half applied. Installed only in the main thread over Python's default handler; elsewhere
    it changes nothing."""

    def __init__(self) -> None:
        self.open = False
        self.pending = False

    def _on_sigint(self, _signum: int, _frame: Any) -> None:
        if self.open:
            self.open = False
            raise KeyboardInterrupt
        self.pending = True

    def check(self) -> None:
        """Raise the interrupt that waited, if one did."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def opened(self):
        self.check()
        self.open = True
        try:
            yield
        finally:
            self.open = False
        self.check()

    @contextlib.contextmanager
    def closed(self):
        was, self.open = self.open, False
        try:
            yield
        finally:
            self.open = was
        if was:
            self.check()

    @contextlib.contextmanager
    def installed(self):
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield self
            return
        signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
