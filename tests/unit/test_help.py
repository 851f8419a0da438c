"""``--help`` of each CLI: its own groups and examples; a mistyped name gets the closest real one."""

from __future__ import annotations

import pytest

from tests.helpers.examples import example_args
from tests.helpers.inprocess import run_main
from vit_exp.help import COMMANDS

MODULES = {
    "train": "run",
    "eval": "eval",
    "predict": "predict",
    "promote": "promote",
    "export": "export",
    "reproduce": "reproduce",
    "sync": "sync",
    "ui": "ui",
}
GROUPS = {  # what each command's config composes (conf/<command>.yaml's defaults)
    "train": [
        "augment",
        "data",
        "device",
        "experiment",
        "mlflow",
        "model",
        "optim",
        "paths",
        "registry",
        "sched",
        "trainer",
    ],
    "eval": ["data", "device", "mlflow", "paths"],
    "predict": ["device", "mlflow", "paths"],
    "promote": ["mlflow", "paths"],
    "export": ["device", "mlflow", "paths"],
    "reproduce": ["mlflow", "paths"],
    "sync": ["paths"],
    "ui": ["mlflow", "paths"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_the_commands_own_groups_and_its_examples(command):
    proc = run_main(f"vit_exp.{MODULES[command]}", "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"vit-exp {command}: ")
    listed = [
        line.split(":")[0].strip() for line in out.split("config groups")[1].split("\n\n")[0].splitlines()[1:]
    ]
    assert listed == GROUPS[command]
    assert f"task_name: {command}" in out  # the keys, with their values
    for example in COMMANDS[command][2]:
        assert example in out


@pytest.mark.parametrize("example", [e for _, _, examples in COMMANDS.values() for e in examples])
def test_every_example_composes(example):
    """Each example's keys and groups exist (tests/integration/test_help_examples.py runs them)."""
    module, args = example_args(example)
    if "--multirun" in args:  # one job of the sweep: the first value of each list
        args = [a.split(",")[0] for a in args if a != "--multirun"]
    args = [a for a in args if a not in ("--cfg", "job")]
    proc = run_main(module, *args, "--cfg", "job")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("command", "line"),
    [
        ("vit_exp.run optimizer=adamw", "did you mean the config group 'optim'?"),
        ("vit_exp.run trainer.epcohs=3", "did you mean the key 'trainer.epochs'?"),
        ("vit_exp.run lr=0.1", "did you mean the key 'optim.lr'?"),
        ("vit_exp.eval model_uri=x batchsize=8", "did you mean the key 'batch_size'?"),
        ("vit_exp.eval model_uri=x model=vit_b16", "'model' is not a config group of python -m vit_exp.eval"),
        ("vit_exp.promote name=x optim=adam", "'optim' is not a config group of python -m vit_exp.promote"),
        ("vit_exp.run zzzz=1", "unknown config key 'zzzz' (check the spelling"),
    ],
)
def test_a_mistyped_name_gets_the_closest_real_one(command, line):
    module, *args = command.split()
    proc = run_main(module, *args)
    assert proc.returncode == 1
    (error,) = [text for text in proc.stderr.splitlines() if text.startswith("error:")]
    assert line in error, error
    assert "Traceback" not in proc.stderr
