"""Shared by the benchmarks: config groups as the training CLI composes them, and the ViTs they make."""

from __future__ import annotations

from omegaconf import OmegaConf

from vit_exp.config import CONFIG_DIR, register_resolvers


def composed_group(group: str, option: str) -> dict:
    """``<group>`` of ``python -m vit_exp.run <group>=<option>`` (bases included, unresolved)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"{group}={option}"])
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg[group], resolve=False)


def vit_config(name: str = "vit_tiny", **overrides):
    """The ViTConfig of ``model=<name>`` (10 classes unless overridden; default: the default run's)."""
    from vit_exp.models.config import ViTConfig

    return ViTConfig.from_mapping(composed_group("model", name), **({"num_classes": 10} | overrides))


def cpu_vit(config):
    """Our ViT of ``config``, its kernels planned for the CPU (where every benchmark here runs)."""
    from vit_exp.models.kernels.plan import plan_kernels
    from vit_exp.models.vit import ViT

    return ViT(config, plan_kernels(config, "CPU"))
