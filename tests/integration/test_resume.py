"""Resume (issue 13): kill -9 and SIGTERM mid-training, then ``resume=auto`` continues the same MLflow
run from its last full-state checkpoint, exactly; sweeps resume; bad resume input gets one line.

Real CLI processes (bad input: the CLI's entry in this process), a real SQLite store, digits with a
tiny ViT; an uninterrupted run of the same command (its own experiment) is the reference.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL
from tests.helpers.processes import run_cli, start_cli

pytestmark = pytest.mark.integration  # real CLI processes: the integration tier (make test-integration)

EPOCHS, STEPS_PER_EPOCH = 4, 22  # digits: 1437 training images, batch 64
TOTAL = EPOCHS * STEPS_PER_EPOCH


def train_args(store: str, cache: Path, experiment: str, run_dir: Path, *extra: str) -> list[str]:
    return [
        *TINY_MODEL,
        f"trainer.epochs={EPOCHS}",
        "trainer.print_every_n_steps=1",
        "trainer.checkpoint_every_n_steps=3",
        "trainer.deterministic=true",
        "registry.name=resumed-vit",
        "registry.register=every",
        f"mlflow.tracking_uri={store}",
        f"mlflow.experiment={experiment}",
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A store holding one uninterrupted reference run (experiment ``reference``)."""
    folder = tmp_path_factory.mktemp("resume")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cache = folder / "cache"
    proc = run_cli("vit_exp.run", *train_args(uri, cache, "reference", folder / "reference"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"uri": uri, "cache": cache, "folder": folder, "reference": only_run(uri, "reference")}


def client_of(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def only_run(uri: str, experiment: str):
    client = client_of(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client_of(uri).get_metric_history(run_id, key))


def resolve_in_process(uri: str, cache: Path, experiment: str, run_dir: Path, *extra: str):
    """``resolve_resume`` for the command ``train_args(...) + extra``, composed by Hydra in this process
    (the checks before any training; the CLI's one-line output of them is tested by CLI runs)."""
    import mlflow
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from vit_exp.config import CONFIG_DIR, register_resolvers
    from vit_exp.job import ConfigSnapshot, HydraJob, TrainJob, settings_groups
    from vit_exp.tracking.resume import resolve_resume
    from vit_exp.train.parallel import DataParallel

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        args = train_args(uri, cache, experiment, run_dir, *extra)
        cfg = compose("train", overrides=args, return_hydra_config=True)
    GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    try:
        with open_dict(cfg):  # a job's config, as Hydra hands it to the task
            del cfg["hydra"]
        job = TrainJob(HydraJob(), DataParallel(), ConfigSnapshot.of(cfg), **settings_groups(cfg))
        return resolve_resume(job, mlflow.MlflowClient(uri))
    finally:
        HydraConfig.instance().cfg = None  # this process is no Hydra app for the tests after


def train_until(args: list[str], log: Path, line: str, sig: int):
    """Start training; send ``sig`` once the console shows ``line``; return the process's exit code."""
    process = start_cli("vit_exp.run", *args, log=log)
    deadline = time.time() + 240
    while line not in log.read_text():
        assert process.poll() is None, f"training ended before '{line}':\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no '{line}' in time:\n{log.read_text()[-3000:]}"
        time.sleep(0.02)
    process.send_signal(sig)
    return process.wait(timeout=120)


def assert_same_record(uri: str, resumed, reference) -> None:
    """One point per step for every metric, equal to the uninterrupted run's (deterministic mode)."""
    for key in ("train/loss", "train/lr", "train/epoch_loss", "val/top1", "val/loss", "epoch"):
        got, want = history(uri, resumed.info.run_id, key), history(uri, reference.info.run_id, key)
        steps = [s for s, _ in got]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice"
        assert steps == [s for s, _ in want], f"{key}: steps differ"
        worst = max(abs(a - b) for (_, a), (_, b) in zip(got, want, strict=True))
        assert worst <= 1e-6, f"{key}: differs from the uninterrupted run by {worst}"
    client = client_of(uri)
    versions = client.search_model_versions(f"run_id='{resumed.info.run_id}'")
    steps = sorted(
        int(client.get_logged_model(v.source.removeprefix("models:/")).tags["global_step"]) for v in versions
    )
    assert steps == [STEPS_PER_EPOCH * e for e in range(1, EPOCHS + 1)], "one version per epoch checkpoint"
    assert sorted(int(v.tags["epoch"]) for v in versions) == list(range(1, EPOCHS + 1))


def test_kill_9_mid_epoch_then_resume_auto_is_exact_and_lands_in_the_same_run(store, tmp_path):
    uri, cache = store["uri"], store["cache"]
    step = random.Random().randint(1, STEPS_PER_EPOCH - 1)
    first = train_args(uri, cache, "killed", tmp_path / "first")
    code = train_until(first, tmp_path / "first.out", f"epoch 3/{EPOCHS} step {step}/", signal.SIGKILL)
    assert code == -signal.SIGKILL
    killed = only_run(uri, "killed")
    assert killed.info.status == "RUNNING"  # kill -9: nothing could end it

    from vit_exp.errors import RegistryError
    from vit_exp.locking import hold_if_free

    lock = hold_if_free(tmp_path / "first" / ".run.lock")  # as if the first attempt were still alive
    assert lock is not None, "kill -9 released the run's lock"
    try:
        with pytest.raises(RegistryError, match=f"run {killed.info.run_id} is being trained by a live"):
            resolve_in_process(uri, cache, "killed", tmp_path / "busy", f"resume={killed.info.run_id}")
    finally:
        lock.close()

    again = run_cli("vit_exp.run", *train_args(uri, cache, "killed", tmp_path / "again", "resume=auto"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing run {killed.info.run_id}" in again.stdout, again.stdout[-2000:]
    resumed = only_run(uri, "killed")  # the same run, not a second one
    assert resumed.info.status == "FINISHED"
    tags = resumed.data.tags
    assert tags["vit_exp.resume.count"] == "1" and tags["vit_exp.attempts"] == "2"
    from_step = int(tags["vit_exp.attempt.2.from_step"])
    assert 2 * STEPS_PER_EPOCH <= from_step <= 2 * STEPS_PER_EPOCH + step + 3, (from_step, step)
    assert_same_record(uri, resumed, store["reference"])
    kept = list((tmp_path / "first" / "checkpoints").glob("*.ckpt"))
    assert kept, "the first attempt's checkpoints are kept"
    assert (tmp_path / "again" / "checkpoints" / f"vit_tiny-e004-s{TOTAL:06d}.ckpt").is_file()


def test_sigterm_saves_a_checkpoint_ends_killed_and_resume_loses_no_step(store, tmp_path):
    uri, cache = store["uri"], store["cache"]
    step = random.Random().randint(1, STEPS_PER_EPOCH - 1)
    first = train_args(uri, cache, "preempted", tmp_path / "first")
    code = train_until(first, tmp_path / "first.out", f"epoch 2/{EPOCHS} step {step}/", signal.SIGTERM)
    output = (tmp_path / "first.out").read_text()
    assert code == 130, output[-3000:]
    last_line = output.strip().splitlines()[-1]
    assert "continue with: python -m vit_exp.run" in last_line and last_line.endswith("resume=auto")
    assert "hydra.run.dir" not in last_line  # the next attempt gets a directory of its own
    preempted = only_run(uri, "preempted")
    assert preempted.info.status == "KILLED"
    # "interrupted: stopped at step S; checkpoint P; continue with: ..." (P: a .preempt.ckpt, or the
    # step or epoch checkpoint written at that very step: a signal handled after an epoch's last step)
    saved = Path(last_line.split("; checkpoint ")[1].split(";")[0])
    saved_step = int(last_line.split("stopped at step ")[1].split(";")[0])
    assert saved.is_file() and saved.parent == tmp_path / "first" / "checkpoints"
    assert saved.name.endswith(f"-s{saved_step:06d}.preempt.ckpt") or (
        saved.name.endswith(f"-s{saved_step:06d}.ckpt")
        and (saved_step % 3 == 0 or saved_step % STEPS_PER_EPOCH == 0)
    )
    assert saved_step >= STEPS_PER_EPOCH + step
    logged = history(uri, preempted.info.run_id, "train/loss")
    assert [s for s, _ in logged] == list(range(1, saved_step + 1)), "every step up to the checkpoint"

    again = run_cli("vit_exp.run", *train_args(uri, cache, "preempted", tmp_path / "again", "resume=auto"))
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = only_run(uri, "preempted")
    assert resumed.info.status == "FINISHED"
    assert int(resumed.data.tags["vit_exp.attempt.2.from_step"]) == saved_step  # no step lost
    assert_same_record(uri, resumed, store["reference"])


def test_bad_resume_input_gets_one_line(store, tmp_path):
    from tests.helpers.models import tiny_vit
    from vit_exp.errors import CheckpointError, ConfigError
    from vit_exp.models.checkpoint import save_checkpoint

    uri, cache, reference = store["uri"], store["cache"], store["reference"]

    def resume(value: str, *extra: str):  # the CLI's entry, in this process
        args = train_args(uri, cache, "reference", tmp_path / "cli", *extra)
        return run_main("vit_exp.run", *args, f"resume={value}")

    def resolve(value: str, *extra: str):
        return resolve_in_process(uri, cache, "reference", tmp_path / "in", f"resume={value}", *extra)

    finished = resume(reference.info.run_id)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "already FINISHED; nothing to do" in finished.stdout
    assert resolve("auto") is None  # auto continues unfinished runs: a finished one starts a new run

    differs = resume(
        reference.info.run_id, "optim.lr=0.004", "trainer.label_smoothing=0.2", "trainer.deterministic=false"
    )
    assert differs.returncode == 1
    assert len(differs.stderr.strip().splitlines()) == 1, differs.stderr
    (line,) = differs.stderr.strip().splitlines()
    assert line.startswith(f"error: resume={reference.info.run_id}: run ") and "another config" in line
    assert "optim.lr: 0.002 -> 0.004" in line and "trainer.label_smoothing: 0.1 -> 0.2" in line
    assert "trainer.deterministic: True -> False" in line  # compared, though not a param (config artifact)

    with pytest.raises(ConfigError, match=f"resume=0123456789abcdef0123456789abcdef: no such run in {uri}"):
        resolve("0123456789abcdef0123456789abcdef")

    weights_only = save_checkpoint(tiny_vit(num_classes=10), tmp_path / "weights.ckpt")
    with pytest.raises(CheckpointError, match="network parameters only") as plain:
        resolve(str(weights_only))
    assert f"model.pretrained={weights_only}" in str(plain.value)

    (full,) = (store["folder"] / "reference" / "checkpoints").glob("*-e001-s000022.ckpt")
    with pytest.raises(ConfigError, match=r"trainer\.epochs: 4 -> 9"):
        resolve(str(full), "trainer.epochs=9")
    with pytest.raises(ConfigError, match=r"trainer\.epochs: 4 -> 9"):  # named by its state file too
        resolve(str(full).replace(".ckpt", ".state.ckpt"), "trainer.epochs=9")

    with pytest.raises(ConfigError, match="not a checkpoint file and not a run id"):
        resolve("no-such-thing")


def test_an_interrupted_sweep_resumes_under_the_same_parent_and_skips_finished_jobs(store, tmp_path):
    uri, cache = store["uri"], store["cache"]
    command = [
        "--multirun",
        *TINY_MODEL,
        "trainer.epochs=2",
        "trainer.print_every_n_steps=1",
        f"mlflow.tracking_uri={uri}",
        "mlflow.experiment=sweep",
        f"paths.cache_dir={cache}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "optim.lr=0.001,0.002",
    ]
    log = tmp_path / "first.out"
    process = start_cli("vit_exp.run", *command, log=log)
    deadline = time.time() + 300
    while "step 5/" not in log.read_text().partition("#1 : ")[2]:  # job 1, a few steps in
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 130, log.read_text()[-3000:]
    last_line = log.read_text().strip().splitlines()[-1]  # after the parent's end: the hint
    assert "continue with: python -m vit_exp.run --multirun" in last_line
    assert last_line.endswith("resume=auto")

    client = client_of(uri)
    experiment = client.get_experiment_by_name("sweep").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`vit_exp.role` = 'sweep'")
    assert parent.info.status == "KILLED"

    again = run_cli("vit_exp.run", *command, "resume=auto")
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout
    assert f"continuing sweep parent run {parent.info.run_id}" in out
    assert "already FINISHED; nothing to do" in out and "continuing run" in out
    (parent_after,) = client.search_runs([experiment], "tags.`vit_exp.role` = 'sweep'")
    assert parent_after.info.run_id == parent.info.run_id and parent_after.info.status == "FINISHED"
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_job = {int(r.data.tags["hydra.job.num"]): r for r in children}
    assert sorted(by_job) == [0, 1] and len(children) == 2
    assert all(r.info.status == "FINISHED" for r in children)
    assert by_job[0].data.tags["vit_exp.attempts"] == "1"  # finished: skipped, not trained again
    assert by_job[1].data.tags["vit_exp.attempts"] == "2"  # interrupted: continued
    steps = [s for s, _ in history(uri, by_job[1].info.run_id, "train/loss")]
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))


@pytest.mark.slow
def test_the_default_run_killed_at_a_random_step_resumes_within_the_noise_of_two_runs(tmp_path):
    """Point 5 of issue 13 on the README's default run (30 epochs, default mode): kill -9 at a random
    step of epoch 3 to 25, rerun with resume=auto; the record equals an uninterrupted run's within
    the difference between two uninterrupted runs (0 on CPU: they are bit-identical) + 1e-6."""
    uri, cache = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "cache"

    def default(experiment: str, run_dir: str, *extra: str) -> list[str]:
        where = [
            f"mlflow.tracking_uri={uri}",
            f"paths.cache_dir={cache}",
            f"hydra.run.dir={tmp_path / run_dir}",
        ]
        return [*where, f"mlflow.experiment={experiment}", *extra]

    for name in ("first", "second"):
        proc = run_cli("vit_exp.run", *default(name, name))
        assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = only_run(uri, "first"), only_run(uri, "second")
    rng = random.Random()
    epoch, step = rng.randint(3, 25), rng.randint(1, STEPS_PER_EPOCH)
    code = train_until(
        [*default("killed", "killed"), "trainer.print_every_n_steps=1"],
        tmp_path / "killed.out",
        f"epoch {epoch}/30 step {step}/",
        signal.SIGKILL,
    )
    assert code == -signal.SIGKILL
    again = run_cli(
        "vit_exp.run", *default("killed", "again", "trainer.print_every_n_steps=1", "resume=auto")
    )
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = only_run(uri, "killed")
    assert resumed.info.status == "FINISHED" and resumed.data.tags["vit_exp.resume.count"] == "1"
    for key in ("train/loss", "val/top1"):
        a, b, got = (history(uri, r.info.run_id, key) for r in (first, second, resumed))
        assert [s for s, _ in got] == [s for s, _ in a], f"{key}: steps differ (killed at {epoch}/{step})"
        noise = max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True))
        worst = max(abs(x - y) for (_, x), (_, y) in zip(a, got, strict=True))
        assert worst <= noise + 1e-6, f"{key}: {worst} vs run-to-run {noise} (killed at {epoch}/{step})"


# Issue 27's regularisation recipe, all on (one list: further options join it, e.g. trainer.ema.decay).
RECIPE = [
    "augment=deit",
    "model.drop_path_rate=0.1",
    "optim=adamw",
    "optim.clip_grad_norm=1.0",
    "optim.layer_decay=0.75",
]


def test_resume_with_the_regularisation_recipe_on_is_exact(tmp_path):
    """Issue 27: kill -9 mid-epoch with the recipe on (mixing, drop path, AdamW, clipping, layer decay;
    deterministic mode), then ``resume=auto``: every train and val metric equals the uninterrupted run's
    exactly (drop path's masks are a function of the optimizer step, restored with the checkpoint)."""
    uri, cache, epochs = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "cache", 2

    def args(experiment: str, run_dir: str, *extra: str) -> list[str]:
        return [
            *TINY_MODEL,
            *RECIPE,
            f"trainer.epochs={epochs}",
            "trainer.print_every_n_steps=1",
            "trainer.checkpoint_every_n_steps=3",
            "trainer.deterministic=true",
            "registry.register=none",
            f"mlflow.tracking_uri={uri}",
            f"mlflow.experiment={experiment}",
            f"paths.cache_dir={cache}",
            f"hydra.run.dir={tmp_path / run_dir}",
            *extra,
        ]

    reference = run_cli("vit_exp.run", *args("reference", "reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    step = random.Random().randint(1, STEPS_PER_EPOCH - 1)
    code = train_until(
        args("killed", "first"), tmp_path / "first.out", f"epoch 2/{epochs} step {step}/", signal.SIGKILL
    )
    assert code == -signal.SIGKILL
    again = run_cli("vit_exp.run", *args("killed", "again", "resume=auto"))
    assert again.returncode == 0, again.stderr[-3000:]
    resumed, want = only_run(uri, "killed"), only_run(uri, "reference")
    assert resumed.data.tags["vit_exp.resume.count"] == "1"
    assert resumed.data.params["model.drop_path_rate"] == "0.1"
    assert int(resumed.data.tags["vit_exp.attempt.2.from_step"]) >= STEPS_PER_EPOCH  # not from the start
    keys = ["train/loss", "train/lr", *sorted(k for k in want.data.metrics if k.startswith("val/"))]
    assert {"val/top1", "val/loss"} <= set(keys)
    for key in keys:
        got, expected = history(uri, resumed.info.run_id, key), history(uri, want.info.run_id, key)
        assert [s for s, _ in got] == [s for s, _ in expected], f"{key}: steps differ (killed at 2/{step})"
        worst = max(abs(a - b) for (_, a), (_, b) in zip(got, expected, strict=True))
        assert worst == 0.0, f"{key}: differs from the uninterrupted run by {worst} (killed at 2/{step})"
