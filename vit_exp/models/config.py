"""The ViT's architecture as a checked dataclass (no MindSpore import: a bad model config fails fast)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated

from vit_exp.errors import SETUP, ConfigError, check_field_types, positive_int

PATCH_EMBED_IMPLS = ("matmul", "conv")
PRECISIONS = ("fp32", "bf16", "auto")


def check_precision(precision: str) -> str:
    """``precision`` lower-cased, or a ConfigError naming ``device.precision``."""
    value = str(precision).lower()
    if value not in PRECISIONS:
        raise ConfigError(f"device.precision must be one of {PRECISIONS}, got {precision!r}")
    return value


@dataclass(frozen=True)
class ViTConfig:
    """The ``model.*`` keys that shape the network (defaults: ViT-B/16 at 224). Dropout is given as
    keep-probabilities (1.0 = off), stochastic depth as ``drop_path_rate`` (0 = off, the last block's rate);
    ``patch_embed`` and ``fused_kernels`` change how, not what, is computed;
    ``precision`` (from ``device.precision``) is what the dense layers multiply in."""

    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    input_channels: int = 3
    keep_prob: float = 1.0
    attention_keep_prob: float = 1.0
    drop_path_rate: float = 0.0
    gelu_approximate: bool = True
    layer_norm_eps: float = 1e-7
    patch_embed: Annotated[str, SETUP] = "matmul"
    fused_kernels: Annotated[str, SETUP] = "auto"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_field_types(self, "model")
        for key in ("image_size", "patch_size", "embed_dim", "num_heads", "num_layers", "mlp_dim"):
            positive_int(f"model.{key}", getattr(self, key))
        positive_int("model.num_classes", self.num_classes)
        for key, divisor in (("image_size", "patch_size"), ("embed_dim", "num_heads")):
            value, by = getattr(self, key), getattr(self, divisor)
            if value % by:
                raise ConfigError(f"model.{key}={value} is not divisible by model.{divisor}={by}")
        for key in ("keep_prob", "attention_keep_prob"):
            value = getattr(self, key)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"model.{key} must be in (0, 1] (1.0 = no dropout), got {value}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"model.drop_path_rate must be in [0, 1) (0 = off), got {self.drop_path_rate}")
        check_precision(self.precision)
        if self.patch_embed not in PATCH_EMBED_IMPLS:
            raise ConfigError(
                f"model.patch_embed must be one of {PATCH_EMBED_IMPLS}, got {self.patch_embed!r}"
            )

    @classmethod
    def from_mapping(cls, model_config: Mapping, **overrides) -> ViTConfig:
        """The ViTConfig of a ``model`` config section (keys that are not architecture are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in model_config.items() if k in names} | overrides)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def drop_path_rates(self) -> list[float]:
        """Block i's stochastic-depth rate: ``drop_path_rate * i / (num_layers - 1)``, as timm's
        ``linspace(0, drop_path_rate, num_layers)`` (the first block never drops, the last at the rate)."""
        last = max(self.num_layers - 1, 1)
        return [self.drop_path_rate * i / last for i in range(self.num_layers)]
