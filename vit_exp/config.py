"""Config plumbing shared by the CLI entries: where ``conf/`` is, and our OmegaConf resolvers."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    """Register ``${vit_exp.project_root:}``, ``${vit_exp.beside_store:...}``, ``${vit_exp.help:}`` and
    the console's ``${vit_exp.rank_label:}`` and ``${vit_exp.console_level:}`` (idempotent)."""
    if not OmegaConf.has_resolver("vit_exp.project_root"):
        OmegaConf.register_new_resolver("vit_exp.project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("vit_exp.beside_store"):
        OmegaConf.register_new_resolver("vit_exp.beside_store", beside_store)
    if not OmegaConf.has_resolver("vit_exp.help"):
        OmegaConf.register_new_resolver("vit_exp.help", _help_template)
    if not OmegaConf.has_resolver("vit_exp.rank_label"):
        OmegaConf.register_new_resolver("vit_exp.rank_label", _rank_label)
    if not OmegaConf.has_resolver("vit_exp.console_level"):
        OmegaConf.register_new_resolver("vit_exp.console_level", _console_level)


def _help_template() -> str:
    from vit_exp.help import help_template

    return help_template()


def _rank_label() -> str:
    from vit_exp.train.parallel import console_rank_label

    return console_rank_label()


def _console_level() -> str:
    from vit_exp.train.parallel import console_level

    return console_level()


def beside_store(tracking_uri: str, file_name: str, fallback_dir: str) -> str:
    """SQLite URI for ``file_name`` next to a SQLite MLflow store, else in ``fallback_dir``."""
    prefix = "sqlite:///"
    sqlite = tracking_uri.startswith(prefix)
    folder = Path(tracking_uri.removeprefix(prefix)).parent if sqlite else Path(fallback_dir)
    return f"{prefix}{folder / file_name}"


def group_settings(group: str, option: str | None = None, **values):
    """Settings object of config ``group`` as ``conf/train.yaml`` composes it (the defaults' one source),
    for use outside a Hydra app; ``option`` picks another file of the group, ``values`` replace keys."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"{group}={option}"] if option else [])
    keys = OmegaConf.to_container(cfg[group], resolve=True)
    return get_class(keys.pop("_target_"))(**(keys | values))
