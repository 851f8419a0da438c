"""The console's progress bar (tqdm) on a terminal: epoch, step, loss, LR, img/s and the run's ETA on one
line, redrawn in place; log lines and warnings print above it. It writes to the console only, never
to a log file."""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, TextIO

BAR_FORMAT = "{desc}  {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"
SMOOTHING = 0.1  # img/s shown: an exponential average over steps (one step's is noisy)


def wants_bar(setting: bool | str, is_main: bool, stream: TextIO | None = None) -> bool:
    """``trainer.progress_bar``: true/false, or "auto": a bar when ``stream`` (stdout by default) is a
    terminal with a width (a pseudo-terminal without a size, as ``script`` in CI gives, shows no bar:
    lines there). Only the main worker shows one."""
    if not is_main or setting is False:
        return False
    if setting is True:
        return True
    stream = stream if stream is not None else sys.stdout
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):  # no file descriptor (a StringIO), or closed
        return False


class ProgressBar:
    """One bar for the whole run (``total_steps``), from step ``done`` of a resumed run."""

    def __init__(self, total_steps: int, file: TextIO | None = None, redraw_s: float = 0.1):
        self.total_steps = total_steps
        self.file = file
        self.redraw_s = redraw_s  # at most one redraw per this many seconds (a step may take 1 ms)
        self._bar = None
        self._images_per_s = math.nan
        self._restore: list[Callable[[], None]] = []

    def open(self, done: int) -> None:
        from tqdm import tqdm

        file = self.file if self.file is not None else sys.stdout
        self._bar = tqdm(
            total=self.total_steps,
            initial=done,
            file=file,
            bar_format=BAR_FORMAT,
            dynamic_ncols=True,
            mininterval=self.redraw_s,
            leave=False,
        )
        self._restore = _print_above(tqdm, file)

    def show(self, position: str, loss: float, lr: float, images_per_s: float) -> None:
        """One step done: ``position`` is e.g. "epoch 2/30 step 13/50" (drawn at most ~10 times/s)."""
        if not math.isnan(images_per_s):
            previous = self._images_per_s
            fresh = math.isnan(previous)
            self._images_per_s = images_per_s if fresh else previous + SMOOTHING * (images_per_s - previous)
        self._bar.set_description_str(
            f"{position}  loss {loss:.4f}  lr {lr:.3e}  {self._images_per_s:.0f} img/s", refresh=False
        )
        self._bar.update(1)

    def close(self) -> None:
        """Remove the bar and give the console back to the log lines as they were (idempotent)."""
        while self._restore:
            self._restore.pop()()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _print_above(tqdm, file: TextIO) -> list[Callable[[], None]]:
    """Make console log handlers (stdout, stderr, MLflow's stream) and ``warnings`` clear the bar on
    ``file``, write, and redraw it (tqdm's ``external_write_mode``); file handlers are left alone.
    Returns the undo steps."""
    undo = []
    loggers: list[Any] = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    handlers = {id(h): h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers}
    for handler in handlers.values():
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            undo.append(_wrap_emit(handler, tqdm, file))
    show = warnings.showwarning

    def show_above(*args, **kwargs):
        with tqdm.external_write_mode(file=file):
            show(*args, **kwargs)

    warnings.showwarning = show_above
    undo.append(lambda: setattr(warnings, "showwarning", show))
    return undo


def _wrap_emit(handler: logging.StreamHandler, tqdm, file: TextIO) -> Callable[[], None]:
    had_own = "emit" in vars(handler)
    emit = handler.emit

    def emit_above(record: logging.LogRecord) -> None:
        with tqdm.external_write_mode(file=file):
            emit(record)

    handler.emit = emit_above

    def undo() -> None:
        if had_own:
            handler.emit = emit
        else:
            del handler.emit

    return undo
