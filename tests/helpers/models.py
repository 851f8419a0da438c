"""Tiny ViTs for the tests: 32x32 images, patch 8, dim 32, 2 layers."""

from __future__ import annotations

import os
import platform
import shutil

import pytest

# Tests of the fused CPU kernels need a C++ compiler (vit_exp/models/kernels/build.py uses it);
# without one, model.fused_kernels=auto falls back to composed ops (tested separately).
requires_fused_kernels = pytest.mark.skipif(
    platform.system() != "Linux" or shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="no C++ compiler here: the fused CPU kernels cannot be built",
)

# The ViT the TINY_MODEL overrides build (exact GELU, as in conf/model/vit_tiny.yaml).
TINY_VIT_ARGS = dict(
    image_size=32, patch_size=8, embed_dim=32, num_layers=2, num_heads=2, mlp_dim=64, gelu_approximate=False
)
# The same ViT as command-line overrides, for the training CLI.
TINY_MODEL = [
    "model=vit_tiny",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.mlp_dim=64",
]


def tiny_vit(num_classes: int = 5, **overrides):
    """The TINY_VIT_ARGS ViT (with ``overrides``) with ``num_classes`` outputs, kernels planned for CPU."""
    from vit_exp.models.kernels.plan import plan_kernels
    from vit_exp.models.vit import ViT, ViTConfig

    config = ViTConfig(num_classes=num_classes, **(TINY_VIT_ARGS | overrides))
    return ViT(config, plan_kernels(config, "CPU"))


def _bf16_cpu() -> bool:
    from vit_exp.models.kernels.cpu import cpu_has_bf16

    return cpu_has_bf16()


# Tests of device.precision=bf16 need a CPU that multiplies bf16 natively (avx512_bf16 / amx_bf16)
# and the C++ compiler; elsewhere the fallback to fp32 is what is tested.
requires_bf16 = pytest.mark.skipif(
    not _bf16_cpu() or platform.system() != "Linux" or shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="this CPU has no native bf16 (avx512_bf16 / amx_bf16) or there is no C++ compiler",
)
