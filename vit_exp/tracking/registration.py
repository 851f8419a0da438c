"""The callback that turns saved checkpoints into model versions, by the ``registry.register`` policy.

A checkpoint to register goes into the run's outbox after the metrics logged so far, so its
version is created only once the metrics it is tagged with are stored in the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mindspore.train import Callback

from vit_exp.tracking.registry import RegistrySettings, version_record
from vit_exp.train.callbacks import SavedCheckpoint


class CheckpointRegistration(Callback):
    """Queues the checkpoints ``checkpoints`` (a CheckpointSaver) writes as model versions.

    ``every``: each checkpoint; ``best``: each whose val/top1 beats every one queued so far;
    ``last``: the last checkpoint, when training ends. Runs after the saver. ``queued`` lists the
    checkpoints; ``put(record)`` is the outbox's, ``flush_metrics()`` the metrics logger's.
    """

    def __init__(
        self,
        settings: RegistrySettings,
        run_id: str,
        checkpoints,
        model_inputs: Path,
        put: Callable[[dict], None],
        flush_metrics: Callable[[], None] = lambda: None,
    ):
        super().__init__()
        self.settings = settings
        self.run_id = run_id
        self.checkpoints = checkpoints
        self.model_inputs = model_inputs
        self.put = put
        self.flush_metrics = flush_metrics
        self.queued: list[SavedCheckpoint] = []
        self._seen = 0  # checkpoints of checkpoints.written already considered

    def improves(self, checkpoint: SavedCheckpoint) -> bool:
        """Whether ``checkpoint``'s val/top1 beats every checkpoint queued so far (or there is none)."""
        score = checkpoint.record.val.get("top1", float("-inf"))
        return all(score > c.record.val.get("top1", float("-inf")) for c in self.queued)

    def _consider_new_checkpoints(self) -> None:
        new = self.checkpoints.written[self._seen :]
        self._seen += len(new)
        for checkpoint in new:
            policy = self.settings.register
            if policy == "every" or (policy == "best" and self.improves(checkpoint)):
                self.register(checkpoint)

    def on_train_epoch_end(self, run_context) -> None:
        self._consider_new_checkpoints()

    def on_train_end(self, run_context) -> None:
        self._consider_new_checkpoints()
        if self.settings.register == "last" and self.checkpoints.written:
            self.register(self.checkpoints.written[-1])

    def register(self, checkpoint: SavedCheckpoint) -> None:
        """Queue ``checkpoint`` as a version of ``settings.name``, after the metrics logged so far."""
        record = checkpoint.record
        tags = {"epoch": record.epoch, "global_step": record.step, "source_run_id": self.run_id}
        tags |= {f"val/{k}": f"{v:.6g}" for k, v in record.val.items() if k in ("top1", "top5", "loss")}
        self.flush_metrics()
        self.queued.append(checkpoint)
        self.put(
            version_record(
                checkpoint.path, record.step, self.settings.name, tags, self.model_inputs, self.settings.top_k
            )
        )
