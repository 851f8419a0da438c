"""Resume with the fine-tuning recipe's settings on (issue 27: augmentation with mixup/CutMix, drop
path, gradient clipping, layer decay, EMA of the weights, early stopping, best-k checkpoints) in
deterministic mode is exact: issue 13's kill -9 test (test_resume.py), extended.

A run killed mid-epoch and continued with ``resume=auto`` logs the same ``train/loss`` at every step, the
same ``val/*`` and ``val_ema/*`` per epoch and the same versions (their shipped weights and metric) as an
uninterrupted run of the same command; the EMA comes back from the state file (``ema.<name>``).
"""

from __future__ import annotations

import random
import signal

import pytest

from tests.helpers.processes import run_cli
from tests.integration.test_resume import (
    EPOCHS,
    STEPS_PER_EPOCH,
    client_of,
    history,
    only_run,
    train_args,
    train_until,
)

pytestmark = pytest.mark.integration  # real CLI processes: the integration tier (make test-integration)

# Each setting of the recipe on.
RECIPE_ON = (
    "augment=deit",
    "model.drop_path_rate=0.1",  # masks a function of the optimizer step: restored with the checkpoint
    "optim=adamw",
    "optim.clip_grad_norm=1.0",
    "optim.layer_decay=0.75",
    "trainer.ema.decay=0.9",
    "trainer.ema.weights=better",
    "trainer.early_stopping.patience=2",
    "trainer.keep_checkpoints=2",
    "trainer.keep_checkpoints_by=best",
)
KEYS = ("train/loss", "train/lr", "train/epoch_loss", "val/top1", "val/loss", "val_ema/top1", "val_ema/loss")


def versions_of(uri: str, run_id: str) -> list[tuple[str, str, str]]:
    """(epoch, shipped weights, val/top1 tag) of each version of the run, by epoch."""
    found = client_of(uri).search_model_versions(f"run_id='{run_id}'")
    return sorted((v.tags["epoch"], v.tags["weights"], v.tags["val/top1"]) for v in found)


def test_kill_9_then_resume_auto_with_ema_early_stopping_and_best_k_on_is_exact(tmp_path):
    uri, cache = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "cache"
    reference = run_cli(
        "vit_exp.run", *train_args(uri, cache, "reference", tmp_path / "reference", *RECIPE_ON)
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    want = only_run(uri, "reference")

    step = random.Random().randint(1, STEPS_PER_EPOCH - 1)
    first = train_args(uri, cache, "killed", tmp_path / "first", *RECIPE_ON)
    code = train_until(first, tmp_path / "first.out", f"epoch 2/{EPOCHS} step {step}/", signal.SIGKILL)
    assert code == -signal.SIGKILL
    again = run_cli(
        "vit_exp.run", *train_args(uri, cache, "killed", tmp_path / "again", *RECIPE_ON, "resume=auto")
    )
    assert again.returncode == 0, again.stderr[-3000:]
    got = only_run(uri, "killed")
    assert got.info.status == "FINISHED" and got.data.tags["vit_exp.attempts"] == "2"

    for key in KEYS:
        mine, theirs = history(uri, got.info.run_id, key), history(uri, want.info.run_id, key)
        assert [s for s, _ in mine] == [s for s, _ in theirs], f"{key}: steps differ"
        worst = max(abs(a - b) for (_, a), (_, b) in zip(mine, theirs, strict=True))
        assert worst == 0.0, f"{key}: differs from the uninterrupted run by {worst}"
    assert versions_of(uri, got.info.run_id) == versions_of(uri, want.info.run_id)
    assert got.data.tags.get("vit_exp.stopped_early") == want.data.tags.get("vit_exp.stopped_early")
