"""What ``--help`` shows for each command: what it does, its own config groups, its keys, and
examples that run on a fresh clone after ``make run`` (tests/integration/test_help_examples.py)."""

from __future__ import annotations

import difflib

from vit_exp.config import CONFIG_DIR

# Per command (its task_name): one line on what it does, its usage, and its examples.
COMMANDS: dict[str, tuple[str, str, list[str]]] = {
    "train": (
        "train a ViT classifier; every checkpoint becomes a model version",
        "python -m vit_exp.run [group=option ...] [key=value ...]",
        [
            "python -m vit_exp.run                                   # tiny ViT on the embedded digits",
            "python -m vit_exp.run trainer.max_steps=20              # a smoke run",
            "python -m vit_exp.run model=vit_small optim=adamw optim.lr=5e-4 trainer.max_steps=20",
            "python -m vit_exp.run resume=auto                       # continue an interrupted run",
            "python -m vit_exp.run --multirun optim.lr=1e-3,3e-3 trainer.epochs=2   # a grid sweep",
            "python -m vit_exp.run --cfg job                         # print the composed config",
        ],
    ),
    "eval": (
        "evaluate a registered model on a dataset's val split",
        "python -m vit_exp.eval model_uri=URI [group=option ...] [key=value ...]",
        [
            "python -m vit_exp.eval model_uri=models:/vit_tiny-digits/1",
            "python -m vit_exp.eval model_uri=models:/vit_tiny-digits@champion   # after promote",
        ],
    ),
    "predict": (
        "predict images with a registered model",
        "python -m vit_exp.predict model_uri=URI inputs=IMAGE_OR_FOLDER [key=value ...]",
        ["python -m vit_exp.predict model_uri=models:/vit_tiny-digits/1 inputs=.cache/datasets/digits/infer"],
    ),
    "promote": (
        "move an alias (default champion) to the best version of a registered model",
        "python -m vit_exp.promote name=NAME [key=value ...]",
        [
            "python -m vit_exp.promote name=vit_tiny-digits",
            "python -m vit_exp.promote name=vit_tiny-digits metric=val/top5 dry_run=true",
        ],
    ),
    "sync": (
        "send what a training run could not store into the same run",
        "python -m vit_exp.sync outbox=RUN_DIR/mlflow_outbox [key=value ...]",
        ["python -m vit_exp.sync outbox=RUN_DIR/mlflow_outbox   # RUN_DIR: the run's directory"],
    ),
    "ui": (
        "open the MLflow UI on this project's store",
        "python -m vit_exp.ui [port=5000] [key=value ...]",
        ["python -m vit_exp.ui port=5001"],
    ),
}


def help_template() -> str:
    """Hydra's help template for the running command (``hydra.help.template``): ``$CONFIG`` is filled
    in by Hydra with the composed config."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    task = hydra.job.name
    what, usage, examples = COMMANDS.get(task, (task, f"python -m vit_exp.{task} [key=value ...]", []))
    choices = {g: c for g, c in hydra.runtime.choices.items() if not g.startswith("hydra")}
    groups = [f"  {group}: {_options(group, choices[group])}" for group in sorted(choices)]
    lines = [f"vit-exp {task}: {what}", f"usage: {usage}", ""]
    lines += ["config groups (group=option; [the one now]):", *groups, ""] if groups else []
    lines += ["keys (key=value), with their values now:", "$CONFIG"]
    lines += ["examples (on a fresh clone, after make run):", *(f"  {e}" for e in examples)]
    return "\n".join(lines) + "\n"


def _options(group: str, chosen: str | None) -> str:
    """The options of ``group``, the chosen one in brackets (``data: [digits], image_folder, imagenet``)."""
    from hydra.core.global_hydra import GlobalHydra

    options = sorted(GlobalHydra.instance().config_loader().get_group_options(group))  # the search path's
    return ", ".join(f"[{o}]" if o == chosen else o for o in options)


def did_you_mean(name: str, config_name: str | None) -> str:
    """``; did you mean 'optim'?`` for a mistyped key or group of command ``config_name`` (the closest
    of its groups and dotted keys, or a key ending in ``name``); empty when nothing is close."""
    if config_name is None:
        return ""
    groups, keys = _names(config_name)
    if name in groups or name in keys:
        return ""
    if "." not in name and (close := difflib.get_close_matches(name, groups, n=1, cutoff=0.6)):
        return f"; did you mean the config group '{close[0]}'?"
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]]
    if close := same_leaf[:1] or difflib.get_close_matches(name, keys, n=1, cutoff=0.75):
        return f"; did you mean the key '{close[0]}'?"
    return ""


def not_a_group(group: str, config_name: str | None) -> str:
    """The one line for ``group=option`` given to a command that composes no such group."""
    if config_name is None:
        return f"'{group}' is not a config group of this command"
    groups, _ = _names(config_name)
    hint = did_you_mean(group, config_name) or f"; its groups: {', '.join(groups) or 'none'}"
    return f"'{group}' is not a config group of python -m vit_exp.{_module(config_name)}{hint}"


def _module(config_name: str) -> str:
    return "run" if config_name == "train" else config_name


def _names(config_name: str) -> tuple[list[str], list[str]]:
    """The config groups and the dotted keys of ``config_name`` as composed with no overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from vit_exp.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()  # the failed command's Hydra is done with
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, return_hydra_config=True)
    groups = sorted(g for g in cfg.hydra.runtime.choices if not g.startswith("hydra"))
    config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra")
    return groups, sorted(_dotted(config))


def _dotted(config: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys += _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys
