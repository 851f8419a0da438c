"""python -m vit_exp.ui serves the store and prints the experiment's runs page ("Model training" view)."""

from __future__ import annotations

import re
import signal
import time
import urllib.request

import pytest

from tests.helpers.processes import free_port, start_cli

pytestmark = pytest.mark.integration  # real CLI processes: the integration tier (make test-integration)


def test_ui_prints_the_runs_page_and_serves_it(tmp_path, tracking_store):
    import mlflow

    experiment = mlflow.MlflowClient(tracking_uri=tracking_store).create_experiment("vit-exp")
    port = free_port()
    log = tmp_path / "ui.log"
    process = start_cli("vit_exp.ui", f"port={port}", f"hydra.run.dir={tmp_path / 'ui'}", log=log)
    try:
        deadline, page = time.time() + 120, None
        while time.time() < deadline and page is None:
            found = re.search(r"runs of 'vit-exp': (\S+)", log.read_text())
            try:
                if found and urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200:
                    page = found[1]
            except OSError:
                time.sleep(0.5)
        expected = f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning"
        assert page == expected, log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    time.sleep(1)
    try:  # the server stopped with the command
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
        raise AssertionError("the MLflow UI kept running after its command ended")
    except OSError:
        pass
