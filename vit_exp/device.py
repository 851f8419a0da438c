"""MindSpore execution context: device target, id, graph/pynative mode, AMP level, precision, seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from vit_exp.errors import NOT_COMPARED, SETUP, ConfigError, check_field_types, first_line
from vit_exp.models.config import check_precision

TARGETS = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}
MODES = ("graph", "pynative")
AMP_LEVELS = ("O0", "O1", "O2", "O3", "auto")


@dataclass
class DeviceSettings:
    """The ``device`` config group; ``apply()`` sets MindSpore's global context.
    Types only: the defaults live in conf/device/cpu.yaml."""

    target: Annotated[str, SETUP]
    device_id: Annotated[int, NOT_COMPARED]
    mode: Annotated[str, SETUP]
    amp_level: str
    jit_level: Annotated[str | None, SETUP]
    max_device_memory: Annotated[str | None, NOT_COMPARED]
    precision: str

    def __post_init__(self) -> None:
        check_field_types(self, "device")
        if self.target.lower() not in TARGETS:
            raise ConfigError(f"device.target must be one of {tuple(TARGETS)}, got {self.target!r}")
        if self.mode not in MODES:
            raise ConfigError(f"device.mode must be one of {MODES}, got {self.mode!r}")
        check_precision(self.precision)
        if self.amp_level not in AMP_LEVELS:
            raise ConfigError(f"device.amp_level must be one of {AMP_LEVELS}, got {self.amp_level!r}")

    @property
    def mindspore_target(self) -> str:
        return TARGETS[self.target.lower()]

    def apply(self, seed: int | None = None, deterministic: bool = False) -> None:
        """Set the device, execution mode, seed and (``deterministic``) deterministic kernels."""
        import mindspore as ms

        try:
            ms.set_device(self.mindspore_target, self.device_id)
        except (RuntimeError, ValueError) as exc:
            # Once MindSpore's runtime is up (e.g. a second run in one process) the device is fixed;
            # that is fine when it is already the one asked for.
            if ms.get_context("device_target") != self.mindspore_target:
                first = first_line(str(exc))
                raise ConfigError(f"device.target={self.target} is not usable here: {first}") from None
        ms.set_context(mode=ms.GRAPH_MODE if self.mode == "graph" else ms.PYNATIVE_MODE)
        if self.jit_level:
            ms.set_context(jit_config={"jit_level": self.jit_level})
        if self.max_device_memory:
            ms.set_context(max_device_memory=self.max_device_memory)
        if deterministic:
            ms.set_deterministic(True)
        if seed is not None:
            set_seed(seed)


def set_seed(seed: int) -> None:
    """Seed MindSpore, its dataset engine and NumPy."""
    import mindspore as ms
    import mindspore.dataset as ds
    import numpy as np

    ms.set_seed(seed)
    ds.config.set_seed(seed)
    np.random.seed(seed)
