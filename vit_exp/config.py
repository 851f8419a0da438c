"""Config plumbing shared by the CLI entries: where ``conf/`` is, and our OmegaConf resolvers."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    """Register ``${vit_exp.project_root:}`` (idempotent)."""
    if not OmegaConf.has_resolver("vit_exp.project_root"):
        OmegaConf.register_new_resolver("vit_exp.project_root", lambda: str(PROJECT_ROOT))
