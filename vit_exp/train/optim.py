"""Optimizers (adam, adamw, sgd with momentum) over a per-step LR schedule."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vit_exp.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")
_NO_DECAY_NAMES = ("cls", "pos_embedding")


def _param_groups(params: Sequence, weight_decay: float) -> list:
    """Weight decay on matrices only; biases, norms, class token and position embedding are exempt."""
    if weight_decay == 0:
        return list(params)
    decay = [p for p in params if p.ndim > 1 and p.name.split(".")[-1] not in _NO_DECAY_NAMES]
    keep = [p for p in params if not (p.ndim > 1 and p.name.split(".")[-1] not in _NO_DECAY_NAMES)]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    return groups


def build_optimizer(
    params: Sequence,
    lr_factors: np.ndarray,
    *,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = False,
):
    """Build optimizer ``name`` with a per-step learning rate ``lr * lr_factors`` (kept as ``.lr_values``)."""
    from mindspore import Tensor, nn

    if name not in OPTIMIZERS:
        raise ConfigError(f"optim.name must be one of {OPTIMIZERS}, got {name!r}")
    if not lr > 0:
        raise ConfigError(f"optim.lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {weight_decay}")
    lr_values = np.asarray(lr_factors, dtype=np.float32) * np.float32(lr)
    schedule = Tensor(lr_values)
    groups = _param_groups(list(params), weight_decay)
    if name == "adam":
        optimizer = nn.Adam(groups, learning_rate=schedule, beta1=beta1, beta2=beta2, eps=eps)
    elif name == "adamw":
        optimizer = nn.AdamWeightDecay(groups, learning_rate=schedule, beta1=beta1, beta2=beta2, eps=eps)
    else:
        optimizer = nn.Momentum(groups, learning_rate=schedule, momentum=momentum, use_nesterov=nesterov)
    optimizer.lr_values = lr_values  # host copy of the per-step LR, read by the progress/tracking callbacks
    return optimizer
