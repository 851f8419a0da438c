"""Full-state checkpoints as two files: ``<stem>.ckpt``, the ViT's parameters (what ``model.pretrained=``
loads and a model version ships), and ``<stem>.state.ckpt``, the optimizer and the JSON training state.
Each is written atomically, the network first: a state file under its final name has a whole network
file beside it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vit_exp.errors import CheckpointError, first_line
from vit_exp.models.checkpoint import STATE_SUFFIX, network_file

STATE_ENTRY = "vit_exp.training_state"
STATE_VERSION = 1
EMA_PREFIX = "ema."  # the EMA of parameter p (train.ema), in the state file
RAW_PREFIX = "raw."  # parameter p, in the state file when the network file holds the EMA weights


def state_file(checkpoint: Path) -> Path:
    """The training-state file of the checkpoint ``<stem>.ckpt``: ``<stem>.state.ckpt``."""
    network = network_file(checkpoint)
    return network.with_name(network.name[: -len(".ckpt")] + STATE_SUFFIX)


_NAME = re.compile(r"-s(\d+)(\.preempt)?\.ckpt$")


def checkpoint_name(prefix: str, epoch: int, step: int, preempt: bool = False) -> str:
    """``<prefix>-e<epoch>-s<step>.ckpt``; ``.preempt.ckpt`` for a signal's (a resume may redo that step)."""
    return f"{prefix}-e{epoch:03d}-s{step:06d}{'.preempt' if preempt else ''}.ckpt"


def parse_checkpoint_name(name: str) -> tuple[int, bool] | None:
    """The step and whether it is a preemption's, of a ``checkpoint_name`` (None for another file)."""
    match = _NAME.search(name)
    return (int(match.group(1)), bool(match.group(2))) if match and not name.startswith(".") else None


def checkpoint_files(checkpoint: Path) -> list[Path]:
    """Every file of a checkpoint (network and state)."""
    return [network_file(checkpoint), state_file(checkpoint)]


@dataclass(frozen=True)
class LoopPosition:
    """Where training stands: ``global_step`` steps done, ``step_in_epoch`` of them in ``epoch``;
    ``epoch_done``: that epoch's validation and epoch-end callbacks ran too."""

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


def _write_atomically(path: Path, write) -> None:
    partial = path.with_name(f".{path.name[: -len('.ckpt')]}.partial.ckpt")
    partial.unlink(missing_ok=True)
    write(str(partial))
    with open(partial, "rb") as handle:  # a file with the final name survives a power cut whole
        os.fsync(handle.fileno())
    os.replace(partial, path)


def save_training_checkpoint(train_network, path: Path, state: dict, weights: str = "raw") -> Path:
    """Write ``train_network``'s parameters and ``state`` (JSON-able) as ``path`` and ``state_file(path)``.
    ``weights="ema"``: the network file holds the EMA weights under the model's names, the state file
    the raw ones as ``raw.<name>`` (what a resume loads)."""
    import mindspore as ms

    from vit_exp.models.checkpoint import is_network_entry

    path.parent.mkdir(parents=True, exist_ok=True)
    if weights == "ema":
        train_network = _ema_shipped(train_network)
    _write_atomically(
        path, lambda to: ms.save_checkpoint(train_network, to, choice_func=is_network_entry, crc_check=True)
    )
    network = {"file": path.name, "bytes": path.stat().st_size, "weights": weights}
    payload = json.dumps({"version": STATE_VERSION, **state, "network": network})
    _write_atomically(
        state_file(path),
        lambda to: ms.save_checkpoint(
            train_network,
            to,
            choice_func=lambda name: not is_network_entry(name),
            append_dict={STATE_ENTRY: payload},
            crc_check=True,
        ),
    )
    return path


def _ema_shipped(train_network) -> list[dict]:
    """``train_network``'s entries (a Cell or ``[{"name", "data"}]``) with each network parameter's EMA
    under its name and the parameter itself as ``raw.<name>``."""
    from vit_exp.models.checkpoint import is_network_entry

    if isinstance(train_network, list):
        entries = {entry["name"]: entry["data"] for entry in train_network}
    else:  # as mindspore.save_checkpoint takes them: a name's last parameter
        entries = {param.name: param for _, param in train_network.parameters_and_names()}
    shipped = []
    for name, data in entries.items():
        if is_network_entry(name) and EMA_PREFIX + name in entries:
            shipped += [
                {"name": name, "data": entries[EMA_PREFIX + name]},
                {"name": RAW_PREFIX + name, "data": data},
            ]
        else:
            shipped.append({"name": name, "data": data})
    return shipped


def _load(path: Path, what: str, **kwargs) -> dict:
    import mindspore as ms

    try:
        return ms.load_checkpoint(str(path), crc_check=True, **kwargs)
    except Exception as exc:
        raise CheckpointError(f"{what}: cannot read checkpoint {path}: {first_line(str(exc))}") from None


def read_checkpoint(path: Path, what: str = "resume") -> dict:
    """Every entry of the checkpoint at ``path`` (given by either file; each checked against its CRC)."""
    states = state_file(path)
    if not states.is_file():  # parameters only, or a single-file checkpoint of an earlier version
        return _load(path, what)
    entries = _load(states, what)
    _check_network_file(states, training_state(entries), what)
    entries = {**_load(network_file(path), what), **entries}
    for name in [n for n in entries if n.startswith(RAW_PREFIX)]:  # the network file holds the EMA
        entries[name.removeprefix(RAW_PREFIX)] = entries.pop(name)
    return entries


def training_state(entries: dict) -> dict | None:
    """The training state stored in a checkpoint's entries (None for a parameters-only checkpoint)."""
    raw = entries.get(STATE_ENTRY)
    if not isinstance(raw, str):
        return None
    state = json.loads(raw)
    return state if state.get("version") == STATE_VERSION else None


def read_training_state(path: Path, what: str = "resume") -> dict | None:
    """Only the training state of the checkpoint at ``path`` (None when it holds parameters only);
    CheckpointError when its network file is missing or cut short."""
    import mindspore as ms

    source = state_file(path) if state_file(path).is_file() else Path(path)
    try:
        entries = ms.load_checkpoint(str(source), choice_func=lambda name: name == STATE_ENTRY)
    except Exception as exc:
        if "empty after filter" in str(exc):  # a readable checkpoint without the entry
            return None
        raise CheckpointError(f"{what}: cannot read checkpoint {source}: {first_line(str(exc))}") from None
    state = training_state(entries)
    if source.name.endswith(STATE_SUFFIX):
        _check_network_file(source, state, what)
    return state


def _check_network_file(states: Path, state: dict | None, what: str) -> None:
    expected = (state or {}).get("network") or {}
    network = states.with_name(expected.get("file", network_file(states).name))
    size = network.stat().st_size if network.is_file() else None
    if size is None or size != expected.get("bytes", size):
        found = "missing" if size is None else f"{size} bytes, not {expected['bytes']}"
        raise CheckpointError(f"{what}: the network file {network} of checkpoint {states} is {found}")


def position_of(state: dict) -> LoopPosition:
    return LoopPosition(**state["position"])


def load_training_network(train_network, entries: dict, path: Path) -> None:
    """Load a full-state checkpoint's parameters into ``train_network`` (network and optimizer);
    CheckpointError naming what differs when one is missing or of another shape."""
    import mindspore as ms

    own = {p.name: p for p in train_network.get_parameters()}
    missing = [name for name in own if name not in entries]
    mismatched = [
        f"{name} checkpoint {tuple(entries[name].shape)} vs now {tuple(param.shape)}"
        for name, param in own.items()
        if name in entries and tuple(entries[name].shape) != tuple(param.shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if mismatched:
        parts.append(f"shape mismatch: {', '.join(mismatched[:4])}")
    if parts:
        raise CheckpointError(
            f"resume: checkpoint {path} does not fit this model and optimizer ({'; '.join(parts)}); "
            "it was written with another model.* or optim.name"
        )
    ms.load_param_into_net(train_network, {name: entries[name] for name in own}, strict_load=True)
