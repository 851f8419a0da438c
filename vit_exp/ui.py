"""Start the MLflow UI on the configured store and print the page of the experiment's runs.

python -m vit_exp.ui [port=5000] [host=127.0.0.1] [mlflow.experiment=vit-exp]
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from vit_exp.cli import make_main
from vit_exp.credentials import reveal
from vit_exp.errors import ConfigError, positive_int

log = logging.getLogger("vit_exp.ui")


def ui(cfg: DictConfig) -> str:
    """Print the runs page of ``cfg.mlflow.experiment``; serve the store there unless it is a server."""
    from vit_exp.tracking.store import is_server, runs_page_url, use_store

    port = positive_int("port", cfg.port)
    uri = str(cfg.mlflow.tracking_uri)
    client = use_store(uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    remote = is_server(reveal(uri))
    base = uri if remote else f"http://{cfg.host}:{port}"
    if experiment is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise ConfigError(
            f"mlflow.experiment={cfg.mlflow.experiment}: no such experiment in this store "
            f"(experiments: {names}); train first (python -m vit_exp.run)"
        )
    url = runs_page_url(base, experiment.experiment_id)
    if remote:
        print(f"MLflow UI, runs of '{experiment.name}': {url}", flush=True)
        return url
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", reveal(uri)]
    command += ["--host", str(cfg.host), "--port", str(port)]
    log.info("starting the MLflow UI (Ctrl-C stops it)")
    server = subprocess.Popen(command, env=env, start_new_session=True)  # its workers in its own group
    try:
        _wait_until_it_answers(server, port, str(cfg.host))
        print(f"MLflow UI, runs of '{experiment.name}': {url}", flush=True)  # once it answers
        server.wait()
    finally:  # Ctrl-C or SIGTERM: the server and its workers go too
        _stop_group(server)
    return url


def _wait_until_it_answers(server: subprocess.Popen, port: int, host: str, timeout_s: float = 180) -> None:
    import time
    import urllib.request

    address = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    deadline = time.monotonic() + timeout_s
    while server.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{address}:{port}/", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    if server.poll() is not None:
        raise ConfigError(
            f"port={port}: the MLflow UI did not start (exit code {server.returncode}); is the port free?"
        )
    log.warning("the MLflow UI has not answered on port %d after %.0f s; still waiting", port, timeout_s)


def _stop_group(server: subprocess.Popen) -> None:
    import signal

    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


main = make_main("ui", ui)

if __name__ == "__main__":
    main()
