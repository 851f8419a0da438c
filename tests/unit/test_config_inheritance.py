"""Every config option composes to the config in tests/golden/composed_configs.yaml.

The golden file is the composed ``--cfg job`` of each command below, flattened to dotted keys (a case
lists what it sets and unsets relative to ``default``). A deliberate change to a config is a change
of that file, reviewed as such: ``VIT_EXP_UPDATE_GOLDEN=1 pytest tests/unit/test_config_inheritance.py``
rewrites it from the current ``conf/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from vit_exp.config import CONFIG_DIR, PROJECT_ROOT

GOLDEN = PROJECT_ROOT / "tests" / "golden" / "composed_configs.yaml"
ENTRY_CONFIGS = {"vit_exp.run": "train", "vit_exp.eval": "eval", "vit_exp.predict": "predict"}
ENTRY_CONFIGS |= {"vit_exp.promote": "promote", "vit_exp.export": "export", "vit_exp.reproduce": "reproduce"}
OPTION_GROUPS = ("model", "data", "augment", "optim", "sched", "device", "trainer")


def commands() -> dict[str, str]:
    """Each case's command: every option of every group, each entry, the sweeps, an experiment."""
    cases = {"default": "python -m vit_exp.run --cfg job"}
    for group in OPTION_GROUPS:
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            cases[f"{group}={path.stem}"] = f"python -m vit_exp.run {group}={path.stem} --cfg job"
    for entry, name in ENTRY_CONFIGS.items():
        if name != "train":
            cases[name] = f"python -m {entry} --cfg job"
    for sweep in ("grid_lr_batch", "optuna_lr"):
        cases[sweep] = f"python -m vit_exp.run --config-dir sweeps --config-name {sweep} --cfg job"
    for experiment in ("recipe_vit_b16", "finetune_vit_b16"):
        cases[f"experiment={experiment}"] = f"python -m vit_exp.run experiment={experiment} --cfg job"
    return cases


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def composed(command: str) -> dict:
    """The job config ``command`` prints, flattened (sweep configs through a real CLI process)."""
    args = command.split()[3:-2]  # between "python -m <entry>" and "--cfg job"
    entry = command.split()[2]
    if "--config-dir" in args:
        proc = subprocess.run(
            [sys.executable, "-m", entry, *args, "--cfg", "job"],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return flatten(yaml.safe_load(proc.stdout))
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=ENTRY_CONFIGS[entry], overrides=args)
    GlobalHydra.instance().clear()
    return flatten(OmegaConf.to_container(cfg, resolve=False))


def write_golden(path: Path) -> None:
    """The golden file from the current ``conf/``: ``default`` whole, each case as its differences."""
    default = composed(commands()["default"])
    cases = {}
    for name, command in commands().items():
        if name != "default":
            flat = composed(command)
            changed = {k: v for k, v in flat.items() if default.get(k, object()) != v or k not in default}
            cases[name] = {"command": command, "set": changed, "unset": sorted(set(default) - set(flat))}
    header = (
        "# Written by tests/unit/test_config_inheritance.py (VIT_EXP_UPDATE_GOLDEN=1); see its docstring.\n"
    )
    document = {"default": default, "cases": cases}
    path.write_text(header + yaml.safe_dump(document, sort_keys=False, width=110))


def golden() -> dict[str, tuple[str, dict]]:
    document = yaml.safe_load(GOLDEN.read_text())
    cases = {"default": (commands()["default"], document["default"])}
    for name, case in document["cases"].items():
        flat = {k: v for k, v in document["default"].items() if k not in case["unset"]} | case["set"]
        cases[name] = (case["command"], flat)
    return cases


if os.environ.get("VIT_EXP_UPDATE_GOLDEN") == "1":
    write_golden(GOLDEN)
CASES = golden()


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_option_composes_as_the_golden_file_says(case):
    command, expected = CASES[case]
    assert composed(command) == expected, command


def test_the_golden_file_covers_every_option_and_entry():
    assert set(commands()) == set(CASES)
