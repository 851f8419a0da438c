"""Exports of new versions in a background process (``registry.export``), one at a time per run.

``start(uri, formats, folder)`` launches ``python -m vit_exp.tracking.registry.background_export``,
which waits for ``folder/exports.lock`` before it imports anything heavy, then becomes
``python -m vit_exp.export`` (exec, the lock still held), so a run's exports queue instead of
competing for its cores. The process is detached: it outlives the training command, and its output
goes to ``folder/<version>.log``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

LOCK = "exports.lock"


def start(model_uri: str, formats: Sequence[str], folder: Path) -> subprocess.Popen:
    """Export ``model_uri`` to each of ``formats`` in a detached, niced process; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    label = model_uri.removeprefix("models:/").replace("/", "-")
    arguments = [
        f"model_uri={model_uri}",
        f"format=[{','.join(formats)}]",
        f"hydra.run.dir={folder / label}",
    ]
    command = [sys.executable, "-m", __name__, str(folder / LOCK), *arguments]
    with (folder / f"{label}.log").open("ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def main(argv: list[str]) -> None:
    """Hold the lock file ``argv[0]``, then run ``python -m vit_exp.export argv[1:]`` in this process."""
    import fcntl

    lock = os.open(argv[0], os.O_CREAT | os.O_WRONLY, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the export ends (the descriptor survives exec)
    os.set_inheritable(lock, True)
    os.nice(10)
    os.execv(sys.executable, [sys.executable, "-m", "vit_exp.export", *argv[1:]])


if __name__ == "__main__":
    main(sys.argv[1:])
