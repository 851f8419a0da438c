"""ViT model and checkpoint loading (plain MindSpore; no Hydra or MLflow here)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from vit_exp.errors import NOT_COMPARED, SETUP

log = logging.getLogger(__name__)


def build_vit(
    *,
    name: str = "vit",
    num_classes: int,
    pretrained: str | None = None,
    pretrained_name_map: Annotated[str, SETUP] = "auto",
    checkpoint_cache_dir: Annotated[str | Path, NOT_COMPARED] = "~/.cache/vit_exp/checkpoints",
    **architecture,
):
    """Build a ViT from the ``model`` config keys (``architecture``: the ``ViTConfig`` fields; ``name``
    only a label), loading ``pretrained`` (a path or URL) when given."""
    from vit_exp.models.kernels.plan import current_device_target, plan_kernels
    from vit_exp.models.vit import ViT, ViTConfig

    config = ViTConfig(num_classes=num_classes, **architecture)
    net = ViT(config, plan_kernels(config, current_device_target()))
    if pretrained:
        from vit_exp.models.checkpoint import load_pretrained

        report = load_pretrained(net, pretrained, checkpoint_cache_dir, pretrained_name_map)
        log.info("model %s: loaded %d tensors from %s", name, len(report.loaded), report.path)
    return net
