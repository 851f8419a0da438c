"""Real processes for the tests: the CLIs as a user runs them, and servers on free 127.0.0.1 ports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vit_exp.config import PROJECT_ROOT


def _cli_environment() -> dict:
    """This environment, minus GLOG_v (CI sets it for pytest): the CLI's own console defaults apply."""
    return {k: v for k, v in os.environ.items() if k != "GLOG_v"} | {"PYTHONUNBUFFERED": "1"}


def run_cli(
    module: str, *args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` in a fresh process, as a user would (``env``: variables to add)."""
    env = _cli_environment() | (env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=str(cwd or PROJECT_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate a server started by a test, killing it if it does not exit in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Wait until ``url`` answers 200; fail the test with the server's log if it exits or times out."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    process.terminate()
    pytest.fail(f"{url} did not answer within {timeout:.0f}s: {log.read_text()[-3000:]}")


def start_cli(
    module: str, *args: str, log: Path, cwd: Path | None = None, env: dict | None = None
) -> subprocess.Popen:
    """Start ``python -m <module> args`` in the background, output to ``log`` (``env``: variables to add)."""
    env = _cli_environment() | (env or {})
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=str(cwd or PROJECT_ROOT),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


class MlflowServer:
    """A real ``mlflow server`` on a free 127.0.0.1 port, its SQLite store and artifacts in ``folder``.

    It can be stopped and started again on the same port (tracking-outage tests).
    """

    def __init__(self, folder: Path, *extra_args: str, env: dict | None = None):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = folder / "server.db"
        self.artifacts = folder / "server-artifacts"
        self.extra_args = extra_args
        self.env = env or {}
        self.process: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(self.env)
        log = folder / "server.log"
        with log.open("a") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--backend-store-uri",
                    f"sqlite:///{self.database}",
                    "--artifacts-destination",
                    str(self.artifacts),
                    "--workers",
                    "1",
                    *self.extra_args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=folder,
            )
        wait_for_http(f"{self.url}/health", self.process, log, timeout=90)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


def msrun_command(workers: int, module: str, *args: str, log_dir: Path) -> tuple[list[str], dict]:
    """``msrun`` with ``workers`` local workers running ``python -m <module> args``, as the README
    says, and its environment (msrun starts ``python`` from PATH: this venv's comes first)."""
    bin_dir = Path(sys.executable).parent
    env = _cli_environment() | {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [
        str(bin_dir / "msrun"),
        f"--worker_num={workers}",
        f"--local_worker_num={workers}",
        f"--master_port={free_port()}",
        f"--log_dir={log_dir}",
        "--join=True",
        "--cluster_time_out=120",
        "python",
        "-m",
        module,
        *args,
    ]
    return command, env


def run_msrun(workers: int, module: str, *args: str, log_dir: Path, timeout: int = 600):
    """Run msrun (see ``msrun_command``) and wait for it (``--join``: for its workers)."""
    command, env = msrun_command(workers, module, *args, log_dir=log_dir)
    return subprocess.run(
        command, cwd=str(PROJECT_ROOT), env=env, capture_output=True, text=True, timeout=timeout
    )


def start_msrun(workers: int, module: str, *args: str, log_dir: Path) -> subprocess.Popen:
    """Start msrun (see ``msrun_command``) in the background, its console output to ``log_dir``."""
    command, env = msrun_command(workers, module, *args, log_dir=log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "msrun.out").open("w") as out:
        return subprocess.Popen(command, cwd=str(PROJECT_ROOT), env=env, stdout=out, stderr=subprocess.STDOUT)
