"""Cost of the console progress bar (``trainer.progress_bar``) relative to a vit_tiny train step.

    .venv/bin/python bench/progress_cost.py [--steps 500] [--rounds 3] [--loop-rounds 2]

Measures, in one process, after the train step's compile:
1. per step, over ``--steps`` real train steps (vit_tiny, batch 64, 32x32, graph mode, a pre-loaded
   batch; ``TrainHistory`` reads the loss as in training), the time of the train step and of
   ``ConsoleProgress.on_train_step_end`` right after it, in rounds alternating three modes:
   - ``off``: no bar (``progress_bar=false``): a console line every ``print_every_n_steps`` (10) steps
     and at each epoch's last step (digits: 22 steps an epoch), into a pseudo-terminal;
   - ``bar-pty``: the bar (``ProgressBar``, as ``progress_bar=true`` builds it) drawing into a
     pseudo-terminal of 120 x 40 (``wants_bar("auto")`` takes it for a terminal), read by ``cat``
     in a child process (a terminal emulator's place);
   - ``bar-file``: the bar drawing into a regular file (``progress_bar=true``, stdout redirected);
   the console log handler writes to the same place as the bar, as Hydra's does to stdout.
   Printed per mode: the callback's mean and median wall us per step and its thread's CPU (time
   taken off the CPU by other processes does not count there), as shares of the mean step of the
   same steps; for the bar, its extra cost over ``off`` (per round, then the median) and how many
   redraws it made (carriage returns written);
2. images/s of vit_exp's loop (``run_training``, pre-loaded batches, callbacks ``TrainHistory`` and
   ``ConsoleProgress``) with the bar off vs on (pty), alternated, with each round's ratio.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import math
import os
import statistics
import struct
import subprocess
import tempfile
import termios
import time
from pathlib import Path

from tracking_overhead import build, time_steps

STEPS_PER_EPOCH = 22  # the default run's: digits, batch 64
PRINT_EVERY = 10  # trainer.print_every_n_steps' default
MODES = ("off", "bar-pty", "bar-file")


class Sink:
    """Where the console goes: a pseudo-terminal drained by ``cat`` into a file, or a regular file."""

    def __init__(self, folder: Path, kind: str):
        self.kind = kind
        self.out = folder / f"console-{kind}-{time.monotonic_ns()}.txt"
        self.reader = None
        if kind == "pty":
            master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            with open(self.out, "wb") as out:
                self.reader = subprocess.Popen(["cat"], stdin=master, stdout=out, stderr=subprocess.DEVNULL)
            os.close(master)
            self.stream = open(slave, "w", buffering=1, encoding="utf-8")  # closed in close()
        else:
            self.stream = open(self.out, "w", buffering=1, encoding="utf-8")

    def close(self) -> int:
        """Close the stream (``cat`` then sees the end); the carriage returns written to it."""
        self.stream.close()
        if self.reader is not None:
            self.reader.wait(timeout=30)
        written = self.out.read_bytes()
        self.out.unlink()
        return written.count(b"\r")


def console_callbacks(step_parts, sink: Sink, bar: bool, total_steps: int):
    """TrainHistory and ConsoleProgress as session.py builds them, the console handler on ``sink``."""
    from vit_exp.train.callbacks import ConsoleProgress, TrainHistory
    from vit_exp.train.plan import TrainPlan
    from vit_exp.train.progress import ProgressBar

    _, lr_values, _, _, _ = step_parts
    epochs = math.ceil(total_steps / STEPS_PER_EPOCH)
    plan = TrainPlan(epochs, STEPS_PER_EPOCH, total_steps, ())
    history = TrainHistory(64, lr_values)
    progress = ProgressBar(total_steps, file=sink.stream) if bar else None
    return plan, history, ConsoleProgress(history, plan, PRINT_EVERY, progress)


def use_console(stream) -> logging.Handler:
    """A root StreamHandler at INFO on ``stream`` with Hydra's console format (ours: conf/hydra)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    return handler


def callback_cost(step_parts, folder: Path, mode: str, steps: int, warmup: int = 20) -> dict:
    """Per step: train step seconds and ``ConsoleProgress.on_train_step_end`` seconds, in ``mode``."""
    from mindspore.train import RunContext

    from vit_exp.train.loop import CallbackParams, gc_frozen
    from vit_exp.train.progress import wants_bar

    _, _, train_step, images, labels = step_parts
    sink = Sink(folder, "file" if mode == "bar-file" else "pty")
    use_console(sink.stream)
    total = warmup + steps
    plan, history, console = console_callbacks(step_parts, sink, mode != "off", total)
    cb = CallbackParams(cur_epoch_num=1, cur_step_num=0, epoch_num=plan.epochs, batch_num=STEPS_PER_EPOCH)
    context = RunContext(cb)
    step_s, callback_s, callback_cpu_s = [], [], []
    with gc_frozen():
        history.on_train_begin(context)
        console.on_train_begin(context)  # opens the bar
        for i in range(total):
            cb.cur_epoch_num = i // STEPS_PER_EPOCH + 1
            start = time.perf_counter()
            history.on_train_step_begin(context)
            cb.net_outputs = train_step(images, labels)
            cb.cur_step_num += 1
            history.on_train_step_end(context)  # reads the loss: the step's sync
            middle, middle_cpu = time.perf_counter(), time.thread_time()
            console.on_train_step_end(context)
            end_cpu, end = time.thread_time(), time.perf_counter()
            if i >= warmup:
                step_s.append(middle - start)
                callback_s.append(end - middle)
                callback_cpu_s.append(end_cpu - middle_cpu)
        start = time.perf_counter()
        console.on_train_end(context)  # removes the bar
        closing = time.perf_counter() - start
    is_terminal = wants_bar("auto", True, sink.stream)
    logging.getLogger().handlers = []
    redraws = sink.close()
    return {
        "step_s": step_s,
        "callback_s": callback_s,
        "callback_cpu_s": callback_cpu_s,
        "close_s": closing,
        "redraws": redraws,
        "terminal": is_terminal,
    }


def loop_ips(step_parts, folder: Path, steps: int, bar: bool) -> float:
    """Images/s of ``run_training`` over ``steps`` pre-loaded batches with TrainHistory + ConsoleProgress."""
    from vit_exp.train.loop import gc_frozen, run_training

    _, _, step, images, labels = step_parts
    sink = Sink(folder, "pty")
    use_console(sink.stream)
    plan, history, console = console_callbacks(step_parts, sink, bar, steps)

    def batches(epoch, skip):
        return [(images, labels)] * (min(STEPS_PER_EPOCH, steps - (epoch - 1) * STEPS_PER_EPOCH) - skip)

    start = time.perf_counter()
    with gc_frozen():
        run_training(step, batches, plan=plan, callbacks=[history, console])
    seconds = time.perf_counter() - start
    logging.getLogger().handlers = []
    sink.close()
    return steps * 64 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="timed train steps per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop-rounds", type=int, default=2, help="0: skip the run_training A/B")
    args = parser.parse_args()
    parts = build(64)
    _, _, step, images, labels = parts
    time_steps(step, images, labels, 20)  # graph compile + warm-up
    print(f"vit_tiny train step (batch 64): median {time_steps(step, images, labels, 100) * 1000:.2f} ms")
    import tqdm

    print(f"tqdm {tqdm.__version__}")
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for mode in MODES:
                results[mode].append(callback_cost(parts, Path(tmp), mode, args.steps))
        for mode in MODES:
            rounds = results[mode]
            callback = [c for r in rounds for c in r["callback_s"]]
            step_mean = statistics.mean(s for r in rounds for s in r["step_s"])
            mean = statistics.mean(callback)
            cpu = statistics.mean(c for r in rounds for c in r["callback_cpu_s"])
            extra_cpu = cpu - statistics.mean(c for r in results["off"] for c in r["callback_cpu_s"])
            extra = [
                statistics.mean(r["callback_s"]) - statistics.mean(o["callback_s"])
                for r, o in zip(rounds, results["off"], strict=True)
            ]
            shares = [statistics.mean(r["callback_s"]) / statistics.mean(r["step_s"]) for r in rounds]
            line = (
                f"{mode:8s}: on_train_step_end mean {mean * 1e6:.1f} us/step (median "
                f"{statistics.median(callback) * 1e6:.1f}, max {max(callback) * 1e3:.2f} ms) = "
                f"{100 * mean / step_mean:.3f}% of the mean step ({step_mean * 1000:.2f} ms); "
                f"its thread's CPU {cpu * 1e6:.1f} us/step = {100 * cpu / step_mean:.3f}%; per round "
                + ", ".join(f"{100 * s:.3f}%" for s in shares)
            )
            if mode != "off":
                line += (
                    f"; over off: {statistics.median(extra) * 1e6:.1f} us/step "
                    f"(rounds {', '.join(f'{e * 1e6:.1f}' for e in extra)}) = "
                    f"{100 * statistics.median(extra) / step_mean:.3f}% of a step, CPU over off "
                    f"{extra_cpu * 1e6:.1f} us/step = {100 * extra_cpu / step_mean:.3f}%; "
                    f"{statistics.mean(r['redraws'] for r in rounds):.0f} redraws "
                    f"per {args.steps + 20} steps; "
                    f"close {statistics.median(r['close_s'] for r in rounds) * 1e3:.2f} ms"
                )
            line += f"; a terminal for wants_bar('auto'): {rounds[0]['terminal']}"
            print(line)
        if args.loop_rounds:
            ips: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.loop_rounds):
                for bar in (False, True):
                    ips[bar].append(loop_ips(parts, Path(tmp), args.steps, bar))
            base, shown = statistics.median(ips[False]), statistics.median(ips[True])
            rounds = ", ".join(f"{b / a:.3f}" for a, b in zip(ips[False], ips[True], strict=True))
            print(
                f"run_training images/s, {args.steps} steps: bar off {base:.0f}, bar on (pty) {shown:.0f} "
                f"(ratio {shown / base:.3f}; per round: {rounds})"
            )


if __name__ == "__main__":
    main()
