"""Optimizers (adam, adamw, sgd with momentum) over a per-step learning rate, with weight decay kept off
the parameters ``no_weight_decay`` names and an optional per-block LR scale (``layer_decay``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np

from vit_exp.errors import ConfigError, check_field_types

OPTIMIZERS = ("adam", "adamw", "sgd")
_BLOCK = re.compile(r"^transformer\.layers\.(\d+)\.")
_EMBEDDING = ("cls", "pos_embedding", "patch_embedding.*")


def exempt_from_weight_decay(name: str, patterns: Sequence[str]) -> bool:
    """Whether a pattern (``*`` wildcards) matches the parameter ``name`` or its last part (``bias``)."""
    last = name.rpartition(".")[2]
    return any(fnmatchcase(last, p) or fnmatchcase(name, p) for p in patterns)


def layer_id(name: str, num_layers: int) -> int:
    """The ViT layer a parameter belongs to (BEiT/MAE fine-tuning): 0 for the patch embedding, class token
    and position embedding, i + 1 for encoder block i, ``num_layers`` + 1 for the final norm and head."""
    if any(fnmatchcase(name, p) for p in _EMBEDDING):
        return 0
    block = _BLOCK.match(name)
    return int(block[1]) + 1 if block else num_layers + 1


def encoder_depth(names: Sequence[str]) -> int:
    """How many encoder blocks (``transformer.layers.{i}``) the parameter ``names`` hold."""
    return 1 + max((int(m[1]) for n in names if (m := _BLOCK.match(n))), default=-1)


def _param_groups(
    params: Sequence,
    weight_decay: float,
    no_decay: Sequence[str] = (),
    layer_decay: float | None = None,
    learning_rates: np.ndarray | None = None,
) -> list:
    """Parameter groups: weight decay except on ``no_decay`` names; with ``layer_decay``, one group per
    (layer, decay or not) whose per-step LR is ``learning_rates * layer_decay ** (L + 1 - layer)``."""
    if weight_decay == 0 and layer_decay is None:
        return list(params)
    decays = [weight_decay > 0 and not exempt_from_weight_decay(p.name, no_decay) for p in params]
    if layer_decay is None:  # the two groups of before layer decay, the decayed first
        decay = [p for p, d in zip(params, decays, strict=True) if d]
        keep = [p for p, d in zip(params, decays, strict=True) if not d]
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if keep:
            groups.append({"params": keep, "weight_decay": 0.0})
        return groups
    depth = encoder_depth([p.name for p in params])
    by_layer: dict[tuple[int, bool], list] = {}
    for p, d in zip(params, decays, strict=True):
        by_layer.setdefault((layer_id(p.name, depth), not d), []).append(p)
    return [
        {
            "params": group,
            "weight_decay": 0.0 if keep else weight_decay,
            "lr": layer_learning_rates(learning_rates, layer_decay ** (depth + 1 - layer)),
        }
        for (layer, keep), group in sorted(by_layer.items())
    ]


def layer_learning_rates(learning_rates: np.ndarray, scale: float):
    """A group's per-step LR Tensor: the base rates times ``scale`` (float32)."""
    from mindspore import Tensor

    return Tensor(np.asarray(learning_rates, dtype=np.float32) * np.float32(scale))


@dataclass(frozen=True)
class OptimizerSettings:
    """The ``optim`` config group; types only: the values are conf/optim/<name>.yaml's, and a constant
    only another optimizer uses is None. ``no_weight_decay``: name patterns kept off weight decay;
    ``clip_grad_norm``: the global gradient L2 norm clipped to (None = off; applied by the train step);
    ``layer_decay``: per-block LR scale (None = off)."""

    name: str
    lr: float
    weight_decay: float
    no_weight_decay: Sequence[str]
    clip_grad_norm: float | None
    layer_decay: float | None
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
        patterns = self.no_weight_decay
        if (
            isinstance(patterns, str)
            or not isinstance(patterns, Sequence)
            or not all(isinstance(p, str) for p in patterns)
        ):
            raise ConfigError(
                "optim.no_weight_decay must be a list of parameter-name patterns, e.g. [bias,gamma,beta], "
                f"got {patterns!r}"
            )
        object.__setattr__(self, "no_weight_decay", tuple(patterns))
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ConfigError(
                f"optim.clip_grad_norm must be a number > 0 or null (off), got {self.clip_grad_norm!r}"
            )
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"optim.layer_decay must be in (0, 1] or null (off), got {self.layer_decay!r}")

    def learning_rates(self, schedule: np.ndarray) -> np.ndarray:
        """Per-step learning rates: ``lr`` times the schedule's per-step factors (float32)."""
        return np.asarray(schedule, dtype=np.float32) * np.float32(self.lr)

    def build(self, params: Sequence, learning_rates: np.ndarray):
        """The MindSpore optimizer over ``params``, stepping through ``learning_rates`` (each layer's
        scaled by ``layer_decay`` when set; ``learning_rates`` stays the base, the LR a run logs)."""
        from mindspore import Tensor, nn

        lr = Tensor(np.asarray(learning_rates, dtype=np.float32))
        groups = _param_groups(
            list(params), self.weight_decay, self.no_weight_decay, self.layer_decay, learning_rates
        )
        betas = dict(beta1=self.beta1, beta2=self.beta2, eps=self.eps)
        if self.name == "adam":
            return nn.Adam(groups, learning_rate=lr, **betas)
        if self.name == "adamw":
            return nn.AdamWeightDecay(groups, learning_rate=lr, **betas)
        return nn.Momentum(groups, learning_rate=lr, momentum=self.momentum, use_nesterov=self.nesterov)
