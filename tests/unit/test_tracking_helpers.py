"""Pure helpers of the tracking layer: config flattening, run names, the registration policy."""

from __future__ import annotations

import pytest

from vit_exp.errors import ConfigError
from vit_exp.tracking.registry import CheckpointRegistrar, RegistrySettings
from vit_exp.tracking.runs import MlflowSettings, default_artifact_location, flatten, readable_run_name
from vit_exp.train.callbacks import EpochRecord


def test_flatten_gives_dotted_keys_and_skips_hydra(compose):
    cfg = compose(["optim.lr=0.004"])
    flat = flatten(cfg)
    assert flat["optim.lr"] == "0.004"
    assert flat["model.embed_dim"] == "64"
    assert flat["data.train_crop_scale"] == "[0.6, 1.0]"
    assert not any(key.startswith("hydra") for key in flat)
    assert all(isinstance(v, str) for v in flat.values())


def test_readable_run_name(compose):
    cfg = compose(["model=vit_small"])
    name = readable_run_name(
        cfg, ["model=vit_small", "optim.lr=3e-4", "paths.cache_dir=/x", "hydra.run.dir=/y"]
    )
    assert name == "vit_small-digits optim.lr=3e-4"


def test_tracking_uri_env_wins_over_default_and_cli_wins_over_env(compose, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert compose().mlflow.tracking_uri == "http://127.0.0.1:5999"
    assert compose(["mlflow.tracking_uri=sqlite:///x.db"]).mlflow.tracking_uri == "sqlite:///x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert compose().mlflow.tracking_uri.endswith("/mlruns/mlflow.db")


def test_sqlite_artifacts_live_beside_the_database(tmp_path):
    location = default_artifact_location(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "exp")
    assert location == (tmp_path / "mlruns" / "artifacts" / "exp").as_uri()
    assert default_artifact_location("http://127.0.0.1:5000", "exp") is None


def test_settings_validation():
    with pytest.raises(ConfigError, match=r"registry.register"):
        RegistrySettings(register="sometimes")
    with pytest.raises(ConfigError, match=r"mlflow.tracking_uri"):
        MlflowSettings(tracking_uri="")


def record(epoch: int, top1: float | None) -> EpochRecord:
    val = {} if top1 is None else {"top1": top1}
    return EpochRecord(epoch=epoch, step=epoch * 10, train_loss=1.0, seconds=1.0, images_per_s=1.0, val=val)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("every", [1, 2, 3, 4]), ("best", [1, 2, 4]), ("last", ["final"]), ("none", [])],
)
def test_registration_policy(policy, expected, tmp_path):
    registrar = CheckpointRegistrar(RegistrySettings(register=policy, name="m"), "run", {}, b"")
    chosen = []
    for epoch, top1 in [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.9)]:
        if registrar.wants(record(epoch, top1), final=False):
            chosen.append(epoch)
            registrar.versions.append((str(epoch), None, None))
    if registrar.wants(record(4, 0.9), final=True):
        chosen.append("final")
    assert chosen == expected
