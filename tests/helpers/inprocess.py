"""The CLIs in this process: ``vit_exp.<cli>.main()`` (the function ``python -m vit_exp.<cli>`` runs)
with ``sys.argv`` set, its output captured, and what the entry changes in the process put back.

A CLI error case then costs its check, not a new interpreter importing MindSpore (~5 s each); the
``error:`` line, the exit code and the absence of a traceback come from the same entry function,
through the same Hydra composition. What only a process shows (signals, kill -9, msrun, a fresh
interpreter's imports, output buffering) stays with ``tests/helpers/processes.py`` (run_cli), and
every CLI keeps at least one real ``python -m`` run (tests/integration/test_cli_smoke.py).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

from vit_exp.config import PROJECT_ROOT

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR2", None)) if s)


def run_main(
    module: str, *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``module``'s ``main()`` as ``python -m <module> args`` would, in this process.

    Like ``run_cli``: working directory ``cwd`` (default the checkout), this environment without
    GLOG_v plus ``env``. The return code is the ``SystemExit`` code; an exception that escapes
    ``main()`` is printed with its traceback to stderr and gives 1, as the interpreter would. A
    thread the command leaves running (a process would wait for it at exit) is waited for, and
    named on stderr if it does not end.
    """
    entry = importlib.import_module(module)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    threads = set(threading.enumerate())
    with _process_state_restored(out, err):
        os.environ.pop("GLOG_v", None)  # as run_cli: the CLI's own console defaults apply
        os.environ.update(env or {})
        os.chdir(cwd or PROJECT_ROOT)
        sys.argv = [str(entry.__file__), *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                entry.main()
            except SystemExit as exc:
                code = _exit_code(exc.code, err)
            except (Exception, KeyboardInterrupt) as exc:
                traceback.print_exc(file=err)
                code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    for thread in set(threading.enumerate()) - threads:
        if not thread.daemon:
            thread.join(timeout=60)
            if thread.is_alive():
                print(f"run_main: thread {thread.name!r} still running: the process would not exit", file=err)
    return subprocess.CompletedProcess(
        [sys.executable, "-m", module, *args], code, out.getvalue(), err.getvalue()
    )


def _exit_code(code, err: io.StringIO) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=err)  # sys.exit("message"): the interpreter prints it and exits 1
    return 1


@contextlib.contextmanager
def _process_state_restored(*buffers: io.StringIO) -> Iterator[None]:
    """Put back what a CLI entry changes in its process: environment, working directory, argv and
    sys.path, signal handlers, logging (Hydra configures it per job), Hydra's global state, the
    entries' module-level lists, the store probe cache, MLflow's URIs and MindSpore's mode."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from vit_exp import cli

    environ, cwd, argv, path = dict(os.environ), os.getcwd(), sys.argv, sys.path[:]
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    loggers = _logging_state()
    hydra_cfg = HydraConfig.instance().cfg
    cli_lists = [(lst, lst[:]) for lst in (cli._abort_hooks, cli._job_checks, cli._failures, cli._last_lines)]
    answered = _answered_stores()
    saved_answered = set(answered)
    answered.clear()  # a fresh process has reached no store yet
    mlflow_uris = _mlflow_uris()
    ms_mode = _mindspore_mode()
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = hydra_cfg
        for lst, saved in cli_lists:
            lst[:] = saved
        _answered_stores().clear()
        _answered_stores().update(saved_answered)
        _restore_mlflow_uris(mlflow_uris)
        _restore_mindspore_mode(ms_mode)
        _restore_logging(loggers, buffers)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        sys.argv, sys.path[:] = argv, path
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)


def _logging_state() -> dict:
    loggers = [logging.getLogger()]
    loggers += [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return {lg: (lg.handlers[:], lg.filters[:], lg.level, lg.propagate, lg.disabled) for lg in loggers}


def _restore_logging(saved: dict, buffers: tuple[io.StringIO, ...]) -> None:
    """Loggers as they were; loggers made during the run keep only handlers that do not write to the
    captured output. Handlers the run made and that are dropped (Hydra's log file) are closed."""
    kept = {id(h) for handlers, *_ in saved.values() for h in handlers}
    for logger, state in _logging_state().items():
        if logger in saved:
            handlers, filters, level, propagate, disabled = saved[logger]
        else:
            handlers = [h for h in logger.handlers if getattr(h, "stream", None) not in buffers]
            filters, level, propagate, disabled = state[1:]
        for handler in logger.handlers:
            if handler not in handlers and id(handler) not in kept:
                handler.close()
        logger.handlers[:], logger.filters[:] = handlers, filters
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


def _answered_stores() -> set:
    from vit_exp.tracking import store

    return store._answered


def _mlflow_uris() -> tuple[str | None, str | None]:
    if "mlflow" not in sys.modules:
        return None, None
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    return tracking._tracking_uri, registry._registry_uri


def _restore_mlflow_uris(uris: tuple[str | None, str | None]) -> None:
    if "mlflow" not in sys.modules:
        return
    import mlflow
    from mlflow.tracking._model_registry import utils as registry

    mlflow.set_tracking_uri(uris[0])
    registry._registry_uri = uris[1]  # set_registry_uri(None) would leave the run's one (environment: below)


def _mindspore_mode() -> int | None:
    if "mindspore" not in sys.modules:
        return None
    return sys.modules["mindspore"].get_context("mode")


def _restore_mindspore_mode(mode: int | None) -> None:
    if "mindspore" not in sys.modules:
        return
    ms = sys.modules["mindspore"]
    ms.set_context(mode=ms.PYNATIVE_MODE if mode is None else mode)  # PyNative: MindSpore's default
