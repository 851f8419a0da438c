"""Shared by the benchmarks: the ViT arguments of the default model config (conf/model/vit_tiny.yaml)."""

from __future__ import annotations

from omegaconf import OmegaConf

from vit_exp.config import CONFIG_DIR
from vit_exp.models.predictor import vit_arguments


def default_vit_args(num_classes: int = 10) -> dict:
    """``ViT(**default_vit_args())`` builds the model `python -m vit_exp.run` trains by default."""
    model = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / "vit_tiny.yaml"), resolve=False)
    return vit_arguments(model) | {"num_classes": num_classes}
