"""Credentials never leave the process: a password-protected tracking server and checkpoint URL work,
and the secrets appear nowhere in what the run writes (run dir, artifacts, database, console)."""

from __future__ import annotations

import base64
import functools
import http.server
import threading
from pathlib import Path

import pytest

from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL, tiny_vit
from tests.helpers.processes import MlflowServer, run_cli

PASSWORD = "Tr4ck1ngPw-9c1e"  # the tracking server's admin password
CKPT_PASSWORD = "Ckpt-Pw-51f0"  # the checkpoint server's password
TOKEN = "tok-3a77b2"  # a query-string token of the checkpoint URL
SECRETS = (PASSWORD, CKPT_PASSWORD, TOKEN)

pytestmark = pytest.mark.integration  # real CLI processes: the integration tier (make test-integration)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth` whose admin is alice / PASSWORD."""
    tmp_path = tmp_path_factory.mktemp("auth_server")
    config = tmp_path / "auth" / "basic_auth.ini"
    config.parent.mkdir()
    config.write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{tmp_path / 'auth' / 'users.db'}\n"
        f"admin_username = alice\nadmin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = MlflowServer(
        tmp_path / "server",
        "--app-name",
        "basic-auth",
        env={"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-csrf-key"},
    ).start()
    yield server
    server.stop()


@pytest.fixture
def checkpoint_url(tmp_path):
    """A tiny-ViT checkpoint served only to bob / CKPT_PASSWORD with ?token=TOKEN."""
    from vit_exp.models.checkpoint import save_checkpoint

    served = tmp_path / "served"
    save_checkpoint(tiny_vit(num_classes=10), served / "tiny.ckpt")
    expected = "Basic " + base64.b64encode(f"bob:{CKPT_PASSWORD}".encode()).decode()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.headers.get("Authorization") != expected or f"token={TOKEN}" not in self.path:
                self.send_error(401)
                return
            self.path = self.path.split("?")[0]
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=served))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://bob:{CKPT_PASSWORD}@127.0.0.1:{server.server_port}/tiny.ckpt?token={TOKEN}"
    server.shutdown()


def files_holding(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_secrets_are_used_but_never_written(auth_server, checkpoint_url, tmp_path, monkeypatch):
    url = auth_server.url.replace("http://", f"http://alice:{PASSWORD}@")
    common = [
        *TINY_MODEL,
        "trainer.max_steps=2",
        "trainer.batch_size=64",
        "registry.name=secret-vit",
        "registry.register=every",
    ]
    common += [f"paths.cache_dir={tmp_path / 'cache'}"]
    on_command_line = run_cli(
        "vit_exp.run",
        *common,
        f"mlflow.tracking_uri={url}",
        f"model.pretrained='{checkpoint_url}'",  # quoted: Hydra reads an unquoted '=' as a second key
        f"hydra.run.dir={tmp_path / 'run1'}",
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # the same, as MLflow's environment variable
    in_environment = run_cli("vit_exp.run", *common, f"hydra.run.dir={tmp_path / 'run2'}")
    for proc in (on_command_line, in_environment):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"alice:***@127.0.0.1:{auth_server.port}" in proc.stdout  # shown masked
    for secret in SECRETS:
        for proc in (on_command_line, in_environment):
            assert secret not in proc.stdout + proc.stderr
        for folder in (tmp_path / "run1", tmp_path / "run2", auth_server.folder):
            assert files_holding(folder, secret) == [], secret

    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = mlflow.MlflowClient(tracking_uri=auth_server.url, registry_uri=auth_server.url)
    runs = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    first = next(r for r in runs if r.data.params.get("model.pretrained", "None") != "None")
    assert "mlflow.tracking_uri" not in first.data.params  # not a hyperparameter: the config artifact has it
    config = client.download_artifacts(first.info.run_id, "config_resolved.yaml", str(tmp_path))
    assert f"tracking_uri: http://alice:***@127.0.0.1:{auth_server.port}" in Path(config).read_text()
    assert first.data.params["model.pretrained"] == checkpoint_url.replace(CKPT_PASSWORD, "***").replace(
        TOKEN, "***"
    )
    assert len(client.search_model_versions("name='secret-vit'")) == 2


def test_a_wrong_password_is_refused_in_one_line(auth_server, tmp_path):
    url = auth_server.url.replace("http://", "http://alice:not-the-password@")
    proc = run_main(
        "vit_exp.run",
        *TINY_MODEL,
        "trainer.max_steps=1",
        f"mlflow.tracking_uri={url}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode != 0
    assert "not-the-password" not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: mlflow.tracking_uri=http://alice:***@")
