"""Jobs starting together log the same dataset into one experiment: every run gets its inputs."""

from __future__ import annotations

import threading

from vit_exp.data.digest import DataIdentity, SplitDigest
from vit_exp.tracking.record.lineage import log_datasets

JOBS = 4


def identity() -> DataIdentity:
    def split(name: str) -> SplitDigest:
        return SplitDigest(name, f"/data/{name}", f"{name}-digest", 10, 1000, 2)

    return DataIdentity("toy", "data-digest", 2, "names-digest", split("train"), split("val"))


def test_jobs_logging_the_same_dataset_at_once_all_get_their_inputs(tmp_path):
    """MLflow looks a dataset up, then inserts it: jobs at the same moment all miss it, and all
    but one insert fail on the unique key (a sweep job failed so in CI). Each run must still get
    its train and val inputs and its data tags."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("sweep")
    runs = [client.create_run(experiment).info.run_id for _ in range(JOBS)]
    start, errors = threading.Barrier(JOBS), []

    def job(run_id: str) -> None:
        start.wait()
        try:
            log_datasets(client, run_id, identity())
        except Exception as exc:  # reported below, with the run
            errors.append(f"{run_id}: {exc}")

    threads = [threading.Thread(target=job, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors, errors[0]
    for run_id in runs:
        run = client.get_run(run_id)
        contexts = {i.tags[0].value: i.dataset.digest for i in run.inputs.dataset_inputs}
        # each split's digest: the data digest's first 8 characters, then the split's own
        assert contexts == {"train": "data-digtrain-di", "val": "data-digval-dige"}
        assert run.data.tags["data.digest"] == "data-digest"
