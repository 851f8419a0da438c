"""What a B/16 checkpoint that becomes a model version costs the training thread, and when it is READY.

    GLOG_v=3 .venv/bin/python bench/registration_cost.py [--versions 4] [--steps-per-epoch 2]
        [--batch-size 2] [--stores local server] [--code CHECKOUT] [--keep]

``python -m vit_exp.run model=vit_b16`` (fp32, Adam) runs in-process in a child process (one
training at a time) on a generated 224x224 image folder of 2 classes: ``--steps-per-epoch`` steps
of ``--batch-size`` images an epoch, a full-state checkpoint and a model version every epoch
(``registry.register=every``, the default), ``--versions`` epochs; (a) into a local SQLite store in a
temp dir, (b) into a real ``mlflow server --serve-artifacts`` on a free 127.0.0.1 port.
``--code`` trains with another checkout's ``vit_exp`` (e.g. ``git archive HEAD`` unpacked): before
vs after a change.

vit_exp is not changed: the child wraps, from outside, the loop's callbacks, the checkpoint saver
(its save point, parameter copy, wait for a background write, take-in), the checkpoint write (per
file: write with CRC, fsync, rename), the registration callback, the outbox's ``put`` and its
sender, and records on which thread and when each call ran. Printed per version: the training
thread's time spent for it (the own time of every call made for that checkpoint: a checkpoint write
in the training thread, the parameter copy, waiting for a background write, the registration =
metric flush + enqueue, and on a local store the send itself), the write and the send in the
background, and the time until it is READY (LoggedModel finalized READY and version created; checked
in the store afterwards) counted from its enqueueing and from the checkpoint's save point. Also: the
step time with and without background work, the wait at the end for the outbox, the checkpoint size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTERED_NAME = "bench-registration"
CLASSES = ("a", "b")
HOOKS = (
    "on_train_begin",
    "on_train_epoch_begin",
    "on_train_step_begin",
    "on_train_step_end",
    "on_train_epoch_end",
    "on_train_end",
)


# --------------------------------------------------------------------------- the child: one training


class Timeline:
    """Timed events from every thread: name, thread, start and end (``time.time()``), details."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._lock = threading.Lock()

    def add(self, name: str, start: float, end: float, **details: object) -> None:
        with self._lock:
            thread = threading.current_thread()
            self.events.append(
                {
                    "name": name,
                    "thread": "main" if thread is threading.main_thread() else thread.name,
                    "start": start,
                    "end": end,
                    **details,
                }
            )

    def wrap(self, owner: object, attribute: str, name: str, details=None) -> None:
        """Replace ``owner.attribute`` (a function) by one that records each call as ``name``, with
        ``details(*args)`` (taken before the call); nothing when ``owner`` has no such attribute."""
        original = getattr(owner, attribute, None)
        if original is None:
            return
        timeline = self

        def timed(*args, **kwargs):
            extra = details(*args, **kwargs) if details else {}
            start = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                timeline.add(name, start, time.time(), **extra)

        timed.__wrapped__ = original
        setattr(owner, attribute, timed)


def _timed_callback(callback, timeline: Timeline):
    """A Callback that forwards every hook to ``callback`` and records how long it took."""
    from mindspore.train import Callback

    class Timed(Callback):
        def __init__(self) -> None:
            super().__init__()
            self.inner = callback

        def _call(self, hook: str, run_context) -> None:
            cb = run_context.original_args()
            start = time.time()
            getattr(self.inner, hook)(run_context)
            timeline.add(
                f"hook:{type(self.inner).__name__}.{hook}",
                start,
                time.time(),
                step=int(cb.cur_step_num),
                epoch=int(cb.cur_epoch_num),
            )

    for hook in HOOKS:
        setattr(Timed, hook, lambda self, run_context, _hook=hook: self._call(_hook, run_context))
    return Timed()


def _step_of(path) -> int:
    """The step in a checkpoint file name (``<prefix>-e001-s000002.ckpt``)."""
    return int(re.search(r"-s(\d+)", Path(path).name)[1])


def instrument(timeline: Timeline) -> None:
    """Wrap, from outside, the parts of vit_exp between a saved checkpoint and a model version (what
    this checkout has of them: the background checkpoint writer's parts are new)."""
    from mlflow.tracking import MlflowClient

    from vit_exp.tracking.record.metrics import MlflowMetricLogger
    from vit_exp.tracking.record.outbox import Outbox, RunSender
    from vit_exp.tracking.registry import versions
    from vit_exp.tracking.registry.checkpoints import CheckpointRegistration
    from vit_exp.train import callbacks, loop, state

    run_training = loop.run_training

    def timed_run_training(train_step, epoch_batches, *, callbacks, **kwargs):
        timed = [_timed_callback(c, timeline) for c in callbacks]
        return run_training(train_step, epoch_batches, callbacks=timed, **kwargs)

    loop.run_training = timed_run_training
    saver = callbacks.CheckpointSaver
    step_now = lambda self, run_context, *a, **k: {"ckpt": int(run_context.original_args().cur_step_num)}  # noqa: E731
    timeline.wrap(state, "_write_atomically", "ckpt:file", lambda path, write: {"file": Path(path).name})
    timeline.wrap(
        state, "save_training_checkpoint", "ckpt:write", lambda net, path, st: {"ckpt": _step_of(path)}
    )
    timeline.wrap(saver, "_save" if hasattr(saver, "_save") else "save_now", "saver:point", step_now)
    timeline.wrap(saver, "_take_in", "saver:take_in", lambda self, saved: {"ckpt": saved.step})
    pending = lambda self: {"ckpt": self._writing.saved.step if self._writing else None}  # noqa: E731
    timeline.wrap(saver, "wait_for_write", "saver:wait", pending)
    timeline.wrap(saver, "_prune", "saver:prune")
    if hasattr(callbacks, "_ParameterCopy"):
        timeline.wrap(callbacks._ParameterCopy, "of", "saver:copy")
        timeline.wrap(callbacks._ParameterCopy, "allocate", "saver:allocate")
    timeline.wrap(MlflowMetricLogger, "flush", "metrics:flush")
    timeline.wrap(
        CheckpointRegistration, "register", "registration:register", lambda self, c: {"ckpt": c.step}
    )
    timeline.wrap(Outbox, "put", "outbox:put", lambda self, record: {"kind": record.kind})
    timeline.wrap(Outbox, "finish", "outbox:finish")
    sent = lambda self, record: {"kind": record.kind, "ckpt": getattr(record, "step", None)}  # noqa: E731
    timeline.wrap(RunSender, "__call__", "sender:send", sent)
    timeline.wrap(versions.PyfuncModelWriter, "_save_template", "pyfunc:template")
    timeline.wrap(MlflowClient, "log_model_artifacts", "mlflow:log_model_artifacts")


def child(spec: dict) -> None:
    """Train as ``python -m vit_exp.run`` with ``spec["overrides"]``; write the timeline and the store's
    view of the versions to ``spec["out"]``."""
    timeline = Timeline()
    instrument(timeline)
    import vit_exp.run

    sys.argv = ["vit_exp.run", *spec["overrides"]]
    start = time.time()
    code = 0
    try:
        vit_exp.run.main()
    except SystemExit as exc:
        code = exc.code or 0
    result = {"exit": code, "start": start, "end": time.time(), "events": timeline.events}
    if code == 0:
        result["versions"] = store_versions(spec["tracking_uri"])
    Path(spec["out"]).write_text(json.dumps(result))


def store_versions(tracking_uri: str) -> list[dict]:
    """Every version of the bench's registered model as the store has it, with its LoggedModel."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = []
    for version in client.search_model_versions(f"name='{REGISTERED_NAME}'"):
        model = client.get_logged_model(version.source.split("/")[-1])
        found.append(
            {
                "version": int(version.version),
                "status": str(version.status),
                "step": int(version.tags["global_step"]),
                "created": version.creation_timestamp / 1000.0,
                "model_status": str(model.status),
                "model_updated": model.last_updated_timestamp / 1000.0,
            }
        )
    return sorted(found, key=lambda v: v["step"])


# --------------------------------------------------------------------------- the parent


def write_images(root: Path, per_class: int, size: int = 224) -> Path:
    """``root/{train,val}/<class>/*.png``: one colour per class plus noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                colour = np.array([200.0 * index, 200.0 * (1 - index), 128.0])
                pixels = colour + rng.normal(0, 20, (size, size, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{name}_{i}.png")
    return root


def train_in_child(folder: Path, tracking_uri: str, data: Path, args: argparse.Namespace) -> dict:
    overrides = [
        "model=vit_b16",
        "data=image_folder",
        f"data.root={data}",
        "data.num_workers=1",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.epochs={args.versions}",
        "trainer.print_every_n_steps=1",
        f"mlflow.tracking_uri={tracking_uri}",
        "mlflow.experiment=bench-registration",
        f"registry.name={REGISTERED_NAME}",
        f"paths.cache_dir={folder / 'cache'}",
        f"hydra.run.dir={folder / 'run'}",
    ]
    spec = {"overrides": overrides, "tracking_uri": tracking_uri, "out": str(folder / "timeline.json")}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    if args.code:  # another checkout's vit_exp (e.g. ``git archive HEAD`` unpacked): before vs after
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.code), env.get("PYTHONPATH")]))
    with (folder / "train.out").open("w") as log:
        code = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            cwd=str(ROOT),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    if code != 0 or not Path(spec["out"]).is_file():
        tail = (folder / "train.out").read_text()[-3000:]
        raise SystemExit(f"training into {tracking_uri} failed ({code}):\n{tail}")
    return json.loads(Path(spec["out"]).read_text())


def _own_times(events: list[dict]) -> list[dict]:
    """The training thread's instrumented calls (hooks left out), each with ``own`` (its time minus
    that of the calls inside it) and ``tag``: the checkpoint it works for (its own, or its caller's)."""
    calls = sorted(
        (dict(e) for e in events if e["thread"] == "main" and not e["name"].startswith("hook:")),
        key=lambda e: (e["start"], -e["end"]),
    )
    stack: list[dict] = []
    for call in calls:
        while stack and stack[-1]["end"] <= call["start"]:
            stack.pop()
        parent = stack[-1] if stack else None
        call["tag"] = call.get("ckpt") if call.get("ckpt") is not None else (parent or {}).get("tag")
        call["own"] = call["end"] - call["start"]
        if parent is not None:
            parent["own"] -= call["own"]
        stack.append(call)
    return calls


def per_version(result: dict) -> list[dict]:
    """Per checkpoint that became a version: the training thread's time for it (its own time in every
    call made for it, wherever it happened: the save point, the wait for its write, its take-in and
    registration), split up, and its write and send in the background."""
    events = result["events"]
    calls = _own_times(events)
    stored = {v["step"]: v for v in result.get("versions", [])}
    rows = []
    for step in sorted({e["ckpt"] for e in events if e["name"] == "registration:register"}):
        mine = [c for c in calls if c["tag"] == step]
        point = min((c for c in mine if c["name"] == "saver:point"), key=lambda c: c["start"])
        background = [e for e in events if e.get("ckpt") == step and e["thread"] != "main"]
        writes = [e for e in background if e["name"] == "ckpt:write"]
        sends = [e for e in background if e["name"] == "sender:send" and e["kind"] == "version"]
        send = (
            sends[-1]
            if sends
            else next((c for c in mine if c["name"] == "sender:send" and c.get("kind") == "version"), None)
        )
        register = next(c for c in mine if c["name"] == "registration:register")
        enqueued = next(
            c["start"]
            for c in calls
            if c["name"] == "outbox:put" and c["kind"] == "version" and c["tag"] == step
        )

        def within(name: str, outer: dict | None, _events=events) -> float:
            if outer is None:
                return 0.0
            found = [e for e in _events if e["name"] == name and outer["start"] <= e["start"] <= outer["end"]]
            return sum(e["end"] - e["start"] for e in found)

        end = [e for e in events if e["name"] == "hook:CheckpointSaver.on_train_end"]
        at_end = [c for c in mine if c["name"] == "saver:wait" and end and c["start"] >= end[0]["start"]]
        row = {
            "step": step,
            "end_wait": sum(c["own"] for c in at_end),  # training is over: its last write is awaited
            "blocked": sum(c["own"] for c in mine if c not in at_end),
            "write_main": sum(c["end"] - c["start"] for c in mine if c["name"] == "ckpt:write"),
            "copy": sum(c["end"] - c["start"] for c in mine if c["name"] == "saver:copy"),
            "wait": sum(c["own"] for c in mine if c["name"] == "saver:wait" and c not in at_end),
            "registration": register["end"] - register["start"],
            "write_background": sum(e["end"] - e["start"] for e in writes),
            "sent_in": "-"
            if send is None
            else ("training thread" if send["thread"] == "main" else send["thread"]),
            "send": float("nan") if send is None else send["end"] - send["start"],
            "template": within("pyfunc:template", send),
            "upload": within("mlflow:log_model_artifacts", send),
            "ready_after_enqueue": float("nan") if send is None else send["end"] - enqueued,
            "ready_after_checkpoint": float("nan") if send is None else send["end"] - point["start"],
            "store": f"{stored[step]['status']}/{stored[step]['model_status']}"
            if step in stored
            else "missing",
        }
        row["rest"] = row["blocked"] - row["write_main"] - row["copy"] - row["wait"] - row["registration"]
        rows.append(row)
    return rows


def step_times(result: dict) -> dict:
    """Median train-step wall time (from the step's last begin hook to its first end hook) while a
    checkpoint write or a version send runs in the background, and while none does; the first step
    (graph compile) left out."""
    events = result["events"]
    background = [
        e
        for e in events
        if e["thread"] != "main"
        and e["name"] in ("ckpt:write", "sender:send")
        and e.get("kind", "version") == "version"
    ]
    busy, idle = [], []
    for step in sorted({e["step"] for e in events if e["name"].endswith(".on_train_step_end")}):
        begun = [
            e["end"] for e in events if e["name"].endswith(".on_train_step_begin") and e["step"] == step - 1
        ]
        ended = [e["start"] for e in events if e["name"].endswith(".on_train_step_end") and e["step"] == step]
        if step == 1 or not begun or not ended:
            continue
        start, end = max(begun), min(ended)
        overlaps = any(b["start"] < end and start < b["end"] for b in background)
        (busy if overlaps else idle).append(end - start)

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    return {"busy": median(busy), "n_busy": len(busy), "idle": median(idle), "n_idle": len(idle)}


def checkpoint_sizes(folder: Path) -> dict:
    found = sorted((folder / "run" / "checkpoints").glob("*.ckpt"))
    network = [p for p in found if not p.name.endswith(".state.ckpt")]
    state = [p for p in found if p.name.endswith(".state.ckpt")]
    return {
        "network_mb": network[-1].stat().st_size / 1e6 if network else float("nan"),
        "state_mb": state[-1].stat().st_size / 1e6 if state else float("nan"),
    }


def report(store: str, result: dict, sizes: dict) -> None:
    rows = per_version(result)
    print(
        f"\n== {store}: {len(rows)} version(s); checkpoint {sizes['network_mb']:.1f} MB network "
        f"+ {sizes['state_mb']:.1f} MB state (Adam, loop state) =="
    )
    print(
        "per version, on the TRAINING THREAD: blocked = write + copy + wait for a write + registration + rest"
    )
    print("  in the BACKGROUND: write; send (template, upload); READY after enqueue / after checkpoint")
    for r in rows:
        end = f" (+ {r['end_wait']:.2f}s after training, for its write)" if r["end_wait"] else ""
        print(
            f"step {r['step']:3d}: blocked {r['blocked']:5.2f}s = {r['write_main']:.2f} + {r['copy']:.2f} + "
            f"{r['wait']:.2f} + {r['registration']:.3f} + {r['rest']:.3f}{end}\n"
            f"           write {r['write_background']:5.2f}s; sent in {r['sent_in']}: {r['send']:.2f}s "
            f"({r['template']:.2f}, {r['upload']:.2f}); READY {r['ready_after_enqueue']:.2f}s / "
            f"{r['ready_after_checkpoint']:.2f}s; store: {r['store']}"
        )
    if rows:
        blocked = [r["blocked"] for r in rows]
        print(
            f"blocked per version: median {statistics.median(blocked):.2f}s, max {max(blocked):.2f}s; "
            f"checkpoint write on the training thread median "
            f"{statistics.median(r['write_main'] for r in rows):.2f}s, registration median "
            f"{statistics.median(r['registration'] for r in rows):.3f}s (max "
            f"{max(r['registration'] for r in rows):.3f}s); READY median "
            f"{statistics.median(r['ready_after_enqueue'] for r in rows):.2f}s after enqueueing"
        )
    allocate = [e for e in result["events"] if e["name"] == "saver:allocate"]
    if allocate:
        print(f"once, before the first step: checkpoint buffers made in {_sum(allocate):.2f}s")
    sends = [e for e in result["events"] if e["name"] == "sender:send"]
    early = [
        e
        for e in result["events"]
        if e["name"] == "pyfunc:template" and not any(s["start"] <= e["start"] <= s["end"] for s in sends)
    ]
    if early:
        print(
            f"once, before the first step: the versions' shared pyfunc directory made in {_sum(early):.2f}s"
        )
    steps = step_times(result)
    print(
        f"train step (median): {steps['idle']:.2f}s with nothing in the background "
        f"({steps['n_idle']} steps), {steps['busy']:.2f}s while a checkpoint is written or a version "
        f"sent ({steps['n_busy']} steps)"
    )
    finish = [e for e in result["events"] if e["name"] == "outbox:finish"]
    if finish:
        print(f"end of run: waited {_sum(finish):.2f}s for the outbox to drain")
    print(f"whole run (child process): {result['end'] - result['start']:.1f}s")


def _sum(events: list[dict]) -> float:
    return sum(e["end"] - e["start"] for e in events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=4, help="epochs, each a checkpoint and a version")
    parser.add_argument("--steps-per-epoch", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--stores", nargs="+", default=["local", "server"], choices=["local", "server"])
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (runs, stores, timelines)")
    parser.add_argument("--code", type=Path, help="train with the vit_exp of this checkout instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    sys.path.insert(0, str(ROOT))  # tests.helpers: the server harness
    from tests.helpers.processes import MlflowServer

    top = Path(tempfile.mkdtemp(prefix="vit_exp_registration_"))
    print(f"working in {top}")
    data = write_images(top / "images", per_class=args.steps_per_epoch * args.batch_size // len(CLASSES))
    try:
        for store in args.stores:
            folder = top / store
            folder.mkdir()
            server = None
            if store == "server":
                server = MlflowServer(folder / "server", "--serve-artifacts").start()
                uri = server.url
            else:
                uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
            try:
                result = train_in_child(folder, uri, data, args)
            finally:
                if server is not None:
                    server.stop()
            report(f"{store} ({uri})", result, checkpoint_sizes(folder))
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
