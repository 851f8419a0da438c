"""The tracked side of a training job: its MLflow run (none with ``mlflow.enabled=false``), its
callbacks, its preemption, its report."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vit_exp.data.digest import DataIdentity
    from vit_exp.job import TrainJob
    from vit_exp.tracking.record.metrics import MlflowMetricLogger
    from vit_exp.tracking.record.training_run import TrackedRun
    from vit_exp.tracking.registry.checkpoints import CheckpointRegistration
    from vit_exp.tracking.resume import ResumeTarget
    from vit_exp.train.callbacks import CheckpointSaver, ConsoleProgress, TrainHistory
    from vit_exp.train.plan import TrainPlan
    from vit_exp.train.preemption import Preemption
    from vit_exp.train.stopping import EarlyStopping

log = logging.getLogger("vit_exp.run")


@dataclass
class TrainingCallbacks:
    """A job's callbacks; ``ordered`` is what ``fit`` runs."""

    history: TrainHistory  # runs first: the others read from it
    console: ConsoleProgress
    checkpoints: CheckpointSaver  # after the metrics (in the outbox up to its step), before registration
    metric_logger: MlflowMetricLogger | None = None
    registration: CheckpointRegistration | None = None
    writes_checkpoints: bool = True  # false in a data-parallel worker other than the main one
    early_stopping: EarlyStopping | None = None  # after the epoch's console line, before its checkpoint

    @property
    def ordered(self) -> list:
        checkpoints = self.checkpoints if self.writes_checkpoints else None
        first = (self.history, self.console, self.early_stopping, self.metric_logger)
        return [c for c in (*first, checkpoints, self.registration) if c is not None]

    def load_state(self, state: dict, checkpoint: Path) -> None:
        """Continue from a full-state checkpoint's ``state`` (written at ``checkpoint``)."""
        from vit_exp.train.callbacks import SavedCheckpoint

        self.history.load_state_dict(state["history"])
        if self.metric_logger is not None and "metric_window" in state:
            self.metric_logger.load_state_dict(state["metric_window"])
        if self.registration is not None:
            self.registration.load_state_dict(state)
            position = state["position"]
            kind = state.get("kind", "step")
            record = self.history.last_epoch if kind == "epoch" else None
            resumed = SavedCheckpoint(checkpoint, record, kind, position["global_step"], position["epoch"])
            self.registration.catch_up(resumed)


@dataclass
class Session:
    """A training job's run (None when not recorded), callbacks and SIGTERM/Ctrl-C handling."""

    job: TrainJob
    run: TrackedRun | None
    callbacks: TrainingCallbacks
    preemption: Preemption

    def report(self, plan: TrainPlan) -> float | None:
        """Log the end-of-run summary; return the best value of the job's ``optimized_metric``."""
        from vit_exp.train.objective import best_value, epoch_values

        stopping = self.callbacks.early_stopping
        if self.run is not None and stopping is not None:
            self.run.story.stopped_early = stopping.reason  # the run's end tells it
        _log_summary(self.callbacks, plan, self.run, self.job.mlflow.ui_url)
        return best_value(self.job.objective, epoch_values(self.job.objective, self.callbacks.history.epochs))


@contextlib.contextmanager
def training_session(
    job: TrainJob, resume: ResumeTarget | None, data, net, identity: DataIdentity, plan: TrainPlan, lr_values
) -> Iterator[Session]:
    """The job's run and callbacks, for ``fit``; a resumed job's callbacks continue from its state."""
    from vit_exp.tracking.record.training_run import log_job_inputs, training_run

    with training_run(job, resume) as run:
        if run is not None and (resume is None or resume.run_id is None):
            log_job_inputs(job, run, data, net, identity)
        logged = resume.logged_steps if resume is not None else {}
        callbacks = assemble_callbacks(job, run, net, data, identity, plan, lr_values, logged)
        stop = preemption(job, callbacks, run)
        try:
            if resume is not None and resume.checkpoint is not None:
                callbacks.load_state(resume.state, resume.checkpoint)
            if run is not None:
                _tell_start(job, run, net, identity, plan, callbacks.history, resume)
            yield Session(job, run, callbacks, stop)
        except KeyboardInterrupt as exc:  # the run's description says what stopped it
            if run is not None:
                run.story.interrupted(exc, stop.received)
            raise
        finally:  # the metrics still buffered are sent, also when training failed or was interrupted
            callbacks.console.close()  # the progress bar off the console before the last lines
            if callbacks.metric_logger is not None:
                callbacks.metric_logger.flush()


def _tell_start(
    job: TrainJob,
    run: TrackedRun,
    net,
    identity: DataIdentity,
    plan: TrainPlan,
    history: TrainHistory,
    resume: ResumeTarget | None,
) -> None:
    """The description of the running run (a resumed attempt's replaces the one before)."""
    from vit_exp.models.vit import count_parameters

    attempt, from_step = (resume.attempt, resume.from_step) if resume is not None else (1, 0)
    model = f"{job.model_name}, {count_parameters(net):,} parameters, {net.num_classes} classes"
    run.story.begin(
        model,
        identity,
        plan,
        history,
        job.objective,
        attempt,
        from_step,
    )
    run.outbox.put(run.story.record())


def assemble_callbacks(
    job: TrainJob,
    run: TrackedRun | None,
    net,
    data,
    identity: DataIdentity,
    plan: TrainPlan,
    lr_values,
    logged,
) -> TrainingCallbacks:
    """Every callback of a training job (the MLflow ones only with a run); ``logged``: per metric,
    the last step a resumed run already holds (not logged again)."""
    from vit_exp.train.callbacks import CheckpointSaver, ConsoleProgress, TrainHistory
    from vit_exp.train.progress import ProgressBar, wants_bar

    trainer = job.trainer
    history = TrainHistory(job.workers.global_batch(trainer.batch_size), lr_values)  # images/s of all
    metric_logger = _metric_logger(job, run, history, logged) if run is not None else None
    registration = None
    if run is not None and job.registry.register != "none":
        registration = _registration(job, run, net, data, identity, metric_logger)
    checkpoints = CheckpointSaver(
        job.checkpoint_dir,
        job.model_name,
        history,
        every_n_epochs=trainer.checkpoint_every_n_epochs,
        keep=trainer.keep_checkpoints,
        every_n_steps=trainer.checkpoint_every_n_steps,
        keep_steps=trainer.keep_step_checkpoints,
        seed=trainer.seed,
        background=trainer.checkpoint_in_background,  # the training thread copies, a thread writes
        listeners=[c for c in (metric_logger, registration) if c is not None],
        run_state={"run_id": run.run_id if run else None, "config": job.comparable},
        keep_by=trainer.keep_checkpoints_by,
        objective=job.objective,
        ema_weights=trainer.ema.shipped,
    )
    bar = ProgressBar(plan.total_steps) if wants_bar(trainer.progress_bar, job.workers.is_main) else None
    console = ConsoleProgress(history, plan, trainer.print_every_n_steps, bar)
    return TrainingCallbacks(
        history,
        console,
        checkpoints,
        metric_logger,
        registration,
        writes_checkpoints=job.workers.is_main,
        early_stopping=_early_stopping(job, history, plan),
    )


def _early_stopping(job: TrainJob, history: TrainHistory, plan: TrainPlan) -> EarlyStopping | None:
    settings = job.trainer.early_stopping
    if settings.patience is None:
        return None
    from vit_exp.train.stopping import EarlyStopping

    return EarlyStopping(
        history,
        job.objective,
        settings.patience,
        settings.min_delta,
        ema_weights=job.trainer.ema.shipped,
        total_steps=plan.total_steps,
    )


def _metric_logger(job: TrainJob, run: TrackedRun, history: TrainHistory, logged) -> MlflowMetricLogger:
    from vit_exp.tracking.record.metrics import MlflowMetricLogger

    return MlflowMetricLogger(
        run.outbox.put,
        history,
        every_n_steps=job.mlflow.log_every_n_steps,
        details_every_n_steps=job.mlflow.log_details_every_n_steps,
        flush_interval_s=float(job.mlflow.flush_interval_s),
        logged_steps=logged,
        objective=job.objective,
    )


def _registration(
    job: TrainJob, run: TrackedRun, net, data, identity, metric_logger
) -> CheckpointRegistration:
    """Checkpoints as model versions, each once its files are whole (also one written in the
    background), before the next checkpoint's state records what is registered."""
    from vit_exp.tracking.record.outbox import HELD_DIR
    from vit_exp.tracking.registry import registration_rule
    from vit_exp.tracking.registry.checkpoints import CheckpointRegistration
    from vit_exp.tracking.registry.versions import version_config, write_model_inputs

    config = version_config(job.model_name, net.config, data)
    folder = run.outbox.folder.parent / "model_inputs"
    inputs = write_model_inputs(folder, config, data.class_names_for(net.num_classes))
    registration = CheckpointRegistration(
        job.registry,
        run.run_id,
        inputs,
        put=run.outbox.put,
        flush_metrics=metric_logger.flush,
        data_tags=identity.tags(),
        hold_in=run.outbox.folder / HELD_DIR,
        rule=registration_rule(
            job.registry.register,
            smoke_run=job.trainer.max_steps is not None,
            sweep_job=job.hydra.sweep_dir is not None,
            objective=job.objective,
        ),
    )
    if not run.outbox.background:  # versions are made in the training thread: the one-off part now
        run.outbox.send.prepare_versions(inputs, job.registry.top_k)
    return registration


def preemption(job: TrainJob, callbacks: TrainingCallbacks, run: TrackedRun | None) -> Preemption:
    """SIGTERM/Ctrl-C: the main worker saves a checkpoint and the run ends KILLED; another worker saves
    nothing and ends after the current step (whose AllReduce the main worker needs)."""
    from vit_exp.train.preemption import Preemption

    grace_s = job.trainer.preempt_grace_s
    if not job.workers.is_main:
        return Preemption(grace_s, lambda run_context, epoch_done: None)

    def save(run_context, epoch_done: bool):
        return callbacks.checkpoints.save_now(run_context, "preempt", epoch_done).path

    def on_timeout() -> None:
        if callbacks.metric_logger is not None:
            callbacks.metric_logger.flush()
        if run is not None:
            from vit_exp.tracking.record.story import signal_name

            name = signal_name(stop.received) if stop.received else "a signal"
            run.story.stopped_by = f"{name}; no checkpoint within trainer.preempt_grace_s"
            run.outbox.put(run.story.record("KILLED"))
            run.outbox.finish("KILLED", wait_s=min(5.0, job.mlflow.drain_timeout_s))

    stop = Preemption(grace_s, save, on_timeout)
    return stop


def _log_summary(
    callbacks: TrainingCallbacks, plan: TrainPlan, run: TrackedRun | None, ui_url: str | None
) -> None:
    history = callbacks.history
    best, last = history.best("top1"), history.last_epoch
    log.info("=" * 72)
    stopped = " (stopped at trainer.max_steps)" if plan.stops_early else ""
    if callbacks.early_stopping is not None and callbacks.early_stopping.reason:
        stopped = f" (stopped early: {callbacks.early_stopping.reason})"
    log.info("finished %d step(s) in %.1fs%s", history.global_step, history.train_seconds, stopped)
    if last and last.val:
        val = last.val
        log.info(
            f"last epoch {last.epoch}: val top1 {val['top1']:.4f}  top5 {val['top5']:.4f}  "
            f"loss {val['loss']:.4f}"
        )
    if best:
        log.info("best epoch %d: val top1 %.4f  top5 %.4f", best.epoch, best.val["top1"], best.val["top5"])
    if kept := callbacks.checkpoints.on_disk:
        log.info("checkpoints: %d in %s (last: %s)", len(kept), kept[-1].path.parent, kept[-1].path.name)
    if registration := callbacks.registration:
        count, name = len(registration.queued), registration.settings.name
        rule = f"registry.register={registration.rule.tag()}"
        log.info("model versions: %d of '%s' (%s; @best, @last follow)", count, name, rule)
    if run is not None:
        from vit_exp.tracking.store import runs_page_url

        log.info("mlflow run: %s (%s)", run.run_id, run.tracking_uri)
        log.info("mlflow ui: %s", runs_page_url(run.tracking_uri, run.experiment_id, run.run_id, ui_url))
