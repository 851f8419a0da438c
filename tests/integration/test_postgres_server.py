"""The team tracking server of ``deploy/tracking_server.sh``: ``mlflow server`` on PostgreSQL, artifacts
proxied. A parallel sweep records into it completely: runs, every metric point, model versions whose
files come back through the server."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.processes import free_port, run_cli, run_msrun
from tests.integration.test_store_concurrency import SMOKE_RUN
from vit_exp.config import PROJECT_ROOT

pytestmark = pytest.mark.slow

SCRIPT = PROJECT_ROOT / "deploy" / "tracking_server.sh"
MAX_STEPS = int(next(o for o in SMOKE_RUN if o.startswith("trainer.max_steps=")).split("=")[1])


def postgres_binaries() -> bool:
    """What the script looks for: pg_ctl and initdb in /usr/lib/postgresql/*/bin, or on PATH."""
    for folder in glob.glob("/usr/lib/postgresql/*/bin"):
        if Path(folder, "pg_ctl").exists() and Path(folder, "initdb").exists():
            return True
    return shutil.which("pg_ctl") is not None and shutil.which("initdb") is not None


@dataclass
class PostgresServer:
    url: str
    data_dir: Path
    pg_port: int
    password: str

    @property
    def database_uri(self) -> str:
        return f"postgresql+psycopg2://mlflow:{self.password}@127.0.0.1:{self.pg_port}/mlflow"


def script(command: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), command, *(["--background"] if command == "start" else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def pg_server():
    """PostgreSQL + ``mlflow server`` started by the script on free ports, in a fresh data folder."""
    if not postgres_binaries():
        pytest.skip("PostgreSQL is not installed (no pg_ctl/initdb): apt-get install -y postgresql")
    # Not tmp_path: pytest's temp root is mode 0700, and as root the script runs PostgreSQL as the
    # `postgres` user, which must reach its data folder.
    data_dir = Path(tempfile.mkdtemp(prefix="vit-exp-pg-"))
    data_dir.chmod(0o755)
    pg_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env |= {
        "DATA_DIR": str(data_dir),
        "PG_PORT": str(pg_port),
        "MLFLOW_PORT": str(mlflow_port),
        "MLFLOW": str(Path(sys.executable).parent / "mlflow"),
        "WORKERS": "2",
        # MLflow's GenAI job runner (7 huey processes) is not what is tested; 2 cores are enough work
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    started = script("start", env)
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        password = (data_dir / "db-password").read_text().strip()
        assert (data_dir / "db-password").stat().st_mode & 0o777 == 0o600
        assert password not in started.stdout + started.stderr  # printed masked only
        assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}" in started.stdout
        yield PostgresServer(f"http://127.0.0.1:{mlflow_port}", data_dir, pg_port, password)
    finally:
        stopped = script("stop", env, timeout=120)
        shutil.rmtree(data_dir, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr[-3000:]


def command_lines_holding(secret: str) -> list[str]:
    """The command lines (what `ps` shows) of this machine's processes that hold ``secret``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if secret.encode() in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_a_parallel_sweep_and_a_2_worker_training_record_completely_into_postgres(pg_server, tmp_path):
    assert command_lines_holding(pg_server.password) == []  # the backend URI is in no `ps` line
    proc = run_cli(
        "vit_exp.run",
        "--multirun",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *SMOKE_RUN,
        "optim.lr=1e-3,2e-3",
        f"mlflow.tracking_uri={pg_server.url}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=pg_server.url, registry_uri=pg_server.url)
    runs = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(float(c.data.params["optim.lr"]) for c in children) == [1e-3, 2e-3]

    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, MAX_STEPS + 1))  # one point per step, none twice

    name = "vit_tiny-digits"  # registry.name: ${model.name}-${data.name}
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(int(v.version) for v in versions) == list(range(1, len(versions) + 1))
    assert {v.run_id for v in versions} == {c.info.run_id for c in children}  # each child registered
    assert {str(v.status).rsplit(".", 1)[-1] for v in versions} == {"READY"}

    # the version's files come back through the server's artifact proxy, as stored in its destination
    for version in versions:
        source = client.get_model_version_download_uri(name, version.version)
        assert source.startswith("mlflow-artifacts:/"), source  # proxied, not a path on the server
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source,
                dst_path=str(tmp_path / f"v{version.version}"),
                tracking_uri=pg_server.url,
            )
        )
        assert (local / "MLmodel").is_file()
        checkpoints = sorted(local.rglob("*.ckpt"))
        assert checkpoints, sorted(p.name for p in local.rglob("*"))
        stored = pg_server.data_dir / "artifacts" / source.removeprefix("mlflow-artifacts:/").lstrip("/")
        for checkpoint in checkpoints:
            assert checkpoint.read_bytes() == (stored / checkpoint.relative_to(local)).read_bytes()

    # ... and the records are in PostgreSQL
    import sqlalchemy

    engine = sqlalchemy.create_engine(pg_server.database_uri)
    try:
        with engine.connect() as db:
            runs_stored, versions_stored = (
                db.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}")).scalar()
                for table in ("runs", "model_versions")
            )
        assert runs_stored == 3 and versions_stored == len(versions)
    finally:
        engine.dispose()
    assert pg_server.password not in proc.stdout + proc.stderr

    # a 2-worker msrun training into the same server: rank 0's run only, every step, its version
    trained = run_msrun(
        2,
        "vit_exp.run",
        *SMOKE_RUN,
        "trainer.batch_size=32",
        f"mlflow.tracking_uri={pg_server.url}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'msrun-run'}",
        log_dir=tmp_path / "msrun",
    )
    assert trained.returncode == 0, trained.stdout[-3000:]
    after = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    (new,) = [r for r in after if r.info.run_id not in {r.info.run_id for r in runs}]
    assert new.info.status == "FINISHED" and "mlflow.parentRunId" not in new.data.tags
    assert (new.data.params["parallel.world_size"], new.data.params["parallel.global_batch_size"]) == (
        "2",
        "64",
    )
    steps = [m.step for m in client.get_metric_history(new.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, MAX_STEPS + 1))
    assert [v.run_id for v in client.search_model_versions(f"name='{name}'") if v.run_id == new.info.run_id]
