"""Train a recorded run again as a new run and compare their metrics:
python -m vit_exp.reproduce <run id | models:/NAME/VERSION | models:/NAME@ALIAS> [allow_code_change=true]"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig, OmegaConf

from vit_exp.cli import make_main

log = logging.getLogger("vit_exp.reproduce")


def reproduce(cfg: DictConfig) -> dict:
    """Check the run's code, config, data and environment; train it again; print and log the comparison."""
    from vit_exp.tracking import reproduction as r
    from vit_exp.tracking.store import use_store

    client = use_store(cfg.mlflow.tracking_uri)
    source = None if OmegaConf.is_missing(cfg, "source") else str(cfg.source)
    record = r.read_record(client, r.find_run(client, source))
    warnings = r.check_code(record, cfg.allow_code_change)
    overrides = r.training_overrides(record, code_changed=bool(warnings))
    composed = r.compose(record, overrides)
    warnings += r.check_config(record, composed, cfg.allow_code_change)
    r.check_data(record, composed)
    warnings += r.environment_warnings(record)
    for line in warnings:
        log.warning(line)
    arguments = r.config_arguments(record) + overrides + r.run_dir_arguments(cfg.run_dir)
    new_run = r.run_training(client, record, arguments, cfg.mlflow.tracking_uri)
    comparison = r.compare_runs(client, record.run_id, new_run, warnings)
    print(comparison.table(), flush=True)
    r.record_comparison(client, comparison)
    log.info(f"run {new_run} {'reproduces' if comparison.exact else 'differs from'} run {record.run_id}")
    return comparison.as_dict()


def source_argument(args: list[str]) -> list[str]:
    """``<source> key=value ...`` as Hydra reads it: a bare first argument is ``source='<it>'`` (quoted:
    a run id of digits and one ``e`` would read as a number)."""
    if args and not args[0].startswith("-") and "=" not in args[0] and "'" not in args[0]:
        return [f"source='{args[0]}'", *args[1:]]
    return args


_main = make_main("reproduce", reproduce)


def main() -> None:
    sys.argv[1:] = source_argument(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
