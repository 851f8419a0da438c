"""The model registry (checkpoints as versions, promotion, resolving a URI) and its config's settings."""

from __future__ import annotations

from dataclasses import dataclass

from vit_exp.errors import ConfigError, check_field_types, positive_int

POLICIES = ("every", "best", "last", "none")


@dataclass
class RegistrySettings:
    """The ``registry`` config group: which checkpoints become versions of which registered model.
    Types only: the defaults live in conf/registry/default.yaml."""

    register: str
    name: str
    top_k: int
    step_checkpoints: bool

    def __post_init__(self) -> None:
        check_field_types(self, "registry")
        if self.register not in POLICIES:
            raise ConfigError(f"registry.register must be one of {POLICIES}, got {self.register!r}")
        if not self.name:
            raise ConfigError("registry.name must be a non-empty model name")
        positive_int("registry.top_k", self.top_k)
