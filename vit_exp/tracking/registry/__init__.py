"""The model registry (checkpoints as versions, promotion, resolving a URI) and its config's settings."""

from __future__ import annotations

from dataclasses import dataclass

from vit_exp.errors import ConfigError, check_field_types, positive_int

POLICIES = ("auto", "every", "best", "last", "none")
# What each policy makes a version (each epoch checkpoint is a LoggedModel of its run whatever the policy).
RULES = {
    "every": "every epoch checkpoint",
    "best": "each epoch checkpoint that is a new best {metric} of its run",
    "last": "the run's last epoch checkpoint, when training ends",
    "none": "no checkpoint (each is a LoggedModel of its run: models:/<model_id>)",
}


@dataclass(frozen=True)
class RegistrationRule:
    """The policy a run registers by, and why: ``registry.register``, or what ``auto`` chose."""

    policy: str
    why: str
    objective: str = "val/top1"  # what "best" means, and what @best follows

    def describe(self) -> str:
        """``best: each epoch checkpoint that is a new best val/top1 of its run (auto: a training run)``."""
        return f"{self.policy}: {RULES[self.policy].format(metric=self.objective)} ({self.why})"

    def tag(self) -> str:
        """The version tag ``registered_by``: ``best (auto: a training run)``."""
        return f"{self.policy} ({self.why})"


def registration_rule(
    register: str, smoke_run: bool, sweep_job: bool, objective: str = "val/top1"
) -> RegistrationRule:
    """``auto``: a smoke run (``trainer.max_steps`` set) registers none, a sweep job its last epoch
    checkpoint, any other training run each new best; any other value is taken as it is."""
    if register != "auto":
        return RegistrationRule(register, "set by registry.register", objective)
    if smoke_run:
        return RegistrationRule("none", "auto: a smoke run, trainer.max_steps is set", objective)
    if sweep_job:
        return RegistrationRule("last", "auto: a sweep job", objective)
    return RegistrationRule("best", "auto: a training run", objective)


@dataclass
class RegistrySettings:
    """The ``registry`` config group: which checkpoints become versions of which registered model.
    Types only: the defaults live in conf/registry/default.yaml."""

    register: str
    name: str
    top_k: int
    step_checkpoints: bool
    export: list[str]

    def __post_init__(self) -> None:
        from vit_exp.models.export import FORMATS

        check_field_types(self, "registry")
        for fmt in self.export:
            if fmt not in FORMATS:
                raise ConfigError(
                    f"registry.export: {fmt!r} is not an export format; choose from: {', '.join(FORMATS)}"
                )
        if self.register not in POLICIES:
            raise ConfigError(f"registry.register must be one of {POLICIES}, got {self.register!r}")
        if not self.name:
            raise ConfigError("registry.name must be a non-empty model name")
        positive_int("registry.top_k", self.top_k)
