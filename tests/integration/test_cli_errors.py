"""Bad input ends with one line naming what to fix, a non-zero exit, and no traceback.

The commands run in this process through the CLI's own entry function (tests/helpers/inprocess.py):
the same Hydra composition, checks and ``error:`` line as ``python -m vit_exp.run``, without a new
interpreter per case. What needs a fresh process (which modules a command imports) starts one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.data import write_image_folder
from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL, tiny_vit


def assert_one_line_error(proc, *expected: str) -> None:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[WARNING]")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.fixture
def cli(tmp_path):
    def _run(*overrides: str):
        return run_main(
            "vit_exp.run",
            *TINY_MODEL,
            "trainer.max_steps=1",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *overrides,
        )

    return _run


def test_image_size_not_divisible_by_patch(cli):
    assert_one_line_error(cli("model.image_size=30"), "model.image_size=30", "model.patch_size=8")


def test_embed_dim_not_divisible_by_heads(cli):
    assert_one_line_error(
        cli("model.embed_dim=30", "model.num_heads=4"), "model.embed_dim=30", "model.num_heads=4"
    )


def test_unknown_optimized_metric(cli):
    assert_one_line_error(cli("optimized_metric=val/acc"), "optimized_metric=val/acc", "val/top1")


def test_missing_data_root(cli, tmp_path):
    assert_one_line_error(
        cli("data=image_folder", f"data.root={tmp_path / 'nowhere'}"), "data.root", "nowhere"
    )


def test_data_root_not_given(cli):
    assert_one_line_error(cli("data=image_folder"), "data.root is required")


def test_missing_and_empty_split(cli, tmp_path):
    root = write_image_folder(tmp_path / "ds", ["a", "b"], per_class=2, splits=("train",))
    args = ("data=image_folder", f"data.root={root}", "trainer.batch_size=2")
    assert_one_line_error(cli(*args), "data.val_split", "not found")
    (root / "val" / "a").mkdir(parents=True)
    assert_one_line_error(cli(*args), "data.val_split", "no class folders")


def test_batch_larger_than_the_training_split(cli, tmp_path):
    root = write_image_folder(tmp_path / "ds", ["a", "b"], per_class=2)
    assert_one_line_error(
        cli("data=image_folder", f"data.root={root}", "trainer.batch_size=8"), "trainer.batch_size=8"
    )


def test_unknown_config_key_and_option(cli):
    assert_one_line_error(cli("optim.lrate=0.1"), "unknown config key 'optim.lrate'")
    assert_one_line_error(cli("trainer.log_every_n_steps=5"), "renamed to trainer.print_every_n_steps")
    assert_one_line_error(cli("model=vit_huge"), "model=vit_huge", "vit_b16")


def test_missing_checkpoint_file(cli, tmp_path):
    assert_one_line_error(cli(f"model.pretrained={tmp_path / 'nope.ckpt'}"), "model.pretrained", "nope.ckpt")


def test_checkpoint_with_wrong_shapes(cli, tmp_path):
    from vit_exp.models.checkpoint import save_checkpoint

    path = save_checkpoint(tiny_vit(num_classes=10, embed_dim=64), tmp_path / "wide.ckpt")
    assert_one_line_error(
        cli(f"model.pretrained={path}"), "does not fit the model", "cls checkpoint (1, 1, 64)"
    )


@pytest.mark.parametrize("flag", ["--help", "--cfg"])
def test_help_and_cfg_do_not_import_mindspore_or_mlflow(flag):
    import subprocess
    import sys

    code = (
        "import sys\n"
        f"sys.argv = ['vit_exp.run', {flag!r}] + (['job'] if {flag!r} == '--cfg' else [])\n"
        "from vit_exp.run import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('mindspore', 'mlflow') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]
    assert ("model:" in proc.stdout) and ("patch_size" in proc.stdout)


def test_errors_come_from_the_config_hydra_composes(tmp_path):
    """--config-dir/--config-name: a key of the user's own config is accepted, a typo is one line."""
    (tmp_path / "exp.yaml").write_text("defaults:\n  - train\n  - _self_\n\nnotes: first try\n")
    common = ("--config-dir", str(tmp_path), "--config-name", "exp")
    ok = run_main("vit_exp.run", *common, "notes=second try", "--cfg", "job")
    assert ok.returncode == 0, ok.stderr
    assert "notes: second try" in ok.stdout and "model:" in ok.stdout
    assert_one_line_error(
        run_main("vit_exp.run", *common, "optim.lrate=1"), "unknown config key 'optim.lrate'"
    )
    sweep = ("--config-dir", "sweeps", "--config-name", "grid_lr_batch")
    assert_one_line_error(run_main("vit_exp.run", *sweep, "model=vit_huge"), "model=vit_huge", "vit_tiny")


@pytest.mark.integration  # make test stays under ~6 min; CI's integration tier runs it
def test_a_tracking_server_that_is_down_fails_at_once_in_one_line(tmp_path):
    """No retries for minutes (252 s before): one error naming the URI (password masked) and what to do."""
    import time

    from tests.helpers.processes import free_port

    uri = f"mlflow.tracking_uri=http://ann:pw-9f2@127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = run_main("vit_exp.run", *TINY_MODEL, uri, f"hydra.run.dir={tmp_path / 'run'}")
    assert time.monotonic() - started < 60
    assert_one_line_error(
        proc, "http://ann:***@127.0.0.1", "unreachable (Connection refused)", "start the server"
    )
    assert "pw-9f2" not in proc.stdout + proc.stderr and "Retrying" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lr=abc", "optim.lr must be a number, got 'abc'"),
        ("trainer.seed=x", "trainer.seed must be an integer"),
        ("model.keep_prob=yes", "model.keep_prob must be a number"),
        ("data.mean=[1,2]", "data.mean must be a list of 3 numbers"),
        ("sched.warmup_epochs=z", "sched.warmup_epochs must be a number"),
        ("mlflow.tracking_uri=postgresql://u:pw@127.0.0.1:9/db", "pip install 'psycopg[binary]'"),
    ],
)
def test_a_bad_value_is_one_line_and_leaves_no_run(cli, tracking_store, override, expected):
    assert_one_line_error(cli(override), expected)
    if not Path(tracking_store.removeprefix("sqlite:///")).exists():
        return  # checked before the store was even opened: no run
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_store, registry_uri=tracking_store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments) == []  # checked before any run was created


def test_unusable_directories_are_named_before_training(cli, tmp_path):
    regular_file = tmp_path / "a-file"
    regular_file.write_text("not a folder")
    assert_one_line_error(cli(f"paths.checkpoint_dir={regular_file}/ckpt"), "paths.checkpoint_dir=")
    proc = run_main("vit_exp.run", *TINY_MODEL, f"hydra.run.dir={regular_file}/run")
    assert_one_line_error(proc, f"cannot create {regular_file}/run", "hydra.run.dir")


def test_a_refused_checkpoint_url_is_one_line(cli):
    from tests.helpers.processes import free_port

    url = f"http://127.0.0.1:{free_port()}/vit.ckpt"
    assert_one_line_error(cli(f"model.pretrained={url}"), f"could not download {url}", "Connection refused")
