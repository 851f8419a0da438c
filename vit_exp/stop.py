"""SIGTERM, Ctrl-C and a launcher's SIGUSR2 in one place: the process's stop ``REQUEST``.

Only the CLI installs the handlers. A signal ends the command as Ctrl-C does (or runs a launcher's
handler), but while a training loop listens the first one only sets the request (``train.preemption``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


class StopRequest:
    """``signals``: those received since a training loop started listening (the first one asks it to stop)."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.listener: Callable[[int], None] | None = None  # gets the first signal (the grace timer)
        self.launcher: dict[int, Callable] = {}  # the handlers set before ours (a launcher's)
        self._held: list[int] | None = None  # inside ``deferred``: the signals it holds

    def install(self) -> None:
        """Set the handlers, once (from the main thread: Python handles signals there)."""
        main = threading.current_thread() is threading.main_thread()
        if not main or signal.getsignal(signal.SIGTERM) == self._receive:
            return
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}
        self.launcher = {
            s: h for s, h in handlers.items() if callable(h) and h is not signal.default_int_handler
        }
        for sig in handlers:
            if sig != signal.SIGUSR2 or sig in self.launcher:  # else SIGUSR2 still ends the process
                signal.signal(sig, self._receive)

    def listen(self, listener: Callable[[int], None] | None) -> None:
        """A new request, whose first signal ``listener(signum)`` gets (None: nobody listens)."""
        self.signals, self.listener = [], listener

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold signals until the block ends, then act on the first (a record is stored whole)."""
        outermost = self._held is None and threading.current_thread() is threading.main_thread()
        if outermost:
            self._held = []
        try:
            yield
        finally:
            if outermost:
                held, self._held = self._held, None
                if held:
                    self._act(held[0])

    def _receive(self, signum: int, frame: object) -> None:
        self.signals.append(signum)
        if self._held is not None:
            self._held.append(signum)
        else:
            self._act(signum)

    def _act(self, signum: int) -> None:
        if self.listener is not None and len(self.signals) == 1:
            self.listener(signum)
        elif self.listener is None and signum in self.launcher:
            self.launcher[signum](signum, None)
        else:  # outside training, or a second signal: stop at once
            raise KeyboardInterrupt(f"signal {signum}")


REQUEST = StopRequest()
install, deferred = REQUEST.install, REQUEST.deferred
