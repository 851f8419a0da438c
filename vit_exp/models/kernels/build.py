"""Compile vit-exp's C++ CPU kernels into shared libraries, once per source, compiler and CPU.
Failures are :class:`KernelBuildError` saying why. The sources sit next to this module so that a
registered version's copy of the package builds them too (from its zip archive: through the cache)."""

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
from vit_exp.models.kernels.cpu import cpu_signature

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


def build_library(source: Path, link_args: tuple[str, ...] = ()) -> Path:
    """Compile ``source`` (plus ``link_args``, e.g. a library to link) unless the cache has it."""
    if platform.system() != "Linux":
        raise KernelBuildError(f"MindSpore aot kernels need Linux, this is {platform.system()}")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise KernelBuildError("no C++ compiler found (install g++ or set CXX)")
    source = readable_source(source)
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


def readable_source(source: Path) -> Path:
    """``source`` as a file a compiler can open: this package imported from a zip (a registered
    version's code archive) has its C++ sources written to the kernel cache once, headers beside."""
    if source.is_file():
        return source
    from importlib.resources import files

    texts = {f.name: f.read_bytes() for f in files(__package__).iterdir() if f.name.endswith((".cc", ".h"))}
    if source.name not in texts:
        raise KernelBuildError(f"the kernel source {source.name} is missing from this vit_exp")
    digest = hashlib.sha256(b"".join(n.encode() + texts[n] for n in sorted(texts))).hexdigest()[:16]
    folder = kernel_cache_dir() / f"sources_{digest}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            if not (folder / name).is_file():
                partial = folder / f".{name}.{os.getpid()}"
                partial.write_bytes(text)
                os.replace(partial, folder / name)  # atomic, as the libraries
    except OSError as exc:
        raise KernelBuildError(f"cannot write the kernel cache {kernel_cache_dir()}: {exc}") from exc
    return folder / source.name


class KernelLibrary:
    """One kernel library, built on first use; the outcome (a path or why not) is kept for the process.
    ``link_args`` is called at build time."""

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
        self._outcome.cache_clear()


def _link_onednn() -> tuple[str, ...]:
    """Link args for the oneDNN library inside the MindSpore wheel (``mindspore/lib/libdnnl.so.3``)."""
    import mindspore

    onednn = Path(mindspore.__file__).parent / "lib" / "libdnnl.so.3"
    if not onednn.exists():
        raise KernelBuildError(f"this MindSpore has no oneDNN library ({onednn} is missing)")
    return (str(onednn), f"-Wl,-rpath,{onednn.parent}")


CPU_KERNELS = KernelLibrary(Path(__file__).with_name("cpu_kernels.cc"))  # fused GELU, LayerNorm
ONEDNN_KERNELS = KernelLibrary(Path(__file__).with_name("onednn_kernels.cc"), _link_onednn)  # dense/attention
