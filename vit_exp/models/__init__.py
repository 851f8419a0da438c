"""ViT model and checkpoint loading (plain MindSpore; no Hydra or MLflow here)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def build_vit(
    *,
    name: str = "vit",
    num_classes: int,
    pretrained: str | None = None,
    pretrained_name_map: str = "auto",
    checkpoint_cache_dir: str | Path = "~/.cache/vit_exp/checkpoints",
    **vit_args,
):
    """Build a ViT from config keys and, if ``pretrained`` is a path or URL, load its weights.

    ``vit_args`` are the :class:`vit_exp.models.vit.ViT` arguments (``image_size``, ``patch_size``,
    ``embed_dim``, ``num_layers``, ``num_heads``, ``mlp_dim``, ...). ``name`` is only a label.
    """
    from vit_exp.models.vit import ViT

    net = ViT(num_classes=num_classes, **vit_args)
    if pretrained:
        from vit_exp.models.checkpoint import load_pretrained

        report = load_pretrained(net, pretrained, checkpoint_cache_dir, pretrained_name_map)
        log.info("model %s: loaded %d tensors from %s", name, len(report.loaded), report.path)
    return net
