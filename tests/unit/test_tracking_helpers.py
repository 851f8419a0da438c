"""Pure helpers of the tracking layer: config flattening, run names, the registration policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from vit_exp.config import group_settings
from vit_exp.errors import ConfigError
from vit_exp.tracking.record.lifecycle import flatten, readable_run_name
from vit_exp.tracking.store import default_artifact_location


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
        group_settings("registry", register="sometimes")
    with pytest.raises(ConfigError, match=r"mlflow.tracking_uri"):
        group_settings("mlflow", tracking_uri="")


@pytest.mark.parametrize(
    ("policy", "expected"), [("every", [2, 4, 5]), ("best", [2, 5]), ("last", [5]), ("none", [])]
)
def test_registration_policy(policy, expected, tmp_path):
    """Real checkpoints of a tiny network, every 2nd epoch of 5 and after the last (epoch 5); each
    version is queued right after the metrics logged before it."""
    from mindspore import nn
    from mindspore.train import RunContext

    from vit_exp.tracking.registry.checkpoints import CheckpointRegistration
    from vit_exp.train.callbacks import CheckpointSaver, EpochRecord, TrainHistory
    from vit_exp.train.loop import CallbackParams

    queue = []
    history = TrainHistory(batch_size=8, lr_values=[])
    registration = CheckpointRegistration(
        group_settings("registry", register=policy, name="m"),
        "run",
        tmp_path / "inputs",
        put=queue.append,
        flush_metrics=lambda: queue.append("metrics flushed"),
    )
    saver = CheckpointSaver(tmp_path, "m", history, every_n_epochs=2, keep=2, listeners=[registration])
    cb = CallbackParams(train_network=nn.Dense(2, 2), batch_num=10, cur_epoch_num=0, cur_step_num=0)
    context = RunContext(cb)
    for epoch, top1 in [(1, 0.5), (2, 0.7), (3, 0.9), (4, 0.6), (5, 0.8)]:
        cb.cur_epoch_num, cb.cur_step_num = epoch, epoch * 10
        history.epochs.append(EpochRecord(epoch, epoch * 10, 1.0, 1.0, 1.0, val={"top1": top1}))
        for callback in (saver, registration):
            callback.on_train_epoch_end(context)
    for callback in (saver, registration):
        callback.on_train_end(context)
    assert [c.record.epoch for c in saver.written] == [2, 4, 5]
    records = [item for item in queue if item != "metrics flushed"]
    versions = [r for r in records if r.register]
    assert [int(v.tags["epoch"]) for v in versions] == expected
    # every epoch checkpoint is a LoggedModel of the run, once ("last" registers one of them at the end)
    assert [int(r.tags["epoch"]) for r in records if not r.model_logged] == [2, 4, 5]
    assert queue == [entry for r in records for entry in ("metrics flushed", r)]  # metrics first
    assert all(v.kind == "version" and v.name == "m" and v.tags["val/top1"] for v in versions)
    assert all(v.tags["registered_by"] == f"{policy} (set by registry.register)" for v in versions)
    assert all(len(v.tags) <= 6 and f"{policy}: " in v.description for v in versions)
    # the versions table shows a description's first line raw: plain text, the score first
    firsts = [v.description.splitlines()[0] for v in versions]
    assert all(f.startswith("val/top1 0.") and not set("*`|") & set(f) for f in firsts)
    assert [c.record.epoch for c in saver.on_disk] == [4, 5] and not saver.written[0].path.exists()


@pytest.mark.parametrize("background", [False, True])
def test_step_checkpoints_are_queued_as_versions_while_their_files_are_there(background, tmp_path):
    """``registry.step_checkpoints``: each step checkpoint is queued once whole (at the step end, or
    once its background write is done), before ``trainer.keep_step_checkpoints`` prunes it; earlier they
    waited for the epoch end and the pruned ones were lost."""
    from mindspore import nn
    from mindspore.train import RunContext

    from vit_exp.tracking.registry.checkpoints import CheckpointRegistration
    from vit_exp.train.callbacks import CheckpointSaver, EpochRecord, TrainHistory
    from vit_exp.train.loop import CallbackParams

    history = TrainHistory(batch_size=8, lr_values=[])
    present = []
    registration = CheckpointRegistration(
        group_settings("registry", register="every", name="m", step_checkpoints=True),
        "run",
        tmp_path / "inputs",
        put=lambda record: present.append((record.step, Path(record.checkpoint).is_file())),
    )
    saver = CheckpointSaver(
        tmp_path,
        "m",
        history,
        1,
        5,
        every_n_steps=1,
        keep_steps=1,
        background=background,
        listeners=[registration],
    )
    cb = CallbackParams(train_network=nn.Dense(2, 2), batch_num=4, cur_epoch_num=1, cur_step_num=0)
    context = RunContext(cb)
    callbacks = (saver, registration)
    for callback in callbacks:
        callback.on_train_begin(context)
    for step in range(1, 5):
        cb.cur_step_num = step
        for callback in callbacks:
            callback.on_train_step_end(context)
    history.epochs.append(EpochRecord(1, 4, 1.0, 1.0, 1.0, val={"top1": 0.5}))
    for hook in ("on_train_epoch_end", "on_train_end"):
        for callback in callbacks:
            getattr(callback, hook)(context)
    assert present == [(1, True), (2, True), (3, True), (4, True)]
    assert [c.kind for c in saver.on_disk] == ["step", "epoch"]  # steps 1 and 2 pruned after queueing


def test_run_links_point_at_the_configured_ui():
    from vit_exp.tracking.store import runs_page_url

    local = "sqlite:////tmp/mlruns/mlflow.db"
    assert runs_page_url(local, "3", "abc").startswith("http://127.0.0.1:5000/#/experiments/3/runs/abc?")
    on_5001 = runs_page_url(local, "3", "abc", ui_url="http://10.0.0.2:5001/")
    assert on_5001 == "http://10.0.0.2:5001/#/experiments/3/runs/abc?workflowType=machine_learning"
    server = runs_page_url("http://ann:secret@10.0.0.5:5000", "3")
    assert server == "http://10.0.0.5:5000/#/experiments/3/runs?workflowType=machine_learning"


def test_params_of_the_default_run_are_its_hyperparameters(compose):
    from vit_exp.job import ConfigSnapshot
    from vit_exp.tracking.resume import comparable_config, hyperparameters

    flat = ConfigSnapshot.of(compose()).flat
    params = hyperparameters(flat)
    assert {
        "optim.lr",
        "trainer.batch_size",
        "model.embed_dim",
        "data.hflip_prob",
        "sched.warmup_epochs",
    } <= set(params)
    assert "device.precision" in params  # a hyperparameter, though a resume compares it only when not fp32
    left_out = [
        k for k in params if k.endswith(("_target_", "_partial_")) or k.startswith(("mlflow.", "paths."))
    ]
    left_out += [k for k in params if k.startswith("registry.") or k in ("data.root", "resume", "task_name")]
    assert left_out == []
    # setup keys (splits, kernels, device mode, workers) are compared by a resume, yet not params
    setup = {
        "data.val_split",
        "data.num_workers",
        "model.fused_kernels",
        "device.mode",
        "trainer.deterministic",
    }
    assert setup <= set(comparable_config(flat)) and not setup & set(params)
    assert len(params) + 4 <= 45  # + model.num_parameters, device.precision_used, parallel.* (issue 26)


def test_auto_registers_less_for_smoke_runs_and_sweep_jobs():
    from vit_exp.tracking.registry import registration_rule

    assert registration_rule("auto", smoke_run=False, sweep_job=False).policy == "best"
    assert registration_rule("auto", smoke_run=False, sweep_job=True).policy == "last"
    assert registration_rule("auto", smoke_run=True, sweep_job=True).policy == "none"
    chosen = registration_rule("every", smoke_run=True, sweep_job=True, objective="val/loss")
    assert chosen.policy == "every" and chosen.tag() == "every (set by registry.register)"
    best = registration_rule("auto", smoke_run=False, sweep_job=False, objective="val/loss")
    assert best.tag() == "best (auto: a training run)" and "new best val/loss" in best.describe()


@pytest.mark.parametrize("layout", ["model_config", "artifacts"])
def test_a_version_loads_its_config_from_its_mlmodel_or_as_written_before(layout, tmp_path):
    """A version's config and class names are in its MLmodel's model config; a version written before
    has them as ``config`` and ``class_names`` artifacts: both load."""
    import json

    import mindspore as ms
    import yaml
    from mlflow.models import Model

    from tests.helpers.models import TINY_VIT_ARGS, tiny_vit
    from vit_exp.tracking.registry.resolve import load_predictor

    config = {"model": {"name": "vit_tiny", **TINY_VIT_ARGS}, "data": {"mean": [1.0] * 3, "std": [2.0] * 3}}
    names = ["ant", "bee", "cat"]
    version = tmp_path / "version"
    (version / "artifacts").mkdir(parents=True)
    ms.save_checkpoint(tiny_vit(num_classes=3), str(version / "artifacts" / "net.ckpt"))
    flavor = {"artifacts": {"checkpoint": {"path": "artifacts/net.ckpt"}}}
    if layout == "model_config":
        flavor["config"] = {"top_k": 2, **config, "class_names": names}
    else:
        (version / "artifacts" / "config.yaml").write_text(yaml.safe_dump(config))
        (version / "artifacts" / "class_names.json").write_text(json.dumps(names))
        flavor["artifacts"] |= {"config": {"path": "artifacts/config.yaml"}}
        flavor["artifacts"] |= {"class_names": {"path": "artifacts/class_names.json"}}
    Model(flavors={"python_function": flavor}).save(str(version / "MLmodel"))
    predictor = load_predictor(str(version))
    assert predictor.class_names == names and predictor.mean == [1.0] * 3 and predictor.std == [2.0] * 3
    assert predictor.image_size == 32 and predictor.net.num_classes == 3


def test_a_recipe_setting_that_is_off_is_neither_compared_nor_a_param():
    from vit_exp.tracking.resume import OFF, comparable_config, config_digest, hyperparameters

    prefix, (switch, off) = next(iter(OFF.items()))
    before = {"optim.lr": "0.001"}  # a run recorded before the setting existed
    now_off = before | {switch: off, f"{prefix}other": "9"}
    assert config_digest(comparable_config(now_off)) == config_digest(comparable_config(before))
    assert hyperparameters(now_off) == before
    now_on = before | {switch: "7", f"{prefix}other": "9"}
    assert {switch, f"{prefix}other"} <= set(hyperparameters(now_on)) & set(comparable_config(now_on))
