"""Compile vit-exp's C++ CPU kernels into shared libraries, once per source, compiler and CPU.

Libraries go to ``$VIT_EXP_KERNEL_CACHE`` (default ``~/.cache/vit_exp/kernels``), named by a hash
of what went into them, and are written atomically, so concurrent builders (sweeps) never see a
partial file. Failures are :class:`KernelBuildError` saying why (no compiler, not Linux, ...).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from vit_exp.errors import KernelBuildError

log = logging.getLogger(__name__)

COMPILE_FLAGS = (
    "-O3",
    "-march=native",
    "-fno-trapping-math",
    "-fopenmp-simd",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-pthread",
)


def kernel_cache_dir() -> Path:
    """Where compiled kernel libraries are kept (``VIT_EXP_KERNEL_CACHE`` or ``~/.cache/vit_exp/kernels``)."""
    return Path(os.environ.get("VIT_EXP_KERNEL_CACHE", "~/.cache/vit_exp/kernels")).expanduser()


def cpu_signature() -> str:
    """The CPU model and feature flags (``-march=native`` output is only valid on a matching CPU)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(wanted))


def build_library(source: Path, link_args: tuple[str, ...] = ()) -> Path:
    """Compile ``source`` (plus ``link_args``, e.g. a library to link) unless the cache has it."""
    if platform.system() != "Linux":
        raise KernelBuildError(f"MindSpore aot kernels need Linux, this is {platform.system()}")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise KernelBuildError("no C++ compiler found (install g++ or set CXX)")
    recipe = " ".join((*COMPILE_FLAGS, *link_args, compiler, cpu_signature()))
    headers = b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))  # its #includes
    key = hashlib.sha256(source.read_bytes() + headers + recipe.encode()).hexdigest()[:16]
    target = kernel_cache_dir() / f"vit_exp_{source.stem}_{key}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            result = subprocess.run(
                [compiler, *COMPILE_FLAGS, "-o", str(built), str(source), *link_args],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                first = (result.stderr.strip().splitlines() or ["(no output)"])[0]
                raise KernelBuildError(f"compiling {source.name} failed: {first}")
            os.replace(built, target)  # atomic: concurrent builders never see a partial file
    except OSError as exc:
        raise KernelBuildError(f"cannot write the kernel cache {kernel_cache_dir()}: {exc}") from exc
    log.info("built CPU kernels: %s", target)
    return target


class KernelLibrary:
    """One kernel library, built on first use; the outcome (a path or why not) is remembered for
    the process. ``link_args`` is called at build time (e.g. to find a library to link)."""

    def __init__(self, source: Path, link_args: Callable[[], tuple[str, ...]] = tuple):
        self.source = source
        self.link_args = link_args
        self._outcome = functools.cache(self._build)

    def _build(self) -> Path | KernelBuildError:
        try:
            return build_library(self.source, self.link_args())
        except KernelBuildError as exc:
            return exc

    def path(self) -> Path:
        """The compiled library; KernelBuildError says why it cannot be built."""
        outcome = self._outcome()
        if isinstance(outcome, KernelBuildError):
            raise outcome
        return outcome

    def forget(self) -> None:
        """Forget this process's outcome (the next :meth:`path` looks again)."""
        self._outcome.cache_clear()
