"""A training run's system metrics (``system/cpu_utilization_percentage``, memory, disk, network; GPU
when MLflow finds one) by MLflow's own ``SystemMetricsMonitor``, in a thread of its own.

Not through the outbox: a sample describes the machine at that moment, so a sample lost while the
store is away is a gap, not a record to send later. The monitor logs with its own client, never in
the training thread; it is started again after a store error (MLflow's loop ends at the first one)
and stopped, within ``STOP_WAIT_S``, when the run ends.
"""

from __future__ import annotations

import functools
import logging
import threading

from vit_exp.credentials import reveal, split_credentials

STOP_WAIT_S = 5.0  # the end of a run waits at most this for the monitor (a hung store: it is left behind)


class SystemMetrics:
    """MLflow's system-metrics monitor of run ``run_id``, sampling every ``interval_s`` from now on;
    ``resumed``: a continued run, whose ``system/`` steps go on from its last one."""

    def __init__(self, run_id: str, tracking_uri: str, interval_s: float, resumed: bool = False):
        # MLflow's monitor warns at each store error; the outbox already says when the store is away.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
        uri = split_credentials(reveal(tracking_uri))[0]  # the credentials are in the environment
        self.monitor = _restarting_monitor()(
            run_id, sampling_interval=interval_s, resume_logging=resumed, tracking_uri=uri
        )
        self.monitor.start()

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """End the monitor (its last samples sent); wait at most ``wait_s`` for a store that hangs."""
        finishing = threading.Thread(target=self.monitor.finish, name="system-metrics-stop", daemon=True)
        finishing.start()
        finishing.join(wait_s)


@functools.cache
def _restarting_monitor() -> type:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class RestartingMonitor(SystemMetricsMonitor):
        """MLflow's monitor loop, started again until ``finish()``: MLflow's returns at a store error."""

        def monitor(self) -> None:
            while not self._shutdown_event.is_set():
                super().monitor()  # returns when stopped, on a store error, or once the run is not RUNNING
                for monitor in self.monitors:
                    monitor.clear_metrics()
                self._logging_step += 1  # a step whose sending failed is never given other values
                self._shutdown_event.wait(self.sampling_interval)

    return RestartingMonitor
