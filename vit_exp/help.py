"""What ``--help`` shows for each command: what it does, its own config groups, its keys, and
examples that run on a fresh clone after ``make run`` (tests/integration/test_help_examples.py)."""

from __future__ import annotations

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
            "python -m vit_exp.eval model_uri=models:/vit_tiny-digits@best",
            "python -m vit_exp.eval model_uri=models:/vit_tiny-digits@champion   # after promote",
        ],
    ),
    "predict": (
        "predict images with a registered model",
        "python -m vit_exp.predict model_uri=URI inputs=IMAGE_OR_FOLDER [key=value ...]",
        [
            "python -m vit_exp.predict model_uri=models:/vit_tiny-digits@last "
            "inputs=.cache/datasets/digits/infer"
        ],
    ),
    "promote": (
        "move an alias (default champion) to the best version of a registered model",
        "python -m vit_exp.promote name=NAME [key=value ...]",
        [
            "python -m vit_exp.promote name=vit_tiny-digits",
            "python -m vit_exp.promote name=vit_tiny-digits alias=stable min_delta=0.01 dry_run=true",
        ],
    ),
    "export": (
        "export a registered version to ONNX or MindIR and register the export beside it",
        "python -m vit_exp.export model_uri=URI [format=onnx|mindir] [key=value ...]",
        [
            "python -m vit_exp.export model_uri=models:/vit_tiny-digits@best format=onnx",
            "python -m vit_exp.export model_uri=models:/vit_tiny-digits@best format=mindir",
        ],
    ),
    "reproduce": (
        "train a recorded run again (same code, config and data) as a new run; compare their metrics",
        "python -m vit_exp.reproduce RUN_ID|models:/NAME/VERSION|models:/NAME@ALIAS [key=value ...]",
        ["python -m vit_exp.reproduce models:/vit_tiny-digits@best   # the default run, again"],
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
