"""Full-state checkpoints, the loop's start position, seeded epochs and the resume helpers."""

from __future__ import annotations

import contextlib
import json
import signal

import numpy as np
import pytest

from tests.helpers.data import write_image_folder
from tests.helpers.models import tiny_vit
from tests.unit.test_loop import Recorder, _setup, epochs_of
from vit_exp.train.plan import TrainPlan


def _train_network(num_classes: int = 3):
    import mindspore as ms
    from mindspore import nn

    from vit_exp.config import group_settings

    net = tiny_vit(num_classes=num_classes)
    rates = np.full(8, 1e-2, np.float32)
    optimizer = group_settings("optim", "adam", lr=1e-2).build(net.trainable_params(), rates)
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    return ms, net, ms.amp.build_train_network(net, optimizer, loss, level="O0")


def test_a_full_state_checkpoint_restores_network_and_optimizer_and_loads_as_pretrained(tmp_path):
    from vit_exp.models.checkpoint import is_network_entry, load_pretrained, write_network_checkpoint
    from vit_exp.train.state import (
        STATE_ENTRY,
        load_training_network,
        read_checkpoint,
        read_training_state,
        state_file,
    )
    from vit_exp.train.state import save_training_checkpoint as save

    ms, net, step = _train_network()
    images = ms.Tensor(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(np.array([0, 1, 2, 0], np.int32))
    for _ in range(3):
        step(images, labels)
    path = save(step, tmp_path / "full.ckpt", {"position": {"epoch": 1}, "seed": 7})
    saved = {p.name: p.asnumpy().copy() for p in step.get_parameters()}
    assert int(saved["global_step"]) == 3 and np.abs(saved["moment2.dense.weight"]).sum() > 0
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed

    _, _, fresh = _train_network()
    load_training_network(fresh, read_checkpoint(path), path)
    restored = {p.name: p.asnumpy() for p in fresh.get_parameters()}
    assert all(np.array_equal(saved[name], restored[name]) for name in saved)  # moments, step, weights
    assert read_training_state(path)["seed"] == 7

    # The checkpoint's own file is the network alone (what a version ships and pretrained= loads);
    # the optimizer and the training state are in its .state.ckpt.
    assert set(ms.load_checkpoint(str(path))) == {p.name for p in net.get_parameters()}
    assert all(is_network_entry(p.name) for p in net.get_parameters())
    states = state_file(path)
    assert states.name == "full.state.ckpt" and "moment1.dense.weight" in ms.load_checkpoint(str(states))
    assert path.stat().st_size < 0.4 * (path.stat().st_size + states.stat().st_size)
    report = load_pretrained(tiny_vit(num_classes=3), str(path), tmp_path)  # model.pretrained= use
    assert report.ignored == [] and len(report.loaded) == len(list(net.get_parameters()))
    assert read_training_state(states)["seed"] == 7  # either file names the checkpoint

    # A single-file checkpoint of the earlier layout still resumes and loads as pretrained.
    single = tmp_path / "single.ckpt"
    ms.save_checkpoint(step, str(single), append_dict={STATE_ENTRY: json.dumps({"version": 1, "seed": 3})})
    assert read_training_state(single)["seed"] == 3 and "moment1.dense.weight" in read_checkpoint(single)
    report = load_pretrained(tiny_vit(num_classes=3), str(single), tmp_path)
    assert "moment1.dense.weight" in report.ignored and "vit_exp.training_state" in report.ignored
    network = write_network_checkpoint(single, tmp_path / "network.ckpt")
    assert set(ms.load_checkpoint(str(network))) == {p.name for p in net.get_parameters()}


def test_a_truncated_checkpoint_is_refused_and_a_parameters_only_one_has_no_state(tmp_path):
    from vit_exp.errors import CheckpointError
    from vit_exp.models.checkpoint import save_checkpoint
    from vit_exp.train.state import read_checkpoint, read_training_state, save_training_checkpoint, state_file

    _, net, step = _train_network()
    path = save_training_checkpoint(step, tmp_path / "full.ckpt", {"position": {}})
    states = state_file(path)
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_training_state(path)
    other = save_training_checkpoint(step, tmp_path / "other.ckpt", {"position": {}})
    other.write_bytes(other.read_bytes()[:100])  # the network file cut short: its state file says so
    with pytest.raises(CheckpointError, match=r"network file .*other.ckpt .* is 100 bytes"):
        read_training_state(other)
    with pytest.raises(CheckpointError):
        read_checkpoint(other)
    other.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        read_training_state(other)
    assert read_training_state(save_checkpoint(net, tmp_path / "weights.ckpt")) is None


def test_the_loop_continues_from_a_position_and_stops_on_a_signal():
    from vit_exp.train.loop import run_training
    from vit_exp.train.state import LoopPosition

    _, _, _, step, dataset, _, _ = _setup()
    plan = TrainPlan(epochs=3, steps_per_epoch=3, total_steps=9, validation_epochs=(1, 2, 3))

    def train_from(position: LoopPosition) -> Recorder:
        recorder = Recorder()
        run_training(
            step,
            epochs_of(dataset),
            plan=plan,
            callbacks=[recorder],
            validate=lambda: {"top1": 1.0, "eval_loss": 0.0},
            start=position,
        )
        return recorder

    resumed = train_from(LoopPosition(epoch=2, step_in_epoch=1, global_step=4))
    assert resumed.steps == [5, 6, 7, 8, 9]
    assert resumed.events[:2] == ["begin", "epoch_begin 2"] and set(resumed.eval_seen) == {2, 3}
    # the epoch's steps done, its validation not: it validates first
    pending = train_from(LoopPosition(epoch=1, step_in_epoch=3, global_step=3))
    assert pending.steps == [4, 5, 6, 7, 8, 9] and set(pending.eval_seen) == {1, 2, 3}

    stops = []

    def stop(run_context, epoch_done):
        stops.append((run_context.original_args().cur_step_num, epoch_done))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(
            step,
            epochs_of(dataset),
            plan=plan,
            callbacks=[Recorder()],
            stop_signal=lambda: True,
            on_stop_signal=stop,
        )
    assert stops == [(1, False)]


def test_each_epoch_has_its_own_seeded_batches_and_a_skip_replays_them_exactly(tmp_path):
    from vit_exp.data.folder import ImageFolderData
    from vit_exp.data.pipeline import TrainBatches
    from vit_exp.device import set_seed

    set_seed(0)
    root = write_image_folder(tmp_path / "ds", ["a", "b", "c"], per_class=8, size=16)
    data = ImageFolderData(root=root, train_crop_scale=(0.3, 1.0), hflip_prob=0.5, val_resize_margin=0)

    def arrays(batches):
        return [(x.asnumpy(), y.asnumpy()) for x, y in batches]

    exact = TrainBatches(data, 32, 4, seed=3, exact_skip=True)
    epoch2 = arrays(exact.epoch(2))
    assert len(epoch2) == exact.steps_per_epoch == 6
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(epoch2, arrays(exact.epoch(2)), strict=True))
    epoch1 = arrays(exact.epoch(1))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(epoch1, epoch2, strict=True))  # reshuffled
    skipped = arrays(exact.epoch(2, skip=4))
    assert len(skipped) == 2
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(skipped, epoch2[4:], strict=True))

    fast = arrays(TrainBatches(data, 32, 4, seed=3, exact_skip=False).epoch(2, skip=4))
    assert [y.tolist() for _, y in fast] == [y.tolist() for _, y in epoch2[4:]]  # the same images


def test_resume_compares_configs_without_the_keys_that_do_not_change_the_result():
    from vit_exp.tracking.resume import IGNORED_KEYS, config_differences

    then = {"optim.lr": "0.001", "trainer.epochs": "30", "paths.output_dir": "/a", "resume": "None"}
    now = {"optim.lr": "0.002", "trainer.epochs": "30", "paths.output_dir": "/b", "resume": "auto"}
    assert config_differences(then, now) == ["optim.lr: 0.001 -> 0.002"]
    assert config_differences({}, {"trainer.seed": "1"}) == ["trainer.seed: (not set) -> 1"]
    assert "trainer.print_every_n_steps" in IGNORED_KEYS and "trainer.seed" not in IGNORED_KEYS


def test_step_checkpoints_are_kept_by_their_own_rule_and_resume_picks_the_newest_whole_one(tmp_path):
    from mindspore import nn
    from mindspore.train import RunContext

    from vit_exp.tracking.resume import latest_checkpoint
    from vit_exp.train.callbacks import CheckpointSaver, EpochRecord, TrainHistory
    from vit_exp.train.loop import CallbackParams
    from vit_exp.train.state import checkpoint_files, state_file

    history = TrainHistory(batch_size=8, lr_values=[])
    saver = CheckpointSaver(tmp_path, "m", history, every_n_epochs=1, keep=5, every_n_steps=2, keep_steps=2)
    cb = CallbackParams(train_network=nn.Dense(2, 2), batch_num=5, cur_epoch_num=1, cur_step_num=0)
    context = RunContext(cb)
    for step in range(1, 11):
        cb.cur_step_num, cb.cur_epoch_num = step, (step - 1) // 5 + 1
        saver.on_train_step_end(context)
        if step % 5 == 0:
            history.epochs.append(EpochRecord(cb.cur_epoch_num, step, 1.0, 1.0, 1.0, val={"top1": 0.5}))
            saver.on_train_epoch_end(context)
    kinds = [(c.kind, c.step) for c in saver.written]
    assert kinds == [("step", 2), ("step", 4), ("epoch", 5), ("step", 6), ("step", 8), ("epoch", 10)]
    kept = [(c.kind, c.step) for c in saver.on_disk]
    assert kept == [("epoch", 5), ("step", 6), ("step", 8), ("epoch", 10)]
    files = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert files == sorted(f.name for c in saver.on_disk for f in checkpoint_files(c.path))

    newest = saver.on_disk[-1].path
    cut = state_file(newest)  # cut short: the resume falls back to step 8
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    path, state = latest_checkpoint([tmp_path])
    assert path == saver.on_disk[-2].path and state["position"]["global_step"] == 8
    assert state["position"]["epoch_done"] is False and state["position"]["step_in_epoch"] == 3


def test_a_checkpoint_written_in_the_background_is_the_same_file_and_counts_once_whole(tmp_path):
    """``background=True``: the files are those a synchronous save writes, byte for byte (fp32,
    same layout), taken in (``written``, ``checkpoint_written``) only once whole; training changing the
    parameters meanwhile does not reach the file; a preemption at that step gets that checkpoint."""
    from mindspore.train import RunContext

    from vit_exp.train.callbacks import CheckpointListener, CheckpointSaver, EpochRecord, TrainHistory
    from vit_exp.train.loop import CallbackParams
    from vit_exp.train.state import checkpoint_files

    ms, _, step = _train_network()
    images = ms.Tensor(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(np.array([0, 1, 2, 0], np.int32))
    step(images, labels)
    history = TrainHistory(batch_size=4, lr_values=[])
    history.epochs.append(EpochRecord(1, 1, 1.0, 1.0, 1.0, val={"top1": 0.5}))
    history.state_dict = lambda: {"train_seconds": 1.0}  # the real one holds the time it is called
    cb = CallbackParams(train_network=step, batch_num=1, cur_epoch_num=1, cur_step_num=1)
    context = RunContext(cb)
    savers, taken_in = {}, []

    class TakenIn(CheckpointListener):
        def __init__(self, mode: str):
            self.mode = mode

        def checkpoint_written(self, saved) -> None:
            taken_in.append((self.mode, len(savers[self.mode].written)))

    for mode in ("sync", "background"):
        savers[mode] = CheckpointSaver(
            tmp_path / mode,
            "m",
            history,
            every_n_epochs=1,
            keep=5,
            background=mode == "background",
            listeners=[TakenIn(mode)],
        )
    savers["sync"].on_train_epoch_end(context)
    savers["background"].on_train_epoch_end(context)
    step(images, labels)  # the next step changes every parameter while the file may be written
    background = savers["background"]
    assert background.save_now(context, "preempt", epoch_done=True) is background.written[0]
    assert taken_in == [("sync", 1), ("background", 1)]
    written = {mode: checkpoint_files(saver.written[0].path) for mode, saver in savers.items()}
    for sync_file, background_file in zip(written["sync"], written["background"], strict=True):
        assert background_file.read_bytes() == sync_file.read_bytes()
    assert not list((tmp_path / "background").glob(".*"))  # no partial file left

    cb.cur_epoch_num = cb.cur_step_num = 2
    history.epochs.append(EpochRecord(2, 2, 1.0, 1.0, 1.0, val={"top1": 0.6}))
    background.on_train_epoch_end(context)
    background.on_train_end(context)  # waits for the write: the last checkpoint is whole
    assert [c.step for c in background.written] == [1, 2] and taken_in[-1] == ("background", 2)
    assert all(f.is_file() for f in checkpoint_files(background.written[-1].path))


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR2"])
def test_a_signal_saves_after_the_step_and_a_launchers_sigusr2_handler_runs_after_the_save(sig):
    import os
    import signal
    from pathlib import Path

    from mindspore.train import Callback

    from vit_exp.stop import REQUEST, install
    from vit_exp.train.loop import run_training
    from vit_exp.train.preemption import Preempted, Preemption

    events = []

    class SignalAtStep2(Callback):
        def on_train_step_end(self, run_context):
            if run_context.original_args().cur_step_num == 2:
                os.kill(os.getpid(), getattr(signal, sig))

    def save(run_context, epoch_done):
        events.append(("saved", run_context.original_args().cur_step_num, epoch_done))
        return Path("checkpoint.ckpt")

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}
    signal.signal(signal.SIGUSR2, lambda signum, frame: events.append(("launcher", signum)))
    install()  # as the CLI does: the launcher's SIGUSR2 handler runs after the checkpoint
    try:
        _, _, _, step, dataset, _, _ = _setup()
        plan = TrainPlan(epochs=3, steps_per_epoch=3, total_steps=9, validation_epochs=())
        with pytest.raises(Preempted) as stopped, Preemption(30, save) as preemption:
            run_training(
                step,
                epochs_of(dataset),
                plan=plan,
                callbacks=[SignalAtStep2()],
                stop_signal=lambda: preemption.requested,
                on_stop_signal=preemption.stop,
            )
        assert stopped.value.step == 2 and isinstance(stopped.value, KeyboardInterrupt)
        launcher = [("launcher", signal.SIGUSR2)] if sig == "SIGUSR2" else []
        assert events == [("saved", 2, False), *launcher]
        assert REQUEST.listener is None and not preemption.requested  # the loop no longer listens
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def test_a_signal_while_a_record_is_stored_waits_for_it_then_stops_as_any_signal():
    """``stop.deferred`` (an outbox record): the signal acts when the block ends; the first asks the
    listening loop to stop, a second one (or any, with no loop listening) raises KeyboardInterrupt."""
    import os
    import signal

    from vit_exp.stop import REQUEST, deferred, install

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}
    install()
    heard, stored = [], []
    try:
        REQUEST.listen(heard.append)
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            stored.append(heard.copy())
        assert stored == [[]] and heard == [signal.SIGTERM] and REQUEST.signals == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt), deferred():
            os.kill(os.getpid(), signal.SIGINT)
            stored.append("whole")
        assert stored[-1] == "whole" and heard == [signal.SIGTERM]
        REQUEST.listen(None)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        REQUEST.listen(None)
        for number, handler in previous.items():
            signal.signal(number, handler)


def test_a_checkpoint_that_does_not_come_within_the_grace_period_ends_the_process(tmp_path):
    """A step that outlasts ``trainer.preempt_grace_s`` after SIGTERM: ``on_timeout`` (the run ends
    KILLED) runs and the process exits 143 instead of waiting for the scheduler's SIGKILL."""
    import os
    import subprocess
    import sys
    import textwrap
    import time

    from vit_exp.config import PROJECT_ROOT

    script = tmp_path / "stuck.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, time
            from vit_exp.stop import install
            from vit_exp.train.preemption import Preemption

            def on_timeout():
                print("ended KILLED", flush=True)

            install()  # as the CLI does
            with Preemption(0.5, save=lambda rc, done: None, on_timeout=on_timeout):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)  # a step that does not end
            print("not reached", flush=True)
            """
        )
    )
    start = time.monotonic()
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT)}  # this checkout's vit_exp, as in the test
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ended KILLED"
    assert "trainer.preempt_grace_s=0.5 s" in proc.stderr  # the log line names the setting to raise
    assert time.monotonic() - start < 20


@pytest.mark.parametrize(
    ("policy", "kind", "top1", "registers"),
    [
        ("every", "epoch", 0.5, True),  # its attempt may have died before queueing it
        ("every", "preempt", None, False),  # preempt and step checkpoints are not versions
        ("best", "epoch", 0.9, True),  # better than every version so far
        ("best", "epoch", 0.7, False),
        ("last", "epoch", 0.9, False),  # the last one comes at the end
    ],
)
def test_a_resumed_run_registers_the_checkpoint_it_starts_from_only_if_the_policy_wanted_it(
    policy, kind, top1, registers, tmp_path
):
    from vit_exp.config import group_settings
    from vit_exp.tracking.registry.checkpoints import CheckpointRegistration
    from vit_exp.train.callbacks import EpochRecord, SavedCheckpoint

    earlier = SavedCheckpoint(
        tmp_path / "m-e001-s000010.ckpt", EpochRecord(1, 10, 1.0, 1.0, 1.0, {"top1": 0.8})
    )
    queue = []
    registration = CheckpointRegistration(
        group_settings("registry", register=policy, name="m"), "run", tmp_path, put=queue.append
    )
    registration.load_state_dict({"registered": [earlier.state_dict()]})
    assert registration.queued == [earlier]
    record = EpochRecord(2, 20, 1.0, 1.0, 1.0, {"top1": top1}) if top1 is not None else None
    registration.catch_up(SavedCheckpoint(tmp_path / "m-e002-s000020.ckpt", record, kind, 20, 2))
    # an epoch checkpoint is a LoggedModel of its run whatever the policy; a version if it wanted one
    assert [(int(r.step), r.register) for r in queue] == ([(20, registers)] if kind == "epoch" else [])


def _attempt(directory, start=None, checkpoint=None, stop_at=None, logged=None):
    """One attempt of a 3 x 3-step training with the job's callbacks (a run's metric logger: details
    every 4 steps, so an epoch's last step is logged at its end); ``stop_at``: a preemption is
    handled after that step. Returns the metric points (key, step, value) it logged and its saver."""
    from vit_exp.session import TrainingCallbacks
    from vit_exp.stop import REQUEST
    from vit_exp.tracking.record.metrics import MlflowMetricLogger
    from vit_exp.train.callbacks import CheckpointSaver, ConsoleProgress, TrainHistory
    from vit_exp.train.loop import run_training
    from vit_exp.train.preemption import Preempted, Preemption
    from vit_exp.train.state import load_training_network, read_checkpoint, read_training_state

    _, _, _, step, dataset, _, _ = _setup()
    plan = TrainPlan(epochs=3, steps_per_epoch=3, total_steps=9, validation_epochs=(1, 2, 3))
    history = TrainHistory(8, np.linspace(1e-2, 1e-3, 9).astype(np.float32))
    points = []
    logger = MlflowMetricLogger(
        lambda record: points.extend((k, s, v) for k, v, _, s in record.metrics),
        history,
        details_every_n_steps=4,
        logged_steps=logged,
    )
    saver = CheckpointSaver(
        directory, "m", history, 1, 5, listeners=[logger], run_state={"run_id": None, "config": {}}
    )
    callbacks = TrainingCallbacks(history, ConsoleProgress(history, plan, 1), saver, logger)
    if checkpoint is not None:
        load_training_network(step, read_checkpoint(checkpoint), checkpoint)
        callbacks.load_state(read_training_state(checkpoint), checkpoint)
    preemption = Preemption(30, lambda rc, done: saver.save_now(rc, "preempt", done).path)

    def signalled() -> bool:  # SIGTERM arrives during step ``stop_at``, as the CLI's handler takes it
        if history.global_step == stop_at and not preemption.requested:
            REQUEST._receive(signal.SIGTERM, None)
        return preemption.requested

    with contextlib.suppress(Preempted), preemption, callbacks_flushed(logger):
        run_training(
            step,
            epochs_of(dataset),
            plan=plan,
            callbacks=callbacks.ordered,
            validate=lambda: {"top1": 1.0, "top5": 1.0, "eval_loss": 0.5},
            start=start,
            stop_signal=signalled,
            on_stop_signal=preemption.stop,
        )
    return points, saver


@contextlib.contextmanager
def callbacks_flushed(logger):
    try:
        yield
    finally:  # as training_session does
        logger.flush()


def test_a_preemption_after_an_epochs_last_step_loses_none_of_that_epochs_end_points(tmp_path):
    """The signal is handled after step 6, the last of epoch 2, before its validation: the checkpoint
    says epoch 2 is not done and the resumed attempt ends it (no step runs first). The resumed run
    holds every point the uninterrupted one does, at the same steps, the epoch-end details too."""
    from vit_exp.train.state import position_of, read_training_state

    reference, _ = _attempt(tmp_path / "reference")
    first, saver = _attempt(tmp_path / "first", stop_at=6)
    (saved,) = [c for c in saver.written if c.kind == "preempt"]
    position = position_of(read_training_state(saved.path))
    assert (position.global_step, position.step_in_epoch, position.epoch_done) == (6, 3, False)

    logged = {}
    for key, step, _ in first:
        logged[key] = max(step, logged.get(key, -1))  # what logged_steps reads from the run
    second, _ = _attempt(tmp_path / "second", position, saved.path, logged=logged)

    def keys_and_steps(points):
        return sorted((key, step) for key, step, _ in points)

    assert keys_and_steps(first + second) == keys_and_steps(reference)
    lr = {step: value for key, step, value in first + second if key == "train/lr"}
    assert lr == {step: value for key, step, value in reference if key == "train/lr"}
