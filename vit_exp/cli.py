"""Shared start-up of the CLI entries: Hydra's composition errors as one line, the run directory."""

from __future__ import annotations

import difflib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from vit_exp.config import CONFIG_DIR, register_resolvers
from vit_exp.credentials import hide_command_line_secrets, mask
from vit_exp.errors import failure_message, first_line, user_message
from vit_exp.stop import install as install_signal_handlers

# Keys that existed once: an old command line gets told what replaced them.
RETIRED_KEYS = {
    "trainer.log_every_n_steps": "renamed to trainer.print_every_n_steps",
    "trainer.dataset_sink_mode": "removed: training always runs vit-exp's own loop",
    "data.infer_split": "removed: it was never read",
}


def composition_error(exc: BaseException, config_name: str | None = None) -> str:
    """One line saying what to fix in the command line Hydra could not compose (of the command whose
    config is ``config_name``: a mistyped name gets the closest real one)."""
    if isinstance(exc, MissingConfigException) and getattr(exc, "options", None):
        group, _, wanted = (exc.missing_cfg_file or "").rpartition("/")
        return f"{group}={wanted}: no such option in '{group}'; choose one of: {', '.join(exc.options)}"
    if isinstance(exc, OverrideParseException):
        hint = " (quote a value that holds '=', e.g. key='a=b')" if "'='" in str(exc) else ""
        return f"cannot parse the command line: {first_line(str(exc))}{hint}"
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot create {exc.filename} ({exc.strerror}): check hydra.run.dir / hydra.sweep.dir"
    message = first_line(str(exc))
    cause = exc.__cause__ or exc.__context__
    if unknown := _unknown_name(message, cause, config_name):
        return unknown
    if known := user_message(exc):
        return known
    if cause is not None and first_line(str(cause)):
        return f"{message} {first_line(str(cause))}"
    return message or f"{type(exc).__name__} raised in {_origin(exc)}"


def _unknown_name(message: str, cause: BaseException | None, config_name: str | None) -> str | None:
    """The line for a key or group the command does not have (with the closest real name)."""
    name = message.split("'")[1] if "'" in message else message
    if "No match in the defaults list" in message:
        return not_a_group(name, config_name)
    if "Could not override" not in message or cause is None or "not in struct" not in str(cause):
        return None
    if name in RETIRED_KEYS:
        return f"config key '{name}' was {RETIRED_KEYS[name]}"
    if hint := did_you_mean(name, config_name):
        return f"unknown config key '{name}'{hint} (a new key is added with +{name}=...)"
    return f"unknown config key '{name}' (check the spelling, or add a new key with +{name}=...)"


def _origin(exc: BaseException) -> str:
    """Where ``exc`` was raised, as ``package/.../module.py:line`` (from site-packages or the checkout)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "an unknown place"
    path = Path(tb.tb_frame.f_code.co_filename)
    parts = path.parts[-3:]
    if "site-packages" in path.parts:
        parts = path.parts[path.parts.index("site-packages") + 1 :]
    return f"{'/'.join(parts)}:{tb.tb_lineno}"


class MaskCredentialsInRunFiles(Callback):
    """Hydra callback: masks credentials in Hydra's config copies (command-line ones are masked before)."""

    def on_job_start(self, config, **kwargs) -> None:
        if config.hydra.output_subdir is not None:
            folder = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
            for path in folder.glob("*.yaml"):
                _mask_file(path)

    def on_multirun_end(self, config, **kwargs) -> None:
        _mask_file(Path(str(config.hydra.sweep.dir)) / "multirun.yaml")


def _mask_file(path: Path) -> None:
    if path.is_file() and (text := path.read_text()) != (masked := mask(text)):
        path.write_text(masked)


JOB_ERROR_FILE = "error.txt"  # a failed sweep job's one-line error, in its job directory
_abort_hooks: list[Callable[[str], None]] = []
_job_checks: list[Callable[[Any], None]] = []  # the running command's check of one job's config
_failures: list[str] = []  # found after the jobs ran (a sweep job failed): the command exits 1
_last_lines: list[str] = []  # a sweep job's interruption (with its resume hint), printed last


class StopCommand(BaseException):
    """Ends the command with ``error: <message>`` and exit 1 from a Hydra callback (a BaseException:
    Hydra 1.3 turns a callback's Exception into a warning and goes on)."""


def job_check() -> Callable[[Any], None] | None:
    """The running command's check of a job's config (raises as the job would); None when it has none."""
    return _job_checks[-1] if _job_checks else None


def fail_at_exit(message: str) -> None:
    """Make the command print ``error: message`` and exit 1 once Hydra is done (callbacks cannot raise)."""
    _failures.append(message)


def call_on_abort(hook: Callable[[str], None]) -> None:
    """Have ``hook(status)`` run when the command ends by a failure ("FAILED") or an interrupt ("KILLED")."""
    _abort_hooks.append(hook)


def _run_abort_hooks(status: str) -> None:
    while _abort_hooks:
        try:
            _abort_hooks.pop()(status)
        except Exception as exc:  # the command is ending anyway: say so, keep its own error
            print(f"warning: {mask(first_line(str(exc)))}", file=sys.stderr, flush=True)


def hydra_run_dir() -> Path | None:
    """The current Hydra job's output directory (None outside a Hydra app)."""
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(task: Callable[[Any], Any], cfg) -> Any:
    """Run ``task(cfg)``; a failure prints one ``error:`` line and exits 1 (130 when interrupted), but a
    sweep job's is written to its directory and NaN returned, so the sweep goes on and lists the job."""
    install_signal_handlers()  # a launcher's job process (submitit, joblib) starts here, not in main()
    try:
        return task(cfg)
    except KeyboardInterrupt as exc:
        line = f"interrupted{_resume_hint(exc)}"
        if _in_multirun():  # printed once the sweep's parent has ended: the command's last line
            _last_lines.append(line)
        else:
            print(line, file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as exc:
        run_dir = hydra_run_dir()
        message = failure_message(exc, run_dir)
        print(f"error: {message}", file=sys.stderr, flush=True)
        if not _in_multirun():
            sys.exit(1)
        (run_dir / JOB_ERROR_FILE).write_text(message + "\n")
        return math.nan


def _resume_hint(exc: KeyboardInterrupt) -> str:
    """For a training stopped with a checkpoint: where it is, and the command that continues it."""
    if not hasattr(exc, "checkpoint"):
        return ""
    # A resumed attempt gets a directory of its own (its run's earlier ones are found in MLflow).
    args = [a for a in sys.argv[1:] if not a.startswith(("resume=", "hydra.run.dir="))]
    module = Path(sys.argv[0]).stem if sys.argv and sys.argv[0].endswith(".py") else "run"
    from vit_exp.train.parallel import msrun_prefix

    command = msrun_prefix() + " ".join(["python -m vit_exp." + module, *args, "resume=auto"])
    return f": {exc}; continue with: {mask(command)}"


def make_main(  # 64 lines: main() is the CLI's whole start-up and exit-code contract in one place
    config_name: str, task: Callable[[Any], Any], check: Callable[[Any], None] | None = None
) -> Callable[[], None]:
    """A CLI ``main()`` that runs ``task`` under Hydra with ``conf/<config_name>.yaml``.

    ``check(cfg)``: ``task``'s check of a composed config; a ``--multirun`` sweep runs it on every job
    first (``job_check``) and stops when none passes. Errors in ``task`` or the composition (Hydra is
    made to raise) become one ``error:`` line and exit 1, unless the user set ``HYDRA_FULL_ERROR=1``.
    """
    register_resolvers()

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def hydra_main(cfg):
        return run_job(task, cfg)

    def main() -> None:
        from vit_exp.train.parallel import serve_if_scheduler, worker_overrides

        serve_if_scheduler()  # msrun's scheduler runs this command too: it only serves the workers
        _job_checks[:] = [check] if check is not None else []
        sys.argv += worker_overrides()
        hide_command_line_secrets()
        # MindSpore's and OpenCV's C++ log lines off the console (the environment wins): their errors
        # reach us as exceptions, shown in one line (GLOG_v=3 shows MindSpore's error lines too).
        os.environ.setdefault("GLOG_v", "4")
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        show_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
        # SIGTERM (a cluster's preemption; MindSpore's runtime also answers Ctrl-C with it) ends the
        # command like Ctrl-C, so its runs end KILLED instead of staying RUNNING (see vit_exp.stop).
        install_signal_handlers()
        try:
            hydra_main()
            if _failures:
                print(f"error: {mask(_failures[0])}", file=sys.stderr, flush=True)
                sys.exit(1)
        except StopCommand as exc:  # a sweep that cannot succeed, stopped before its first job
            _run_abort_hooks("FAILED")
            print(f"error: {mask(str(exc))}", file=sys.stderr, flush=True)
            sys.exit(1)
        except (KeyboardInterrupt, SystemExit) as exc:
            if isinstance(exc, SystemExit) and exc.code in (0, None):
                raise
            interrupted = isinstance(exc, KeyboardInterrupt) or exc.code == 130
            _run_abort_hooks("KILLED" if interrupted else "FAILED")
            for line in _last_lines or (["interrupted"] if isinstance(exc, KeyboardInterrupt) else []):
                print(line, file=sys.stderr, flush=True)
            if isinstance(exc, KeyboardInterrupt):
                sys.exit(130)
            raise
        except Exception as exc:
            _run_abort_hooks("FAILED")
            if show_traceback:
                raise
            print(f"error: {mask(composition_error(exc, config_name))}", file=sys.stderr, flush=True)
            sys.exit(1)

    return main


def did_you_mean(name: str, config_name: str | None) -> str:
    """``; did you mean 'optim'?`` for a mistyped key or group of command ``config_name`` (the closest
    of its groups and dotted keys, or a key ending in ``name``); empty when nothing is close."""
    if config_name is None:
        return ""
    groups, keys = _names(config_name)
    if name in groups or name in keys:
        return ""
    if "." not in name and (close := difflib.get_close_matches(name, groups, n=1, cutoff=0.6)):
        return f"; did you mean the config group '{close[0]}'?"
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]]
    if close := same_leaf[:1] or difflib.get_close_matches(name, keys, n=1, cutoff=0.75):
        return f"; did you mean the key '{close[0]}'?"
    return ""


def not_a_group(group: str, config_name: str | None) -> str:
    """The one line for ``group=option`` given to a command that composes no such group."""
    if config_name is None:
        return f"'{group}' is not a config group of this command"
    groups, _ = _names(config_name)
    hint = did_you_mean(group, config_name) or f"; its groups: {', '.join(groups) or 'none'}"
    return f"'{group}' is not a config group of python -m vit_exp.{_module(config_name)}{hint}"


def _module(config_name: str) -> str:
    return "run" if config_name == "train" else config_name


def _names(config_name: str) -> tuple[list[str], list[str]]:
    """The config groups and the dotted keys of ``config_name`` as composed with no overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    register_resolvers()
    GlobalHydra.instance().clear()  # the failed command's Hydra is done with
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, return_hydra_config=True)
    groups = sorted(g for g in cfg.hydra.runtime.choices if not g.startswith("hydra"))
    config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra")
    return groups, sorted(_dotted(config))


def _dotted(config: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys += _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys
