"""User-facing error types, the shared value check, and one-line messages for failures."""

from __future__ import annotations

import dataclasses
import tempfile
import traceback
import types
import typing
from collections.abc import Sequence
from pathlib import Path

from vit_exp.credentials import mask


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


class ExportError(VitExpError):
    """A model cannot be exported, or its export does not compute what the model does."""


class ReproductionError(VitExpError):
    """A recorded run cannot be reproduced here (other code, a record without what the check needs)."""


class KernelBuildError(RuntimeError):
    """The fused CPU kernel library cannot be built here (``model.fused_kernels=auto`` falls back)."""


def positive_int(key: str, value: object) -> int:
    """``value`` when it is an integer >= 1, else a ConfigError naming ``key``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def first_line(message: str) -> str:
    """Return the first non-empty line of ``message`` (MindSpore errors span many lines)."""
    return next((line.strip() for line in str(message).splitlines() if line.strip()), "")


def error_line(exc: BaseException, last: bool = False) -> str:
    """One line of ``exc`` for a message, credentials masked: its first (with the next when it ends
    with ':', as Hydra's instantiate's), or its ``last``; the type's name when it has none."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if last:
        return mask(lines[-1])
    return mask(" ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0])


def error_chain(exc: BaseException | None):
    """``exc`` and the exceptions it wraps (Hydra's instantiate wraps ours in its own)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def user_message(exc: BaseException) -> str | None:
    """One-line message for errors the user can fix (ours and OmegaConf's), else None."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    for inner in error_chain(exc):
        if isinstance(inner, VitExpError):
            return str(inner)
        if isinstance(inner, MissingMandatoryValue):
            key = getattr(inner, "full_key", None) or "a config key"
            return f"{key} is required: set it on the command line ({key}=...)"
        if isinstance(inner, OmegaConfBaseException):
            key = getattr(inner, "full_key", None)
            return f"config{f' key {key}' if key else ''}: {first_line(str(inner))}"
    return None


def failure_message(exc: BaseException, traceback_dir: Path | None = None) -> str:
    """One masked line for a failure: the user's error as is, else a summary (the full traceback goes
    to ``traceback_dir/traceback.txt`` when given)."""
    message = user_message(exc)
    if message is None:
        message = f"{type(exc).__name__}: {first_line(str(exc)) or 'no message'}"
        if traceback_dir is not None:
            traceback_dir.mkdir(parents=True, exist_ok=True)
            path = traceback_dir / "traceback.txt"
            path.write_text(mask("".join(traceback.format_exception(exc))))
            message += f" (full traceback: {path})"
    return mask(message)


# A setting that does not change what a run computes (where things are, how often it prints or saves):
# a resume does not compare it. Declared with the setting: ``keep_checkpoints: Annotated[int, NOT_COMPARED]``.
NOT_COMPARED = "vit_exp: not compared by resume"
# A setting a resume compares that is still not a hyperparameter (where the splits are, how the data is
# read, which kernels compute the same maths): kept in the run's config artifact, not logged as a param.
SETUP = "vit_exp: setup, not a hyperparameter"


def not_compared(target) -> set[str]:
    """The ``NOT_COMPARED`` settings of ``target``, a settings class or a function returning one."""
    return declared(target, NOT_COMPARED)


def declared(target, marker: str) -> set[str]:
    """The settings of ``target`` (a settings class, or a function returning one) marked ``marker``."""
    hints = typing.get_type_hints(target, include_extras=True)
    names = {name for name, hint in hints.items() if marker in getattr(hint, "__metadata__", ())}
    built = hints.get("return")
    return names | (declared(built, marker) if isinstance(built, type) else set())


def check_field_types(settings, group: str) -> None:
    """Raise a ConfigError naming ``<group>.<field>`` for the first field not of its annotated type."""
    hints = typing.get_type_hints(type(settings))
    for field in dataclasses.fields(settings):
        value, hint = getattr(settings, field.name), hints[field.name]
        if not _fits(value, hint):
            raise ConfigError(f"{group}.{field.name} must be {_describe(hint)}, got {value!r}")


def _fits(value, hint) -> bool:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    if hint in (str, Path):
        return isinstance(value, (str, Path))
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != len(args):
            return False
        return all(_fits(item, arg) for item, arg in zip(value, args, strict=True))
    return True


def _describe(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arg) for arg in args))
    if typing.get_origin(hint) is tuple:
        return f"a list of {len(args)} {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number"}
    return names.get(hint, "a string" if hint in (str, Path) else str(hint))


def writable_directory(key: str, path: str | Path) -> Path:
    """``path`` as a directory this process can write into (created if needed); ConfigError naming ``key``."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise ConfigError(f"{key}={folder} is not a writable directory ({exc.strerror or exc})") from None
    return folder
