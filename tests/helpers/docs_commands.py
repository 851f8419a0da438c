"""The shell commands of README.md and docs/*.md, and where each one runs.

A command is a line of a fenced ``bash`` / ``sh`` block (``\\`` continuations joined, comments and
blank lines left out) or a ``$ `` line of a ``console`` block (the lines after it are its output).
Each one must be, in this order:

(a) an example of ``--help`` (vit_exp/help.py), run by tests/integration/test_help_examples.py;
(b) in ``RUN_LITERALLY``: run as written by tests/integration/test_docs_commands.py;
(c) in ``RUN_BY``: the named test runs the same command (tests/unit/test_docs.py checks that the test
    exists and that its source holds each distinctive part);
(d) a line of .ci/run (``make test``, ``make docs``), or ``make <target>`` whose recipe is
    ``python -m <module> $(ARGS)``, which then counts as ``python -m <module>``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from vit_exp.config import PROJECT_ROOT

SHELL_BLOCKS = ("bash", "sh", "console")
HELP_TEST = "tests/integration/test_help_examples.py::test_every_help_example_runs_after_the_default_run"
CI_SCRIPT = PROJECT_ROOT / ".ci" / "run"


@dataclass(frozen=True)
class DocCommand:
    """One shell command of the docs, where it is, and (console blocks) the output shown under it."""

    file: str
    line: int
    command: str
    output: tuple[str, ...] = field(default=())

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Literal:
    """(b): how test_docs_commands.py runs a command: after a short training or not, its exit code,
    and text its output must hold (besides a console block's own output lines)."""

    returncode: int = 0
    holds: tuple[str, ...] = ()
    after_training: bool = False


# (b) run as written, in a store of their own, by tests/integration/test_docs_commands.py
RUN_LITERALLY: dict[str, Literal] = {
    "python -m vit_exp.run --help": Literal(holds=("vit-exp train:", "config groups", "examples")),
    "python -m vit_exp.run experiment=finetune_vit_b16 data.root=/data/vit_imagenet_dataset "
    "--cfg job": Literal(holds=("name: deit", "drop_path_rate: 0.1", "layer_decay: 0.65", "name: adamw")),
    "python -m vit_exp.run experiment=recipe_vit_b16 data.root=/data/vit_imagenet_dataset --cfg job": Literal(
        holds=("name: vit_b16", "root: /data/vit_imagenet_dataset")
    ),
    "python -m vit_exp.run optim.lrate=1e-3": Literal(returncode=1),
    "python -m vit_exp.run experiment=recipe_vit_b16 data.root=/data/vit_imagenet_dataset optim=adamw "
    "model.drop_path_rate=0.1 optim.layer_decay=0.65 optim.clip_grad_norm=1.0 --cfg job": Literal(
        holds=(
            "name: vit_b16",
            "name: adamw",
            "drop_path_rate: 0.1",
            "layer_decay: 0.65",
            "clip_grad_norm: 1.0",
        )
    ),
    "python -m vit_exp.run model.drop_path_rate=1.0": Literal(returncode=1),
    "python -m vit_exp.eval model_uri=models:/vit_tiny-digits@best": Literal(
        holds=("top1",), after_training=True
    ),
    "python -m vit_exp.predict model_uri=models:/vit_tiny-digits@best inputs=.cache/datasets/digits/infer": (
        Literal(holds=("predictions.json",), after_training=True)
    ),
    "python -m vit_exp.run --multirun --config-dir sweeps --config-name optuna_lr trainer.max_steps=20 "
    "hydra.sweeper.n_trials=2": Literal(holds=("vit_exp_lr",)),
}

# (c) run by an existing test: its node id and the distinctive parts of the command in its source
RUN_BY: dict[str, tuple[str, tuple[str, ...]]] = {
    "python -m vit_exp.run augment=deit augment.randaug.magnitude=7 data.train_fraction=0.1": (
        "tests/integration/test_augment_train.py::test_deit_trains_on_soft_targets_and_validates_on_hard_labels",
        ('"augment=deit"', '"augment.randaug.magnitude=7"', '"data.train_fraction='),
    ),
    "python -m vit_exp.run optim=adamw model.drop_path_rate=0.1 optim.clip_grad_norm=1.0 "
    "optim.layer_decay=0.75 trainer.max_steps=20": (  # on the tiny model for 6 steps
        "tests/integration/test_regularisation_cli.py::test_drop_path_clipping_and_layer_decay_train_and_are_params",
        (
            '"optim=adamw"',
            '"model.drop_path_rate=0.1"',
            '"optim.clip_grad_norm=1.0"',
            '"optim.layer_decay=0.75"',
        ),
    ),
    "mlflow models serve -m models:/vit_tiny-digits-onnx/1 --env-manager local -h 127.0.0.1 -p 5002": (
        "tests/integration/test_export.py::test_onnx_export_is_served_without_mindspore_and_answers_as_the_version",
        ('"models", "serve", "-m"', '-onnx/1"', '"--env-manager", "local"'),
    ),
    "python -m vit_exp.run registry.export=[onnx]": (  # on the tiny model, 2 versions
        "tests/integration/test_export.py::test_registry_export_exports_each_new_version_in_the_background",
        ("train_tiny(", '"registry.export=[onnx]"'),  # train_tiny: python -m vit_exp.run
    ),
    "python -m vit_exp.ui": (
        "tests/integration/test_ui.py::test_ui_prints_the_runs_page_and_serves_it",
        ('"vit_exp.ui"',),
    ),
    "msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --log_dir=msrun_logs --join=True "
    "python -m vit_exp.run trainer.batch_size=32": (
        "tests/integration/test_data_parallel.py::test_two_workers_at_batch_32_train_like_one_process_at_batch_64",
        ("run_msrun(", "2,", '"vit_exp.run"', '"trainer.batch_size=32"'),
    ),
    "python -m vit_exp.run --multirun --config-dir sweeps --config-name slurm_grid "
    "hydra/launcher=submitit_local device=cpu trainer.max_steps=20": (  # its composition: no cluster here
        "tests/integration/test_store_concurrency.py::test_the_slurm_sweep_composes_with_the_keys_a_cluster_needs",
        ('"slurm_grid"', '"hydra/launcher=submitit_local"', '"device=cpu"'),
    ),
    "deploy/tracking_server.sh --background": (  # start (the default) --background: script() adds it
        "tests/integration/test_postgres_server.py::pg_server",
        ('script("start"',),
    ),
    "deploy/tracking_server.sh stop": (
        "tests/integration/test_postgres_server.py::pg_server",
        ('script("stop"',),
    ),
    'export PATH="$PWD/.venv/bin:$PATH"': (
        "tests/integration/test_registry_consumers.py::test_serve_champion_over_http",
        ('PATH=f"{Path(sys.executable).parent}',),
    ),
    "export MLFLOW_TRACKING_URI=sqlite:///mlruns/mlflow.db": (
        "tests/integration/test_registry_consumers.py::test_serve_champion_over_http",
        ('MLFLOW_TRACKING_URI=registry["uri"]',),
    ),
    "mlflow models serve -m models:/vit_tiny-digits@best --env-manager local -h 127.0.0.1 -p 5001": (
        "tests/integration/test_registry_consumers.py::test_serve_champion_over_http",
        ('"models", "serve"', '"-m", "models:/consumer-vit@champion"', '"--env-manager", "local"'),
    ),
    "IMG=$(base64 -w0 .cache/datasets/digits/infer/3/*.png)": (
        "tests/integration/test_registry_consumers.py::test_serve_champion_over_http",
        ("base64.b64encode(",),
    ),
    "curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' -d "
    '"{\\"dataframe_split\\": {\\"columns\\": [\\"image\\"], \\"data\\": [[\\"$IMG\\"]]}}"': (
        "tests/integration/test_registry_consumers.py::test_serve_champion_over_http",
        ("/invocations", '"dataframe_split"', '"columns": ["image"]'),
    ),
}


def doc_files(root: Path = PROJECT_ROOT) -> list[Path]:
    """README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def doc_commands(root: Path = PROJECT_ROOT) -> list[DocCommand]:
    """Every shell command of the docs, in file order."""
    return [c for path in doc_files(root) for c in _commands_in(path, root)]


def _commands_in(path: Path, root: Path) -> list[DocCommand]:
    name, commands, language, pending = str(path.relative_to(root)), [], None, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```\s*(\w*)", line)
        if fence:
            language = None if language is not None else fence[1]
            continue
        if language not in SHELL_BLOCKS:
            continue
        if language == "console":
            if line.startswith("$ "):
                commands.append(DocCommand(name, number, canonical(line[2:])))
            elif line.strip() and commands and commands[-1].file == name:
                last = commands.pop()
                commands.append(DocCommand(name, last.line, last.command, (*last.output, line.strip())))
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if canonical(pending):
            commands.append(DocCommand(name, number, canonical(pending)))
        pending = ""
    return commands


def canonical(line: str) -> str:
    """A command without its comment and extra spaces (shell words joined by one space)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return line.strip()
    if not words:
        return ""
    without_comment = line.split(" #", maxsplit=1)[0] if " #" in line else line
    return " ".join(without_comment.split())


def help_examples() -> set[str]:
    """The ``--help`` examples of every command, as canonical commands."""
    from vit_exp.help import COMMANDS

    return {canonical(example) for _, _, examples in COMMANDS.values() for example in examples}


def make_recipe_command(target: str, root: Path = PROJECT_ROOT) -> str | None:
    """``python -m <module>`` when the Makefile's ``target`` runs ``$(BIN)/python -m <module> $(ARGS)``."""
    text = (root / "Makefile").read_text()
    found = re.search(rf"^{re.escape(target)}:.*\n\t\$\(BIN\)/python -m (\S+) \$\(ARGS\)$", text, re.M)
    return f"python -m {found[1]}" if found else None


def where_it_runs(command: str, root: Path = PROJECT_ROOT) -> str | None:
    """Which test or script runs ``command`` (a)-(d), or None."""
    if command in help_examples():
        return HELP_TEST
    if command in RUN_LITERALLY:
        return "tests/integration/test_docs_commands.py"
    if command in RUN_BY:
        return RUN_BY[command][0]
    if command in (line.strip() for line in (root / ".ci" / "run").read_text().splitlines()):
        return ".ci/run"
    words = command.split()
    if len(words) == 2 and words[0] == "make" and (recipe := make_recipe_command(words[1], root)):
        return where_it_runs(recipe, root)
    return None
