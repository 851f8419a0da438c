"""Preemption: SIGTERM (a cluster taking the node back) or Ctrl-C during training ends it cleanly.

The first signal (``vit_exp.stop``) lets the current step finish, saves a full-state checkpoint and
raises ``Preempted`` (the run ends KILLED); a second stops at once. Without a checkpoint within
``grace_s`` seconds, ``on_timeout()`` runs and the process exits 143, before the scheduler's SIGKILL.
A launcher's SIGUSR2 (submitit's requeue) gets the checkpoint saved first, then its handler runs.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from vit_exp.stop import REQUEST

log = logging.getLogger("vit_exp.train")


class Preempted(KeyboardInterrupt):
    """Training stopped on a signal after saving ``checkpoint`` at ``step``."""

    def __init__(self, checkpoint: Path, step: int):
        super().__init__(f"stopped at step {step}; checkpoint {checkpoint}")
        self.checkpoint = checkpoint
        self.step = step


class Preemption:
    """A training loop's stop on the stop request (``with preemption: ...``); ``save(run_context,
    epoch_done)`` returns the checkpoint's path, or None when the worker has nothing to save."""

    def __init__(
        self,
        grace_s: float,
        save: Callable[[object, bool], Path | None],
        on_timeout: Callable[[], None] = lambda: None,
    ):
        self.grace_s = grace_s
        self.save = save
        self.on_timeout = on_timeout
        self._timer: threading.Timer | None = None
        self.received: int | None = None  # the signal that asked to stop (kept after the loop ends)

    @property
    def requested(self) -> bool:
        return bool(REQUEST.signals)

    def __enter__(self) -> Preemption:
        REQUEST.listen(self._start_grace)
        return self

    def __exit__(self, *exc_info) -> None:
        REQUEST.listen(None)
        if self._timer is not None:
            self._timer.cancel()

    def _start_grace(self, signum: int) -> None:
        self.received = signum
        name = signal.Signals(signum).name
        log.warning("%s: saving a checkpoint after the current step (within %g s)", name, self.grace_s)
        self._timer = threading.Timer(self.grace_s, self._give_up)
        self._timer.daemon = True
        self._timer.start()

    def _give_up(self) -> None:
        log.error(
            "no checkpoint within trainer.preempt_grace_s=%g s (the step or validation in progress "
            "did not end); exiting: a resume continues from the last checkpoint written",
            self.grace_s,
        )
        try:
            self.on_timeout()
        finally:
            logging.shutdown()
            os._exit(143)

    def stop(self, run_context, epoch_done: bool) -> None:
        """Save the checkpoint and end training (the loop calls this once ``requested`` is set)."""
        path = self.save(run_context, epoch_done)
        if self._timer is not None:
            self._timer.cancel()
        step = int(run_context.original_args().cur_step_num)
        if path is None:  # a data-parallel worker that does not record: nothing to save
            raise KeyboardInterrupt(f"stopped at step {step}")
        if REQUEST.signals[0] == signal.SIGUSR2:  # handled only when a launcher had a handler
            try:  # the launcher requeues the job (and would exit): the run still ends KILLED
                REQUEST.launcher[signal.SIGUSR2](signal.SIGUSR2, None)
            except (SystemExit, Exception) as exc:
                log.info("the launcher's SIGUSR2 handler ended with %r", exc)
        raise Preempted(path, step)
