"""The recipe's smoothed cross-entropy, and that a failing MLflow store never stops training."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest


def test_label_smoothing_matches_the_recipe_formula():
    import mindspore as ms

    from vit_exp.train.losses import CrossEntropySmooth

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0], dtype=np.int32)
    s, c = 0.1, 5
    target = np.full((6, c), s / (c - 1))
    target[np.arange(6), labels] = 1 - s
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = float(-(target * log_softmax).sum(1).mean())
    got = float(CrossEntropySmooth(c, s)(ms.Tensor(logits), ms.Tensor(labels)).asnumpy())
    assert got == pytest.approx(expected, rel=1e-5)


def test_a_record_the_store_refuses_is_warned_about_once_and_training_goes_on(
    tracking_store, tmp_path, caplog
):
    """The outbox sends to a real SQLite store a run that does not exist: every batch is refused."""
    from mindspore.train import RunContext

    from vit_exp.tracking.record.metrics import MlflowMetricLogger
    from vit_exp.tracking.record.outbox import Outbox, RunSender
    from vit_exp.tracking.store import use_store
    from vit_exp.train.callbacks import TrainHistory
    from vit_exp.train.loop import CallbackParams

    outbox = Outbox(tmp_path / "outbox", RunSender(use_store(tracking_store), "f" * 32), background=False)
    history = TrainHistory(8, np.full(200, 1e-3, dtype=np.float32))
    logger = MlflowMetricLogger(outbox.put, history, max_buffered=40)
    context = RunContext(CallbackParams())
    with caplog.at_level(logging.WARNING, logger="vit_exp.tracking"):
        for step in range(1, 121):
            history.global_step, history.last_loss, history.last_step_ms = step, 1.0, 10.0
            logger.on_train_step_end(context)
        logger.flush()
    warnings = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(warnings) == 1 and outbox.unsent == 0  # skipped, not retried forever


def test_records_wait_in_the_journal_while_the_store_is_away_and_go_later(tracking_store, tmp_path):
    """A sender that fails as an absent server does keeps every record; a new outbox sends them."""
    import mlflow

    from vit_exp.tracking.record.outbox import MetricsRecord, Outbox, RunSender, load_records
    from vit_exp.tracking.store import use_store

    client = use_store(tracking_store)
    run = client.create_run(client.create_experiment("outbox"))

    def away(record):
        raise ConnectionError("Max retries exceeded with url: ... Connection refused")

    batches = [[["train/loss", 1.0 / step, 1000 + step, step]] for step in range(1, 6)]
    outbox = Outbox(tmp_path / "outbox", away, background=False)
    for batch in batches:
        outbox.put(MetricsRecord(batch))
    assert outbox.unsent == 5 and len(load_records(tmp_path / "outbox")) == 5
    later = Outbox(tmp_path / "outbox", RunSender(client, run.info.run_id), background=False)
    assert later.send_pending() == 0
    history = mlflow.MlflowClient(tracking_store).get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert later.send_pending() == 0 and sorted(m.step for m in history) == [1, 2, 3, 4, 5]


def test_a_version_holds_its_checkpoint_until_stored_even_once_pruned(tmp_path):
    """A version record links its checkpoint under held/: pruning the checkpoint while the store is
    away leaves the record a whole file; the link goes once the record is stored, or at the next
    start when a killed process stored it but did not delete it."""
    from vit_exp.tracking.record.outbox import HELD_DIR, Outbox
    from vit_exp.tracking.registry.versions import version_record

    checkpoint = tmp_path / "ckpt" / "vit-e001-s000010.ckpt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"network weights")
    folder = tmp_path / "outbox"
    record = version_record(checkpoint, 10, "vit", {}, tmp_path / "inputs", 5, folder / HELD_DIR)
    held = folder / HELD_DIR / checkpoint.name
    assert record.checkpoint == str(held) and record.release == [str(held)]

    def away(record):
        raise ConnectionError("Max retries exceeded with url: ... Connection refused")

    Outbox(folder, away, background=False).put(record)
    checkpoint.unlink()  # pruned while the store is away
    stored: list[bytes] = []
    later = Outbox(folder, lambda r: stored.append(Path(r.checkpoint).read_bytes()), background=False)
    assert later.send_pending() == 0
    assert stored == [b"network weights"] and not held.exists()

    checkpoint.write_bytes(b"network weights")
    again = version_record(checkpoint, 10, "vit", {}, tmp_path / "inputs", 5, folder / HELD_DIR)
    Outbox(folder, stored.append, background=False).put(again)
    Path(again.checkpoint).write_bytes(b"left by a killed process")  # stored, not yet released
    Outbox(folder, stored.append, background=False)
    assert not held.exists()


def _old_journal(folder: Path, run_id: str, uri: str, *extra: dict) -> list[str]:
    """Journal lines as the outbox wrote them before its records were typed (plain dicts)."""
    import json

    held = str(folder / "held" / "m-e001-s000010.ckpt")
    lines = [
        {"kind": "run", "run_id": run_id, "tracking_uri": uri},
        *({"kind": "metrics", "metrics": [["train/loss", 1.0 / s, 1000 + s, s]]} for s in (1, 2)),
        *extra,
        {"kind": "end", "status": "FAILED", "error": "DataError: data.root: folder not found"},
    ]
    version = {"kind": "version", "checkpoint": held, "step": 10, "name": "vit", "tags": {"epoch": "1"}}
    version |= {"model_inputs": str(folder / "inputs"), "top_k": 5, "network_only": True, "release": [held]}
    folder.mkdir(parents=True)
    text = [json.dumps(line) for line in lines]
    (folder / "journal.jsonl").write_text("".join(f"{line}\n" for line in text))
    return [*text, json.dumps(version), json.dumps({"kind": "end", "status": "FINISHED"})]


def test_a_journal_of_the_untyped_outbox_replays_with_sync_and_reads_back_byte_for_byte(
    tracking_store, tmp_path
):
    """``vit_exp.sync`` sends a journal written before the records were typed; every kind read from
    such lines (a held version, an end with and without error) is written back as the same line."""
    import json

    import mlflow
    from omegaconf import OmegaConf

    from vit_exp.sync import sync
    from vit_exp.tracking.record.outbox import RECORD_TYPES, load_records
    from vit_exp.tracking.store import use_store

    client = use_store(tracking_store)
    run_id = client.create_run(client.create_experiment("old")).info.run_id
    folder = tmp_path / "run" / "mlflow_outbox"
    lines = _old_journal(folder, run_id, tracking_store)
    assert [r.to_json() for r in load_records(folder)] == lines[:4]
    for line in lines:
        data = json.loads(line)
        assert RECORD_TYPES[data["kind"]].from_json(data).to_json() == line
    assert sync(OmegaConf.create({"outbox": str(folder), "tracking_uri": None})) == 4
    client = mlflow.MlflowClient(tracking_uri=tracking_store)
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [1, 2]
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["vit_exp.error"].startswith("DataError: data.root")


@pytest.mark.parametrize(
    "line", [{"kind": "dataset", "path": "x"}, {"kind": "end", "status": "FINISHED", "when": 1}, ["end"]]
)
def test_a_journal_line_of_an_unknown_kind_is_one_line_naming_the_journal(tracking_store, tmp_path, line):
    from omegaconf import OmegaConf

    from vit_exp.errors import DataError
    from vit_exp.sync import sync

    folder = tmp_path / "run" / "mlflow_outbox"
    _old_journal(folder, "f" * 32, tracking_store, line)
    with pytest.raises(DataError) as error:
        sync(OmegaConf.create({"outbox": str(folder), "tracking_uri": None}))
    message = str(error.value)
    assert (
        message.startswith(f"outbox: {folder / 'journal.jsonl'} line 4 is not a record")
        and "\n" not in message
    )


def _drive(logger, history, context, steps, step_ms):
    for step in steps:
        history.global_step, history.last_loss, history.last_step_ms = step, 1.0 / step, step_ms(step)
        logger.on_train_step_end(context)


def test_loss_every_step_and_lr_speed_as_means_every_n_steps_and_at_epoch_end(tracking_store, tmp_path):
    import mlflow
    from mindspore.train import RunContext

    from vit_exp.tracking.record.metrics import MlflowMetricLogger
    from vit_exp.train.callbacks import EpochRecord, TrainHistory
    from vit_exp.train.loop import CallbackParams

    mlflow.set_tracking_uri(tracking_store)
    lrs = np.linspace(1e-3, 1e-4, 30).astype(np.float32)
    history = TrainHistory(8, lrs)
    context = RunContext(CallbackParams())
    from vit_exp.tracking.record.outbox import Outbox, RunSender
    from vit_exp.tracking.store import use_store

    client = use_store(tracking_store)
    run = client.create_run(client.create_experiment("logger"))
    outbox = Outbox(tmp_path / "outbox", RunSender(client, run.info.run_id), background=False)
    logger = MlflowMetricLogger(outbox.put, history, details_every_n_steps=4)
    _drive(logger, history, context, range(1, 11), step_ms=float)  # step i takes i ms
    history.epochs.append(EpochRecord(epoch=1, step=10, train_loss=0.5, seconds=1.0, images_per_s=1.0))
    logger.on_train_epoch_end(context)
    logger.flush()

    def series(key):
        return [
            (m.step, m.value)
            for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        ]

    assert [s for s, _ in series("train/loss")] == list(range(1, 11))
    # windows: steps 1-4, 5-8, then 9-10 closed by the epoch end
    assert series("train/step_time_ms") == [(4, 2.5), (8, 6.5), (10, 9.5)]
    assert series("train/throughput_img_s") == [
        (s, pytest.approx(8000.0 / ms)) for s, ms in [(4, 2.5), (8, 6.5), (10, 9.5)]
    ]
    assert series("train/lr") == [(s, pytest.approx(float(lrs[s - 1]))) for s in (4, 8, 10)]


@pytest.mark.parametrize(("objective", "best_epoch"), [("val/top1", 2), ("val/loss", 3)])
def test_the_best_epoch_by_the_optimized_metric_gets_keys_of_its_own_at_the_end(objective, best_epoch):
    """The run page shows a metric's last value: best/val_* and best/epoch show the best epoch's."""
    from mindspore.train import RunContext

    from vit_exp.tracking.record.metrics import MlflowMetricLogger
    from vit_exp.train.callbacks import EpochRecord, TrainHistory
    from vit_exp.train.loop import CallbackParams

    history = TrainHistory(8, [])
    vals = [{"top1": 0.5, "loss": 0.9}, {"top1": 0.8, "loss": 0.7}, {"top1": 0.7, "loss": 0.6}, {}]
    history.epochs = [EpochRecord(i + 1, (i + 1) * 10, 1.0, 1.0, 1.0, val) for i, val in enumerate(vals)]
    history.global_step = 40
    points = []
    logger = MlflowMetricLogger(lambda r: points.extend(r.metrics), history, objective=objective)
    logger.on_train_end(RunContext(CallbackParams()))
    best = {key: (value, step) for key, value, _, step in points}
    expected = vals[best_epoch - 1]
    assert best == {
        "best/val_top1": (expected["top1"], 40),
        "best/val_loss": (expected["loss"], 40),
        "best/epoch": (best_epoch, 40),
    }
