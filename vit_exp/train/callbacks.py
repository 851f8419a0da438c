"""MindSpore callbacks of the training loop: the history of a run, console progress, checkpoint files.

Only ``TrainHistory`` reads MindSpore's ``cb_params``; the other callbacks read it, so it runs first.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from mindspore import Tensor
from mindspore.train import Callback

if TYPE_CHECKING:
    from vit_exp.train.progress import ProgressBar

log = logging.getLogger("vit_exp.train")


@dataclass
class EpochRecord:
    """Results of one epoch: mean train loss, wall time, and validation metrics when it ran (of the
    EMA weights too in ``val_ema``, with ``trainer.ema`` on)."""

    epoch: int
    step: int
    train_loss: float
    seconds: float
    images_per_s: float
    val: dict[str, float] = field(default_factory=dict)
    val_ema: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint file, its step and epoch, and ``kind``: "epoch" (after validation, with its
    ``record``), "step" (every ``checkpoint_every_n_steps``) or "preempt" (on SIGTERM/Ctrl-C);
    ``weights``: what its network file holds, "raw" or "ema" (``trainer.ema.weights``)."""

    path: Path
    record: EpochRecord | None
    kind: str = "epoch"
    step: int = 0
    epoch: int = 0
    weights: str = "raw"

    def score(self, objective: str) -> float:
        """``objective`` of the weights this checkpoint holds (NaN when its epoch did not measure it)."""
        from vit_exp.train.objective import epoch_score

        return epoch_score(objective, self.record, self.weights)

    @property
    def val(self) -> dict[str, float]:
        """The val metrics of the weights this checkpoint holds."""
        if self.record is None:
            return {}
        return self.record.val_ema if self.weights == "ema" else self.record.val

    def state_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}

    @classmethod
    def from_state(cls, state: dict) -> SavedCheckpoint:
        record = EpochRecord(**state["record"]) if state.get("record") else None
        kind, step, epoch = state["kind"], int(state["step"]), int(state["epoch"])
        return cls(Path(state["path"]), record, kind, step, epoch, state.get("weights", "raw"))


class TrainHistory(Callback):
    """Records per-step loss and timing and per-epoch results; ``lr_values[i]`` is step i + 1's LR."""

    def __init__(self, batch_size: int, lr_values: np.ndarray):
        super().__init__()
        self.batch_size = batch_size
        self.lr_values = np.asarray(lr_values)
        self.global_step = 0
        self.last_loss = math.nan
        self.last_step_ms = math.nan
        self.epochs: list[EpochRecord] = []
        self.train_seconds = 0.0
        self._step_start = 0.0
        self._epoch_start = 0.0
        self._epoch_losses: list[float] = []
        self._epoch_step_seconds = 0.0
        self._train_start = 0.0

    @property
    def lr(self) -> float:
        """LR used by the last optimizer step."""
        if self.global_step == 0 or not len(self.lr_values):
            return math.nan
        return float(self.lr_values[min(self.global_step, len(self.lr_values)) - 1])

    @property
    def throughput(self) -> float:
        """Images per second of the last step."""
        return self.batch_size * 1000.0 / self.last_step_ms if self.last_step_ms > 0 else math.nan

    @property
    def last_epoch(self) -> EpochRecord | None:
        return self.epochs[-1] if self.epochs else None

    def best(self, metric: str = "top1") -> EpochRecord | None:
        """The epoch with the highest validation ``metric`` (None when validation never ran)."""
        scored = [e for e in self.epochs if metric in e.val]
        return max(scored, key=lambda e: e.val[metric]) if scored else None

    def state_dict(self) -> dict:
        """What a resumed run needs to continue this history exactly (epoch means, best epoch)."""
        return {
            "global_step": self.global_step,
            "epochs": [asdict(e) for e in self.epochs],
            "epoch_losses": list(self._epoch_losses),
            "epoch_step_seconds": self._epoch_step_seconds,
            "epoch_seconds": time.perf_counter() - self._epoch_start if self._epoch_losses else 0.0,
            "train_seconds": self._seconds_before + time.perf_counter() - self._train_start,
        }

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.epochs = [EpochRecord(**e) for e in state["epochs"]]
        self._epoch_losses = [float(x) for x in state["epoch_losses"]]
        self._epoch_step_seconds = float(state["epoch_step_seconds"])
        self._resumed_epoch_seconds = float(state["epoch_seconds"])
        self._seconds_before = float(state["train_seconds"])

    _resumed_epoch_seconds = 0.0  # time the resumed epoch took before the interruption
    _seconds_before = 0.0  # training time of earlier attempts

    def on_train_begin(self, run_context) -> None:
        self._train_start = time.perf_counter()

    def on_train_epoch_begin(self, run_context) -> None:
        # A resumed epoch keeps the losses and time of the steps done before the interruption.
        self._epoch_start = time.perf_counter() - self._resumed_epoch_seconds
        self._resumed_epoch_seconds = 0.0

    def on_train_step_begin(self, run_context) -> None:
        self._step_start = time.perf_counter()

    def on_train_step_end(self, run_context) -> None:
        cb = run_context.original_args()
        elapsed = time.perf_counter() - self._step_start
        loss = cb.net_outputs
        loss = loss[0] if isinstance(loss, (tuple, list)) else loss
        self.last_loss = float(loss.asnumpy()) if hasattr(loss, "asnumpy") else float(loss)
        self.last_step_ms = elapsed * 1000.0
        self.global_step = int(cb.cur_step_num)
        self._epoch_step_seconds += elapsed
        self._epoch_losses.append(self.last_loss)

    def on_train_epoch_end(self, run_context) -> None:
        cb = run_context.original_args()
        results = dict(cb.get("eval_results") or {})
        ema = results.pop(EMA_RESULTS, None) or {}
        images = len(self._epoch_losses) * self.batch_size
        self.epochs.append(
            EpochRecord(
                epoch=int(cb.cur_epoch_num),
                step=self.global_step,
                train_loss=float(np.mean(self._epoch_losses)) if self._epoch_losses else math.nan,
                seconds=time.perf_counter() - self._epoch_start,
                images_per_s=images / self._epoch_step_seconds if self._epoch_step_seconds else math.nan,
                val=_val_metrics(results),
                val_ema=_val_metrics(ema),
            )
        )
        self._epoch_losses, self._epoch_step_seconds = [], 0.0

    def on_train_end(self, run_context) -> None:
        self.train_seconds = self._seconds_before + time.perf_counter() - self._train_start


EMA_RESULTS = "ema"  # the key of a validation's results that holds the EMA weights' (train.ema)


def _val_metrics(results: Mapping[str, float]) -> dict[str, float]:
    """``{"top1", "top5", "loss"}`` of a validation's results (MindSpore's ``eval_loss`` as ``loss``)."""
    val = {key: float(value) for key, value in results.items() if key != "eval_loss"}
    if results:
        val["loss"] = float(results.get("eval_loss", math.nan))
    return val


class ConsoleProgress(Callback):
    """Logs the plan, a line every ``every_n_steps`` steps, and one per epoch with its validation.
    With a ``bar`` (a terminal), the bar shows every step instead of the step lines."""

    def __init__(self, history: TrainHistory, plan, every_n_steps: int, bar: ProgressBar | None = None):
        super().__init__()
        self.history = history
        self.plan = plan
        self.every = every_n_steps
        self.bar = bar

    def on_train_begin(self, run_context) -> None:
        plan = self.plan
        batch = self.history.batch_size
        log.info(
            f"training {plan.epochs} epoch(s) x {plan.steps_per_epoch} steps (batch {batch}) "
            f"= {plan.total_steps} steps"
        )
        done = int(run_context.original_args().cur_step_num)
        if done:
            log.info("continuing after step %d (%d step(s) to go)", done, plan.total_steps - done)
        if self.bar is not None:
            self.bar.open(done)

    def on_train_step_end(self, run_context) -> None:
        h, steps = self.history, self.plan.steps_per_epoch
        step_in_epoch = (h.global_step - 1) % steps + 1
        if self.bar is None and step_in_epoch % self.every and step_in_epoch != steps:
            return
        epoch = f"epoch {run_context.original_args().cur_epoch_num}/{self.plan.epochs}"
        if self.bar is not None:  # every step: TrainHistory has read the loss already (no extra sync)
            self.bar.show(f"{epoch} step {step_in_epoch}/{steps}", h.last_loss, h.lr, h.throughput)
        else:
            log.info(
                f"{epoch} step {step_in_epoch}/{steps}  loss {h.last_loss:.4f}  lr {h.lr:.3e}  "
                f"{h.throughput:.0f} img/s"
            )

    def on_train_epoch_end(self, run_context) -> None:
        record = self.history.last_epoch
        line = (
            f"epoch {record.epoch}/{self.plan.epochs} done in {record.seconds:.1f}s  "
            f"train loss {record.train_loss:.4f}  {record.images_per_s:.0f} img/s"
        )
        if record.val:
            line += (
                f"  | val loss {record.val.get('loss', math.nan):.4f}  "
                f"top1 {record.val.get('top1', math.nan):.4f}  top5 {record.val.get('top5', math.nan):.4f}"
            )
        if record.val_ema:
            ema = record.val_ema
            line += f"  | ema loss {ema.get('loss', math.nan):.4f}  top1 {ema.get('top1', math.nan):.4f}"
        log.info(line)

    def on_train_end(self, run_context) -> None:
        self.close()

    def close(self) -> None:
        """Remove the bar, if any (also when training ends by an error or a preemption)."""
        if self.bar is not None:
            self.bar.close()


class CheckpointListener:
    """Hooks of a ``CheckpointSaver``: before a checkpoint (hand over what is buffered), the state to
    keep in it, and each checkpoint once its files are whole. No-ops here."""

    def before_checkpoint(self) -> None:
        return None

    def checkpoint_state(self) -> dict:
        return {}

    def checkpoint_written(self, saved: SavedCheckpoint) -> None:
        return None


class CheckpointSaver(Callback):
    """Saves full-state checkpoints (``train.state``) after every ``every_n_epochs`` epochs and the
    last, every ``every_n_steps`` steps (None: never) and on ``save_now``; keeps the newest ``keep``
    epoch and ``keep_steps`` step/preempt ones. ``written`` and ``on_disk`` (not pruned) list them once
    their files are whole. ``background``: a thread writes step and epoch-end checkpoints from host
    copies (a B/16 one with Adam is ~1 GB), one write at a time. ``keep_by="best"`` keeps the ``keep``
    epoch checkpoints best by ``objective`` plus the last; ``ema_weights`` (``trainer.ema.weights``,
    None: EMA off) picks what each network file holds (``objective.shipped_weights``)."""

    def __init__(  # noqa: PLR0913 (the trainer group's checkpoint keys)
        self,
        directory: str | Path,
        prefix: str,
        history: TrainHistory,
        every_n_epochs: int,
        keep: int,
        every_n_steps: int | None = None,
        keep_steps: int = 2,
        seed: int = 0,
        background: bool = False,
        listeners: Sequence[CheckpointListener] = (),
        run_state: Mapping[str, object] | None = None,
        keep_by: str = "newest",
        objective: str = "val/top1",
        ema_weights: str | None = None,
    ):
        super().__init__()
        self.directory = Path(directory)
        self.prefix = prefix
        self.history = history
        self.every = every_n_epochs
        self.keep = keep
        self.every_n_steps = every_n_steps
        self.keep_steps = keep_steps
        self.seed = seed
        self.background = background
        self.listeners = list(listeners)
        self.run_state = dict(run_state or {})
        self.keep_by = keep_by
        self.objective = objective
        self.ema_weights = ema_weights
        self.written: list[SavedCheckpoint] = []
        self.on_disk: list[SavedCheckpoint] = []
        self._writing: _BackgroundWrite | None = None
        self._copy = _ParameterCopy()

    def save_now(self, run_context, kind: str, epoch_done: bool = False) -> SavedCheckpoint:
        """Write a checkpoint of the network as it is now and return once it is on disk (a preemption
        right after a checkpoint of this very state gets that one)."""
        self.wait_for_write()
        last = self.written[-1] if self.written else None
        step = int(run_context.original_args().cur_step_num)
        if kind == "preempt" and last and last.step == step and (last.kind == "epoch") == epoch_done:
            return last
        return self._save(run_context, kind, epoch_done, wait=True)

    def _save(self, run_context, kind: str, epoch_done: bool, wait: bool) -> SavedCheckpoint:
        from vit_exp.train.objective import shipped_weights
        from vit_exp.train.state import LoopPosition, checkpoint_name, save_training_checkpoint

        self.wait_for_write()  # one write at a time (and the host buffers are free again)
        cb = run_context.original_args()
        step, epoch = int(cb.cur_step_num), int(cb.cur_epoch_num)
        for listener in self.listeners:
            listener.before_checkpoint()
        path = self.directory / checkpoint_name(self.prefix, epoch, step, kind == "preempt")
        position = LoopPosition(epoch, step - (epoch - 1) * int(cb.batch_num), step, epoch_done)
        state = {
            "position": asdict(position),
            "kind": kind,
            "seed": self.seed,
            "history": self.history.state_dict(),
            **self.run_state,
            **{k: v for listener in self.listeners for k, v in listener.checkpoint_state().items()},
        }
        record = self.history.last_epoch if kind == "epoch" else None
        weights = shipped_weights(self.ema_weights, self.objective, record)
        saved = SavedCheckpoint(path, record, kind, step, epoch, weights)
        if wait or not self.background:
            save_training_checkpoint(cb.train_network, path, state, weights)
            self._take_in(saved)
        else:
            parameters = self._copy.of(cb.train_network)  # this step's state, whatever comes next
            self._writing = _BackgroundWrite(
                saved, lambda: save_training_checkpoint(parameters, path, state, weights)
            )
        return saved

    def wait_for_write(self) -> None:
        """Wait for the checkpoint being written in the background, if any, and take it in."""
        self._collect(wait=True)

    def _collect(self, wait: bool) -> None:
        writing = self._writing
        if writing is None or not (wait or writing.done):
            return
        self._writing = None
        self._take_in(writing.result())

    def _take_in(self, saved: SavedCheckpoint) -> None:
        self.written.append(saved)
        self.on_disk.append(saved)
        self._prune()
        for listener in self.listeners:
            listener.checkpoint_written(saved)

    def _prune(self) -> None:
        from vit_exp.train.state import checkpoint_files

        for kinds, keep in ((("epoch",), self.keep), (("step", "preempt"), self.keep_steps)):
            mine = [c for c in self.on_disk if c.kind in kinds]
            if kinds == ("epoch",) and self.keep_by == "best":
                pruned = self._not_best(mine)
            else:
                pruned = mine[: max(0, len(mine) - keep)]
            for old in pruned:
                self.on_disk.remove(old)
                for path in checkpoint_files(old.path):  # a model version's hard link stays
                    path.unlink(missing_ok=True)

    def _not_best(self, epochs: list[SavedCheckpoint]) -> list[SavedCheckpoint]:
        """The epoch checkpoints neither among the ``keep`` best by ``objective`` (a tie: the earlier
        wins; unmeasured: last) nor the last (kept for resume)."""
        from vit_exp.train.objective import is_better

        ranked: list[SavedCheckpoint] = []
        for checkpoint in epochs:  # oldest first: an equal score ranks after the earlier one
            score = checkpoint.score(self.objective)
            beaten = (
                i for i, c in enumerate(ranked) if is_better(self.objective, score, c.score(self.objective))
            )
            ranked.insert(next(beaten, len(ranked)), checkpoint)
        kept = ranked[: self.keep] + epochs[-1:]
        return [c for c in epochs if c not in kept]

    def on_train_begin(self, run_context) -> None:
        if self.background:  # the host buffers' page faults now, not at the first checkpoint
            self._copy.allocate(run_context.original_args().train_network)

    def on_train_step_end(self, run_context) -> None:
        self._collect(wait=False)
        cb = run_context.original_args()
        step = int(cb.cur_step_num)
        if not self.every_n_steps or step % self.every_n_steps:
            return
        epoch_end = step % int(cb.batch_num) == 0 and int(cb.cur_epoch_num) % self.every == 0
        if not epoch_end:  # the epoch checkpoint follows, after validation
            self._save(run_context, "step", epoch_done=False, wait=False)

    def on_train_epoch_end(self, run_context) -> None:
        self._collect(wait=False)
        record = self.history.last_epoch
        if record.epoch % self.every == 0:
            self._save(run_context, "epoch", epoch_done=True, wait=False)

    def on_train_end(self, run_context) -> None:
        self.wait_for_write()
        record = self.history.last_epoch
        last = self.written[-1] if self.written else None
        if record is not None and not (last and last.kind == "epoch" and last.step == record.step):
            self.save_now(run_context, "epoch", epoch_done=True)


class _BackgroundWrite:
    """``write()`` in a thread; ``result()`` waits and returns ``saved`` or raises the write's error.
    Not a daemon, so a process that ends lets the write finish."""

    def __init__(self, saved: SavedCheckpoint, write: Callable[[], object]):
        self.saved = saved
        self._error: BaseException | None = None

        def run() -> None:
            try:
                write()
            except BaseException as exc:  # handed to the training thread by result()
                self._error = exc

        self._thread = threading.Thread(target=run, name="checkpoint-writer")
        self._thread.start()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> SavedCheckpoint:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.saved


class _ParameterCopy:
    """Host copies of a network's parameters in buffers kept across checkpoints: new memory costs its
    page faults (~2.7 s a GB), a copy into the same buffers ~0.13 s."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    @staticmethod
    def _parameters(train_network) -> list:
        # as MindSpore: a name's last parameter
        named = {param.name: param for _, param in train_network.parameters_and_names()}
        for param in named.values():
            if param.has_init:
                param.init_data()
        return list(named.values())

    def _buffer(self, param) -> tuple[np.ndarray, np.ndarray]:
        data = param.asnumpy()  # a view of the parameter's memory
        buffer = self._buffers.get(param.name)
        if buffer is None or buffer.shape != data.shape or buffer.dtype != data.dtype:
            buffer = self._buffers[param.name] = np.ones_like(data)  # written: its pages are there
        return data, buffer

    def allocate(self, train_network) -> None:
        for param in self._parameters(train_network):
            self._buffer(param)

    def of(self, train_network) -> list[dict]:
        """``[{"name", "data"}]`` in the order ``mindspore.save_checkpoint`` takes from the network."""
        entries = []
        for param in self._parameters(train_network):
            data, buffer = self._buffer(param)
            np.copyto(buffer, data)
            entries.append({"name": param.name, "data": Tensor.from_numpy(buffer)})
        return entries
