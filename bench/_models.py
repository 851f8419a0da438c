"""Shared by the benchmarks: the ViT arguments of the default model config (conf/model/vit_tiny.yaml)."""

from __future__ import annotations

from omegaconf import OmegaConf

from vit_exp.config import CONFIG_DIR
from vit_exp.models.predictor import vit_arguments


def vit_args(name: str) -> dict:
    """The ViT constructor arguments of ``conf/model/<name>.yaml`` (``num_classes`` not included)."""
    model = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml"), resolve=False)
    return {k: v for k, v in vit_arguments(model).items() if k != "num_classes"}


def default_vit_args(num_classes: int = 10) -> dict:
    """``ViT(**default_vit_args())`` builds the model `python -m vit_exp.run` trains by default."""
    return vit_args("vit_tiny") | {"num_classes": num_classes}
