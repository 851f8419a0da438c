"""This machine's CPU from /proc/cpuinfo (``-march=native`` builds and native bf16 depend on it)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpuinfo() -> tuple[str, ...] | None:
    try:
        return tuple(Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return None


def cpu_signature() -> str:
    """The CPU model and feature flags (what a ``-march=native`` build depends on)."""
    lines = _cpuinfo()
    if lines is None:
        return platform.processor()
    return "\n".join(dict.fromkeys(line for line in lines if line.startswith(("model name", "flags"))))


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX)."""
    flags = next((line for line in _cpuinfo() or () if line.startswith("flags")), "")
    return not set(flags.partition(":")[2].split()).isdisjoint(BF16_CPU_FLAGS)
