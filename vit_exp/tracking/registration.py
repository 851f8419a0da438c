"""The callback that turns saved checkpoints into model versions, by the ``registry.register`` policy."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from mindspore.train import Callback

from vit_exp.errors import first_line
from vit_exp.tracking.registry import PyfuncModelWriter, RegistrySettings, log_checkpoint_version
from vit_exp.train.callbacks import SavedCheckpoint

log = logging.getLogger("vit_exp.tracking")


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version made from a checkpoint."""

    version: str
    checkpoint: SavedCheckpoint


class CheckpointRegistration(Callback):
    """Registers the checkpoints ``checkpoints`` (a CheckpointSaver) writes, by ``settings.register``.

    ``every``: each checkpoint; ``best``: each whose val/top1 beats every version registered so
    far; ``last``: the last checkpoint, when training ends. Runs after the saver. ``versions`` lists
    what was registered. A failed registration is warned about; the checkpoint file stays.
    """

    def __init__(self, settings: RegistrySettings, run_id: str, checkpoints, writer: PyfuncModelWriter):
        super().__init__()
        self.settings = settings
        self.run_id = run_id
        self.checkpoints = checkpoints
        self.writer = writer
        self.versions: list[RegisteredVersion] = []
        self._seen = 0  # checkpoints of checkpoints.written already considered

    def improves(self, checkpoint: SavedCheckpoint) -> bool:
        """Whether ``checkpoint``'s val/top1 beats every version registered so far (or there is none)."""
        score = checkpoint.record.val.get("top1", float("-inf"))
        return not self.versions or all(
            score > v.checkpoint.record.val.get("top1", float("-inf")) for v in self.versions
        )

    def _consider_new_checkpoints(self) -> None:
        new = self.checkpoints.written[self._seen :]
        self._seen += len(new)
        for checkpoint in new:
            if self.settings.register == "every" or (
                self.settings.register == "best" and self.improves(checkpoint)
            ):
                self.register(checkpoint)

    def on_train_epoch_end(self, run_context) -> None:
        self._consider_new_checkpoints()

    def on_train_end(self, run_context) -> None:
        self._consider_new_checkpoints()
        if self.settings.register == "last" and self.checkpoints.written:
            self.register(self.checkpoints.written[-1])

    def register(self, checkpoint: SavedCheckpoint) -> None:
        """Log ``checkpoint`` as a pyfunc model of the run and make it a version of ``settings.name``."""
        path, record = checkpoint.path, checkpoint.record
        if not path.is_file():
            log.warning("mlflow: checkpoint %s was pruned before it could be registered", path)
            return
        tags = {"epoch": record.epoch, "global_step": record.step, "source_run_id": self.run_id}
        tags |= {f"val/{k}": f"{v:.6g}" for k, v in record.val.items() if k in ("top1", "top5", "loss")}
        started = time.perf_counter()
        try:
            version = log_checkpoint_version(
                self.writer, path, self.settings.name, record.step, tags, ensure_model=not self.versions
            )
        except Exception as exc:  # the checkpoint stays on disk; training goes on
            log.warning(
                "mlflow: could not register %s (%s: %s); the checkpoint file is kept",
                path,
                type(exc).__name__,
                first_line(str(exc)),
            )
            return
        self.versions.append(RegisteredVersion(version, checkpoint))
        log.info(
            "mlflow: registered %s as models:/%s/%s (%.1fs)",
            path.name,
            self.settings.name,
            version,
            time.perf_counter() - started,
        )
