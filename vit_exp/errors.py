"""User-facing error types, the shared value check, and the CLI handler that prints failures in one line."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vit_exp.credentials import mask

F = TypeVar("F", bound=Callable)


class VitExpError(Exception):
    """A problem the user can fix; its message names the config key, file or parameter to fix."""


class ConfigError(VitExpError):
    """A config value is invalid (the message names the key, e.g. ``model.patch_size``)."""


class DataError(VitExpError):
    """A dataset root, split or label file is missing or unusable."""


class CheckpointError(VitExpError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


class RegistryError(VitExpError):
    """The tracking store or model registry cannot give what was asked for."""


class KernelBuildError(RuntimeError):
    """The fused CPU kernel library cannot be built here (``model.fused_kernels=auto`` falls back)."""


def positive_int(key: str, value: object) -> int:
    """``value`` when it is an integer >= 1, else a ConfigError naming ``key``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def first_line(message: str) -> str:
    """Return the first non-empty line of ``message`` (MindSpore errors span many lines)."""
    for line in str(message).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _chain(exc: BaseException):
    """``exc`` and the exceptions it wraps (Hydra's instantiate wraps ours in its own)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def user_message(exc: BaseException) -> str | None:
    """One-line message for errors the user can fix (ours and OmegaConf's), else None."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    for inner in _chain(exc):
        if isinstance(inner, VitExpError):
            return str(inner)
        if isinstance(inner, MissingMandatoryValue):
            key = getattr(inner, "full_key", None) or "a config key"
            return f"{key} is required: set it on the command line ({key}=...)"
        if isinstance(inner, OmegaConfBaseException):
            key = getattr(inner, "full_key", None)
            return f"config{f' key {key}' if key else ''}: {first_line(str(inner))}"
    return None


def _write_traceback(traceback_dir: Callable[[], Path | None] | None) -> str:
    folder = traceback_dir() if traceback_dir else None
    if folder is None:
        return ""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "traceback.txt"
    path.write_text(mask(traceback.format_exc()))
    return f" (full traceback: {path})"


def report_errors(traceback_dir: Callable[[], Path | None] | None = None) -> Callable[[F], F]:
    """Decorate a CLI task: print ``error: ...`` on one line and exit 1 instead of a traceback.

    Unexpected exceptions are summarised on one line too; their full traceback goes to
    ``<traceback_dir()>/traceback.txt`` when that directory is known.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr, flush=True)
                sys.exit(130)
            except Exception as exc:
                message = user_message(exc)
                if message is None:
                    summary = first_line(str(exc)) or "no message"
                    message = f"{type(exc).__name__}: {summary}{_write_traceback(traceback_dir)}"
                print(f"error: {mask(message)}", file=sys.stderr, flush=True)
                sys.exit(1)

        return wrapper  # type: ignore[return-value]

    return decorate
