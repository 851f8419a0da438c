"""The outbox: what a training run sends to MLflow goes first to an ordered journal on disk, so a
version follows the metrics it is tagged with and nothing is lost while the store is away; what a
command leaves unsent, ``python -m vit_exp.sync`` sends later into the same run."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vit_exp import stop
from vit_exp.errors import DataError, error_line
from vit_exp.locking import hold_against_other_processes
from vit_exp.tracking.record.lifecycle import end_run
from vit_exp.tracking.record.records import (
    RECORD_TYPES,
    ArtifactRecord,
    EndRecord,
    MetricsRecord,
    Record,
    RunRecord,
    StoryRecord,
    VersionRecord,
)
from vit_exp.tracking.retries import Patience, is_transient, with_patience

log = logging.getLogger("vit_exp.tracking")

OUTBOX_DIR = "mlflow_outbox"  # in the run directory
JOURNAL = "journal.jsonl"
SENT = "sent"
HELD_DIR = "held"  # files records keep until they are stored (a version's checkpoint)
LOCK = "lock"  # held by the one process that sends the journal (training, a resume or a sync)


class Outbox:
    """The journal of one run in ``folder``, each record stored by ``send(record)``: at once, or by a
    thread retrying while the store is away (``background``: a tracking server, so training never
    waits on the network). One process at a time sends it (``LOCK``); a second waits."""

    def __init__(
        self,
        folder: Path,
        send: Callable[[Record], None],
        background: bool,
        stopping: threading.Event | None = None,
    ):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = hold_against_other_processes(
            folder / LOCK, lambda: log.info("mlflow: another process is sending %s; waiting for it", folder)
        )
        self.journal = folder / JOURNAL
        self.send = send
        self.background = background
        self._records = load_records(folder)
        self._sent = sent_count(folder)
        for record in self._records[: self._sent]:  # stored by a process killed before releasing
            release(record)
        self._changed = threading.Condition()
        self.stopping = stopping or threading.Event()  # set once ``finish`` stops waiting
        self._warned_permanent = False
        self._thread = None
        if background:
            self._thread = threading.Thread(
                target=self._send_in_background, name="mlflow-outbox", daemon=True
            )
            self._thread.start()

    @property
    def unsent(self) -> int:
        return len(self._records) - self._sent

    def put(self, record: Record) -> None:
        """Append ``record`` to the journal (so it survives a kill; not fsynced: too slow per step) and
        send it, now or in the background."""
        with self.journal.open("a") as handle:
            handle.write(record.to_json() + "\n")
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()
        if not self.background:
            self.send_pending()

    def finish(self, status: str, wait_s: float, error: str | None = None) -> int:
        """Queue the run's end as ``status`` (with a failed run's ``error``), wait up to ``wait_s`` for
        the journal to empty; return how many records are left."""
        self.put(EndRecord(status, error or None))
        deadline = time.monotonic() + wait_s
        with self._changed:
            while self.unsent and self.background and time.monotonic() < deadline:
                self._changed.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            self.stopping.set()
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._thread is None or not self._thread.is_alive():  # else kept until the process ends
            self.close()
        return self.unsent

    def close(self) -> None:
        """Let another process send this journal (the lock is also let go when the process ends)."""
        self._lock.close()

    def send_pending(self, retry: bool = False) -> int:
        """Send the records not sent yet, in order (with ``retry``, waiting out a store that is away);
        return how many are left."""
        backoff = 1.0
        while self._sent < len(self._records) and not (self.stopping.is_set() and retry and backoff > 1.0):
            record = self._records[self._sent]
            try:
                with stop.deferred():  # a record is stored whole: no artifacts without their version
                    self.send(record)
            except Exception as exc:
                if not is_transient(exc):
                    self._skip(record, exc)
                elif not retry:
                    why = error_line(exc)[:160]
                    log.warning(f"mlflow: store not answering ({why}); records kept in {self.folder}")
                    break
                else:
                    with self._changed:
                        self._changed.wait(timeout=backoff)
                    backoff = min(backoff * 2, 15.0)
                    continue
            self._mark_sent()
            release(record)
            backoff = 1.0
        return self.unsent

    def _skip(self, record: Record, exc: Exception) -> None:
        if not self._warned_permanent:
            self._warned_permanent = True
            log.warning(
                f"mlflow: the store refused a {record.kind} record ({error_line(exc)[:160]}); it is skipped"
            )

    def _mark_sent(self) -> None:
        with self._changed:
            self._sent += 1
            (self.folder / f"{SENT}.tmp").write_text(str(self._sent))
            os.replace(self.folder / f"{SENT}.tmp", self.folder / SENT)
            self._changed.notify_all()

    def _send_in_background(self) -> None:
        while True:
            with self._changed:
                while not self.unsent and not self.stopping.is_set():
                    self._changed.wait()
                if self.stopping.is_set() and not self.unsent:
                    return
            self.send_pending(retry=True)
            if self.stopping.is_set():
                return


def release(record: Record) -> None:
    """Delete the files ``record`` held until it was stored (see ``HELD_DIR``)."""
    for path in record.release if isinstance(record, VersionRecord) else ():
        Path(path).unlink(missing_ok=True)


def load_records(folder: Path) -> list[Record]:
    """The journal's records (a last line cut short by a crash is dropped); a line of a kind or with
    fields this version does not know is a DataError naming the journal."""
    journal = folder / JOURNAL
    if not journal.is_file():
        return []
    records = []
    for number, line in enumerate(journal.read_text().splitlines(), 1):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            break
        try:
            records.append(RECORD_TYPES[data["kind"]].from_json(data))
        except (KeyError, TypeError):  # another kind, or other fields (another version's record)
            raise DataError(
                f"outbox: {journal} line {number} is not a record this vit-exp sends "
                f"({', '.join(RECORD_TYPES)}): {line[:100]}"
            ) from None
    return records


def sent_count(folder: Path) -> int:
    path = folder / SENT
    return int(path.read_text()) if path.is_file() else 0


class RunSender:
    """Sends one run's outbox records to the store: metric batches, model versions, artifacts, the
    description, the end status."""

    def __init__(self, client, run_id: str, stopping: threading.Event | None = None):
        # A flaky server's calls are retried until the outbox stops waiting (``stopping``).
        self.client = with_patience(client, Patience(stop=stopping))
        self.run_id = run_id
        self._writers: dict[str, object] = {}  # a pyfunc writer per model-inputs folder
        self._models_made: set[str] = set()  # registered models known to exist
        self._versions_sent = False  # a version record was sent by this process
        self._run_info = None
        self._unconfirmed: Record | None = None  # a record whose sending failed or was cut short

    def prepare_versions(self, model_inputs: Path, top_k: int) -> None:
        """Make the pyfunc writer for ``model_inputs`` now, so the first version costs what the next do."""
        from vit_exp.tracking.registry.versions import model_writer

        writer = model_writer(model_inputs, top_k)
        writer.prepare()
        self._writers[str(model_inputs)] = writer

    def __call__(self, record: Record) -> None:
        # The first record of a process may have been sent by the one before it (killed mid-send),
        # as may a record that failed: only those need a check for what is already stored.
        may_exist = record is self._unconfirmed or not self._versions_sent
        self._unconfirmed = record
        self._send(record, may_exist)
        self._unconfirmed = None

    def _send(self, record: Record, may_exist: bool) -> None:
        match record:
            case RunRecord():  # read by ``vit_exp.sync``, which makes this sender for its run: no store work
                pass
            case MetricsRecord():
                from mlflow.entities import Metric

                metrics = [
                    Metric(key, value, timestamp, step) for key, value, timestamp, step in record.metrics
                ]
                self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
            case VersionRecord():
                from vit_exp.tracking.registry.versions import model_writer, register_version

                writer = self._writers.get(record.model_inputs) or model_writer(
                    Path(record.model_inputs), record.top_k
                )
                self._writers[record.model_inputs] = writer
                self._run_info = self._run_info or self.client.get_run(self.run_id).info
                version = register_version(
                    self.client,
                    self._run_info,
                    record,
                    writer,
                    ensure_model=record.name not in self._models_made,
                    check_existing=may_exist,
                )
                self._versions_sent = True
                if record.register:
                    self._models_made.add(record.name)
                checkpoint = Path(record.checkpoint).name
                if version is None:
                    log.info(f"mlflow: recorded {checkpoint} as a LoggedModel of run {self.run_id}")
                    return
                log.info(f"mlflow: registered {checkpoint} as models:/{record.name}/{version}")
                if record.objective:
                    from vit_exp.tracking.registry.aliases import follow_new_version

                    digest = record.tags.get("data.digest")
                    follow_new_version(self.client, record.name, version, record.objective, digest)
                if record.export:  # in a process of its own: this thread and training go on
                    from vit_exp.tracking.registry import background_export

                    folder = Path(record.model_inputs).parent / "exports"
                    background_export.start(f"models:/{record.name}/{version}", record.export, folder)
                    log.info(
                        f"mlflow: exporting models:/{record.name}/{version} to {', '.join(record.export)} "
                        f"in the background (log: {folder})"
                    )
            case ArtifactRecord():
                if Path(record.path).is_file():  # gone (a sync long after): nothing to store
                    self.client.log_artifact(self.run_id, record.path, record.artifact_path)
            case StoryRecord():
                from vit_exp.tracking.record.story import write_description

                write_description(self.client, self.run_id, record)
            case EndRecord():
                end_run(self.client, self.run_id, record.status, record.error)
            case _:
                raise TypeError(f"not an outbox record: {record!r}")
