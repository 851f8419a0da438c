"""Promotion compares versions of the same data; ties go by val/loss, then epoch (real SQLite store)."""

from __future__ import annotations

import pytest

from vit_exp.errors import RegistryError
from vit_exp.tracking.registry.promotion import PromotionRequest, comparison_table, decide

DIGITS, IMAGENET = "d1g175d1g175aaaa", "1m4g3n3t1m4g3bbb"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """A migrated, empty SQLite store (creating one takes seconds; copying it does not)."""
    import mlflow

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def client(empty_store, tmp_path):
    import shutil

    import mlflow

    path = shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{path}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def add_versions(client, name: str, rows: list[dict]) -> None:
    """Versions of ``name`` with the tags a training run gives them (data identity, val metrics, epoch)."""
    experiment = client.create_experiment("promo")
    run = client.create_run(experiment)
    client.create_registered_model(name)
    for i, row in enumerate(rows):
        data_name, digest = row.get("data", ("digits", DIGITS))
        tags = {"data.name": data_name, "data.digest": digest, "epoch": str(row.get("epoch", i * 10))}
        tags |= {k: str(v) for k, v in row.items() if k.startswith("val/")}
        client.create_model_version(
            name, source=f"runs:/{run.info.run_id}/m{i}", run_id=run.info.run_id, tags=tags
        )


def test_several_datasets_and_no_holder_is_refused_naming_them(client):
    add_versions(client, "m", [{"val/top1": 0.9}, {"val/top1": 1.0, "data": ("imagenet", IMAGENET)}])
    with pytest.raises(RegistryError) as err:
        decide(client, PromotionRequest(name="m"))
    message = str(err.value)
    assert "2 datasets" in message and DIGITS in message and IMAGENET in message and "\n" not in message


def test_the_holders_data_decides_which_versions_compete(client):
    add_versions(
        client,
        "m",
        [
            {"val/top1": 0.8},
            {"val/top1": 0.9},
            {"val/top1": 1.0, "data": ("imagenet", IMAGENET)},  # best score, other data
        ],
    )
    client.set_registered_model_alias("m", "champion", "1")
    decision = decide(client, PromotionRequest(name="m"))
    assert decision.candidate == "2" and decision.promote and decision.data_digest == DIGITS
    table = comparison_table(decision)
    assert "digits:d1g175d1" in table and "1 version(s) trained on other data" in table
    assert "imagenet" not in table.split("(1 version")[0]


def test_explicit_data_digest_prefix_picks_the_data(client):
    add_versions(client, "m", [{"val/top1": 0.9}, {"val/top1": 0.7, "data": ("imagenet", IMAGENET)}])
    decision = decide(client, PromotionRequest(name="m", data_digest=IMAGENET[:6]))
    assert decision.candidate == "2" and decision.data_digest == IMAGENET
    with pytest.raises(RegistryError, match="matches none"):
        decide(client, PromotionRequest(name="m", data_digest="ffff"))


def test_ties_go_to_the_lower_val_loss_then_the_later_epoch(client):
    add_versions(
        client,
        "m",
        [
            {"val/top1": 1.0, "val/loss": 2.2, "epoch": 80},  # earliest tied version, worst loss
            {"val/top1": 1.0, "val/loss": 1.3, "epoch": 300},
            {"val/top1": 1.0, "val/loss": 1.3, "epoch": 290},
            {"val/top1": 0.5, "val/loss": 0.1, "epoch": 400},
        ],
    )
    assert decide(client, PromotionRequest(name="m")).candidate == "2"  # equal loss: the later epoch
    flipped = PromotionRequest(name="m", tie_breaker="val/loss", tie_breaker_higher_is_better=True)
    assert decide(client, flipped).candidate == "1"
    assert decide(client, PromotionRequest(name="m", tie_breaker=None)).candidate == "2"  # later epoch
