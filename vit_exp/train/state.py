"""Full-state checkpoints: the network, the optimizer and where training stands, in one ``.ckpt`` file.

The file is a plain MindSpore checkpoint of the training network (the ViT's parameters under their
reference names, the optimizer's ``moment1.*``/``moment2.*``/``beta*_power``/``global_step``, the
per-step ``learning_rate``) plus one string entry, ``vit_exp.training_state``: JSON with the loop
position, the seed, the run's history and what the tracking layer keeps (registered checkpoints,
run id, config). ``model.pretrained=`` reads the network's entries and ignores the rest.
Files are written under a temporary name, fsynced and renamed: a file with its final name is whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from vit_exp.errors import CheckpointError, first_line

STATE_ENTRY = "vit_exp.training_state"
STATE_VERSION = 1


@dataclass(frozen=True)
class LoopPosition:
    """Where training stands: ``global_step`` steps done, ``step_in_epoch`` of them in ``epoch``.

    ``epoch_done``: that epoch's validation and epoch-end callbacks ran too (the next starts fresh).
    """

    epoch: int = 1
    step_in_epoch: int = 0
    global_step: int = 0
    epoch_done: bool = False


@dataclass(frozen=True)
class ResumePoint:
    """A full-state checkpoint to continue from: its file, its entries and its loop position."""

    path: Path
    entries: dict
    position: LoopPosition


def save_training_checkpoint(train_network, path: Path, state: dict) -> Path:
    """Write ``train_network``'s parameters and ``state`` (JSON-able) to ``path``, atomically."""
    import mindspore as ms

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.ckpt")
    partial.unlink(missing_ok=True)
    payload = json.dumps({"version": STATE_VERSION, **state})
    ms.save_checkpoint(train_network, str(partial), append_dict={STATE_ENTRY: payload}, crc_check=True)
    with open(partial, "rb") as handle:  # a file with the final name survives a power cut whole
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def read_checkpoint(path: Path, what: str = "resume") -> dict:
    """Every entry of the checkpoint at ``path`` (checked against its CRC)."""
    import mindspore as ms

    try:
        return ms.load_checkpoint(str(path), crc_check=True)
    except Exception as exc:
        raise CheckpointError(f"{what}: cannot read checkpoint {path}: {first_line(str(exc))}") from None


def training_state(entries: dict) -> dict | None:
    """The training state stored in a checkpoint's entries (None for a parameters-only checkpoint)."""
    raw = entries.get(STATE_ENTRY)
    if not isinstance(raw, str):
        return None
    state = json.loads(raw)
    return state if state.get("version") == STATE_VERSION else None


def read_training_state(path: Path, what: str = "resume") -> dict | None:
    """Only the training state of the checkpoint at ``path`` (None when it holds parameters only)."""
    import mindspore as ms

    try:
        entries = ms.load_checkpoint(str(path), choice_func=lambda name: name == STATE_ENTRY)
    except Exception as exc:
        if "empty after filter" in str(exc):  # a readable checkpoint without the entry
            return None
        raise CheckpointError(f"{what}: cannot read checkpoint {path}: {first_line(str(exc))}") from None
    return training_state(entries)


def position_of(state: dict) -> LoopPosition:
    return LoopPosition(**state["position"])


def position_state(position: LoopPosition) -> dict:
    return asdict(position)


def load_training_network(train_network, entries: dict, path: Path) -> None:
    """Load a full-state checkpoint's parameters into ``train_network`` (network and optimizer).

    Every parameter of the training network must be in the checkpoint with its shape: a
    checkpoint of another model or optimizer is a CheckpointError naming what differs.
    """
    import mindspore as ms

    own = {p.name: p for p in train_network.get_parameters()}
    missing = [name for name in own if name not in entries]
    mismatched = [
        f"{name} checkpoint {tuple(entries[name].shape)} vs now {tuple(param.shape)}"
        for name, param in own.items()
        if name in entries and tuple(entries[name].shape) != tuple(param.shape)
    ]
    if missing or mismatched:
        what = "; ".join(
            part
            for part in (
                f"missing: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}" if missing else "",
                f"shape mismatch: {', '.join(mismatched[:4])}" if mismatched else "",
            )
            if part
        )
        raise CheckpointError(
            f"resume: checkpoint {path} does not fit this model and optimizer ({what}); "
            "it was written with another model.* or optim.name"
        )
    ms.load_param_into_net(train_network, {name: entries[name] for name in own}, strict_load=True)
