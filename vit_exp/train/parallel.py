"""Data-parallel training under MindSpore's ``msrun``: which process this is, and the step's loss.

msrun starts a scheduler (``serve_if_scheduler``) and N workers running the same command; each worker joins
in data-parallel mode (``start``: gradients averaged) and reads its own shard of each global batch."""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from vit_exp.errors import ConfigError

ROLE = "MS_ROLE"  # set by msrun: MS_SCHED for the scheduler, MS_WORKER for the workers
WORKERS = "MS_WORKER_NUM"
RANK = "RANK_ID"


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel job (one process: world size 1, rank 0)."""

    world_size: int = 1
    rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that records (MLflow run, checkpoints, versions)."""
        return self.rank == 0

    def global_batch(self, per_device_batch: int) -> int:
        return per_device_batch * self.world_size


def from_environment() -> DataParallel:
    """The job as msrun describes it in the environment (no msrun: one process)."""
    if os.environ.get(ROLE) != "MS_WORKER":
        return DataParallel()
    try:
        world, rank = int(os.environ[WORKERS]), int(os.environ[RANK])
    except (KeyError, ValueError):
        raise ConfigError(f"msrun worker without a usable {WORKERS}/{RANK} in its environment") from None
    return DataParallel(world, rank)


def serve_if_scheduler() -> None:
    """In msrun's scheduler process: serve the cluster until the workers are done, then exit.
    Call it first: the scheduler runs the same command but must not compose configs or touch the store."""
    if os.environ.get(ROLE) != "MS_SCHED":
        return
    from mindspore.communication import init

    init()  # returns when the cluster is finished
    sys.exit(0)


def msrun_prefix() -> str:
    """How this process was started by msrun, as a command prefix ("" outside msrun)."""
    workers = os.environ.get(WORKERS)
    if os.environ.get(ROLE) != "MS_WORKER" or not workers:
        return ""
    return f"msrun --worker_num={workers} ... "


def console_rank_label() -> str:
    """``[rank N]`` in a worker of a multi-worker msrun job ("" otherwise): on each console line, as
    msrun shows all workers' output in one stream."""
    workers = from_environment()
    return f"[rank {workers.rank}]" if workers.world_size > 1 else ""


def console_level() -> str:
    """The console's log level: WARNING in a worker other than rank 0 (its INFO lines repeat rank 0's),
    else NOTSET (the loggers' own levels)."""
    return "NOTSET" if from_environment().is_main else "WARNING"


def worker_overrides() -> list[str]:
    """Hydra overrides for worker N > 0: its config copy in ``.hydra-rankN`` and its log in
    ``<task>-rankN.log``, apart from rank 0's in the shared ``hydra.run.dir``."""
    workers = from_environment()
    if workers.is_main:
        return []
    suffix = f"rank{workers.rank}"
    return [
        f"hydra.output_subdir=.hydra-{suffix}",
        f"hydra.job_logging.handlers.file.filename=${{hydra.runtime.output_dir}}/${{hydra.job.name}}-{suffix}.log",
    ]


def start(parallel: DataParallel, exit_log: Path | None = None) -> None:
    """Join the msrun cluster in data-parallel mode (gradients averaged). After ``device.apply``.
    ``exit_log``: where what MindSpore prints while the worker exits goes (see ``quiet_exit``)."""
    if parallel.world_size == 1 and os.environ.get(ROLE) != "MS_WORKER":
        return
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    end_with_launcher()
    init()
    if (get_group_size(), get_rank()) != (parallel.world_size, parallel.rank):
        raise ConfigError(
            f"msrun: this worker is rank {get_rank()} of {get_group_size()}, but its environment "
            f"says {parallel.rank} of {parallel.world_size}"
        )
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    if exit_log is not None:
        atexit.register(quiet_exit, exit_log)


def quiet_exit(exit_log: Path) -> None:
    """At exit, send stderr (fd 2) to ``exit_log``: MindSpore's cluster threads log two INFO lines
    each as they stop, past every log level setting (GLOG_v, MS_SUBMODULE_LOG_v). Registered after
    MindSpore's own exit hooks, so it runs before them; our console is stdout, and the exit code,
    which msrun watches, is untouched. A crash while exiting is kept in ``exit_log``."""
    try:
        sys.stderr.flush()
        exit_log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(exit_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return
    os.dup2(fd, 2)
    os.close(fd)


def end_with_launcher() -> None:
    """Get SIGTERM when msrun (our parent) dies: msrun stopped by SIGTERM leaves its workers running,
    and the main worker must still end its run KILLED with a checkpoint. Linux only (no-op elsewhere)."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # msrun is already gone (the signal would never come)
        os.kill(os.getpid(), signal.SIGTERM)


MAX_SHARED_BYTES = 8192


def share_from_main(value):
    """The main worker's ``value`` (JSON-able) on every worker, by one AllReduce: for what only
    rank 0 can find out (it alone reads the store), e.g. the checkpoint a resume continues from."""
    import json

    import numpy as np
    from mindspore import Tensor, nn, ops
    from mindspore.communication import get_rank

    payload = np.zeros(MAX_SHARED_BYTES, np.float32)
    if get_rank() == 0:
        encoded = json.dumps(value).encode()
        if len(encoded) > MAX_SHARED_BYTES:
            raise ConfigError(f"msrun: cannot share {len(encoded)} bytes between workers (path too long)")
        payload[: len(encoded)] = np.frombuffer(encoded, np.uint8)

    class Sum(nn.Cell):
        def __init__(self):
            super().__init__()
            self.all_reduce = ops.AllReduce()

        def construct(self, x):
            return self.all_reduce(x)

    summed = Sum()(Tensor(payload)).asnumpy().astype(np.uint8)
    return json.loads(summed[summed > 0].tobytes().decode())


def mean_loss_step(train_step, world_size: int):
    """``train_step`` returning the workers' mean loss; same parameters and names (checkpoints unchanged)."""
    if world_size == 1:
        return train_step
    from mindspore import nn, ops

    class MeanLossAcrossWorkers(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.train_step = train_step
            self.all_reduce = ops.AllReduce()
            self.scale = 1.0 / world_size

        def construct(self, images, labels):
            return self.all_reduce(self.train_step(images, labels)) * self.scale

    return MeanLossAcrossWorkers()
