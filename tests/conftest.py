"""Shared fixtures: real Hydra composition, generated image folders and ImageNet ``meta.mat`` files."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from vit_exp.config import CONFIG_DIR, PROJECT_ROOT, register_resolvers

register_resolvers()

# Tests of the fused CPU kernels need a C++ compiler (vit_exp/models/fused.py builds them with it);
# without one, model.fused_kernels=auto falls back to composed ops (tested separately).
requires_fused_kernels = pytest.mark.skipif(
    platform.system() != "Linux" or shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="no C++ compiler here: the fused CPU kernels cannot be built",
)

# Tiny ViT overrides shared by the training tests: 32x32 images, patch 8, dim 32, 2 layers.
# The ViT those overrides build (exact GELU, as in conf/model/vit_tiny.yaml), for direct MindSpore checks.
TINY_VIT_ARGS = dict(
    image_size=32, patch_size=8, embed_dim=32, num_layers=2, num_heads=2, mlp_dim=64, gelu_approximate=False
)
TINY_MODEL = [
    "model=vit_tiny",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.mlp_dim=64",
]


@pytest.fixture(autouse=True)
def tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test (and every CLI it starts) records into its own SQLite MLflow store."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return uri


@pytest.fixture
def compose(tmp_path: Path) -> Callable[..., object]:
    """Compose ``conf/config.yaml`` with overrides; paths point into the test's temp dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def _compose(overrides: Sequence[str] = (), config_name: str = "config"):
        GlobalHydra.instance().clear()
        base = [
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.output_dir={tmp_path / 'out'}",
        ]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=[*base, *overrides])
        GlobalHydra.instance().clear()
        return cfg

    return _compose


def _class_colour(index: int, num_classes: int) -> np.ndarray:
    hue = index / max(num_classes, 1)
    return np.array([255 * hue, 255 * (1 - hue), 128 + 127 * np.sin(6.28 * hue)], dtype=np.float32)


def write_image_folder(
    root: Path,
    classes: Sequence[str],
    per_class: int = 8,
    size: int = 16,
    splits: Sequence[str] = ("train", "val"),
    seed: int = 0,
    fmt: str = "png",
) -> Path:
    """Write ``root/<split>/<class>/*.<fmt>``: each class a distinct colour plus noise (learnable)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = _class_colour(index, len(classes)) + rng.normal(0, 20, (size, size, 3))
                image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="RGB")
                image.save(folder / f"{name}_{i}.{fmt}")
    return root


def write_meta_mat(
    path: Path, leaves: Sequence[tuple[str, str]], non_leaves: Sequence[tuple[str, str]] = ()
) -> Path:
    """Write an ImageNet devkit-style ``meta.mat`` whose ``synsets`` hold ``leaves`` (and parents)."""
    import scipy.io

    rows = [(wnid, words, 0) for wnid, words in leaves] + [(wnid, words, 3) for wnid, words in non_leaves]
    dtype = [
        ("ILSVRC2012_ID", "O"),
        ("WNID", "O"),
        ("words", "O"),
        ("gloss", "O"),
        ("num_children", "O"),
        ("children", "O"),
        ("wordnet_height", "O"),
        ("num_train_images", "O"),
    ]
    synsets = np.zeros((len(rows), 1), dtype=dtype)
    for i, (wnid, words, children) in enumerate(rows):
        synsets[i, 0] = (i + 1, wnid, words, "a gloss", children, np.zeros((0,)), 0, 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"synsets": synsets})
    return path


def run_cli(
    module: str, *args: str, cwd: Path | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` in a fresh process, as a user would."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", GLOG_v="3")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=str(cwd or PROJECT_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate a server started by a test, killing it if it does not exit in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Wait until ``url`` answers 200; fail the test with the server's log if it exits or times out."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    process.terminate()
    pytest.fail(f"{url} did not answer within {timeout:.0f}s: {log.read_text()[-3000:]}")
