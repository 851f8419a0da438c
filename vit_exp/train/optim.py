"""Optimizers (adam, adamw, sgd with momentum) over a per-step learning rate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vit_exp.errors import ConfigError, check_field_types

OPTIMIZERS = ("adam", "adamw", "sgd")
_NO_DECAY_NAMES = ("cls", "pos_embedding")


def _param_groups(params: Sequence, weight_decay: float) -> list:
    """Weight decay on matrices only; biases, norms, class token and position embedding are exempt."""
    if weight_decay == 0:
        return list(params)
    decays = [p.ndim > 1 and p.name.split(".")[-1] not in _NO_DECAY_NAMES for p in params]
    decay = [p for p, d in zip(params, decays, strict=True) if d]
    keep = [p for p, d in zip(params, decays, strict=True) if not d]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    return groups


@dataclass(frozen=True)
class OptimizerSettings:
    """The ``optim`` config group; types only: the values are conf/optim/<name>.yaml's, and a constant
    only another optimizer uses is None."""

    name: str
    lr: float
    weight_decay: float
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None

    def __post_init__(self) -> None:
        check_field_types(self, "optim")
        needed = ("momentum", "nesterov") if self.name == "sgd" else ("beta1", "beta2", "eps")
        for key in needed:
            if getattr(self, key) is None:
                raise ConfigError(f"optim.{key} is required with optim.name={self.name}")
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name must be one of {OPTIMIZERS}, got {self.name!r}")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be a number > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be a number >= 0, got {self.weight_decay!r}")

    def learning_rates(self, schedule: np.ndarray) -> np.ndarray:
        """Per-step learning rates: ``lr`` times the schedule's per-step factors (float32)."""
        return np.asarray(schedule, dtype=np.float32) * np.float32(self.lr)

    def build(self, params: Sequence, learning_rates: np.ndarray):
        """The MindSpore optimizer over ``params``, stepping through ``learning_rates``."""
        from mindspore import Tensor, nn

        lr = Tensor(np.asarray(learning_rates, dtype=np.float32))
        groups = _param_groups(list(params), self.weight_decay)
        betas = dict(beta1=self.beta1, beta2=self.beta2, eps=self.eps)
        if self.name == "adam":
            return nn.Adam(groups, learning_rate=lr, **betas)
        if self.name == "adamw":
            return nn.AdamWeightDecay(groups, learning_rate=lr, **betas)
        return nn.Momentum(groups, learning_rate=lr, momentum=self.momentum, use_nesterov=self.nesterov)
