"""Shared start-up for the CLI entries: turn Hydra's multi-line composition errors into one line.

Hydra reports a bad override (unknown key, unknown group option, unparsable value) in several
lines. ``check_overrides`` composes the command line once up front (fast: no MindSpore, no MLflow)
and raises a ConfigError whose message names what to fix.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vit_exp.config import CONFIG_DIR, register_resolvers
from vit_exp.errors import ConfigError, first_line, report_errors

# Flags after which Hydra does not compose a job config the usual way.
_SKIP_FLAGS = {
    "-m",
    "--multirun",
    "-h",
    "--help",
    "--hydra-help",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
}
_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}


def command_line_overrides(argv: Sequence[str]) -> list[str] | None:
    """The ``key=value`` overrides in ``argv``; None when a flag means we should not pre-check."""
    overrides, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in _SKIP_FLAGS:
            return None
        if arg in _FLAGS_WITH_VALUE:
            skip_next = True
            continue
        if arg.startswith("-"):
            continue
        overrides.append(arg)
    return overrides


def _describe(exc: Exception) -> str:
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, MissingConfigException) and getattr(exc, "options", None):
        group = (exc.missing_cfg_file or "").split("/")[0]
        wanted = (exc.missing_cfg_file or "").split("/")[-1]
        return f"{group}={wanted}: no such option in '{group}'; choose one of: {', '.join(exc.options)}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the command line: {first_line(str(exc))}"
    message = first_line(str(exc))
    cause = exc.__cause__ or exc.__context__
    if "Could not override" in message and cause is not None and "not in struct" in str(cause):
        key = message.split("'")[1] if "'" in message else message
        return f"unknown config key '{key}' (check the spelling, or add a new key with +{key}=...)"
    if cause is not None and first_line(str(cause)):
        return f"{message} {first_line(str(cause))}"
    return message


def check_overrides(config_name: str, argv: Sequence[str] | None = None) -> None:
    """Compose ``config_name`` with the command line's overrides; ConfigError when that fails."""
    overrides = command_line_overrides(sys.argv[1:] if argv is None else argv)
    if overrides is None:
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except Exception as exc:
        raise ConfigError(_describe(exc)) from None
    finally:
        GlobalHydra.instance().clear()


def quiet_libraries() -> None:
    """Keep MindSpore's C++ warnings and MLflow's progress bars out of the console (env wins)."""
    import os

    os.environ.setdefault("GLOG_v", "3")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def exit_on_bad_overrides(config_name: str) -> None:
    """Print ``error: ...`` and exit 1 when the command line does not compose."""
    try:
        check_overrides(config_name)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


def hydra_run_dir() -> Path | None:
    """The current Hydra job's output directory (None outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def make_main(config_name: str, task: Callable[[Any], Any]) -> Callable[[], None]:
    """A CLI ``main()``: quiet libraries, pre-check the command line, run ``task`` under Hydra.

    Errors inside ``task`` become one ``error: ...`` line (full traceback in the run directory).
    """
    import hydra

    register_resolvers()

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    @report_errors(traceback_dir=hydra_run_dir)
    def hydra_main(cfg):
        return task(cfg)

    def main() -> None:
        quiet_libraries()
        exit_on_bad_overrides(config_name)
        hydra_main()

    return main
