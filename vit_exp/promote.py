"""Promote a registered model version to an alias when it beats the current holder on a metric tag.
python -m vit_exp.promote name=NAME [metric=val/top1] [alias=champion] [min_delta=0] [dry_run=true]"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from vit_exp.cli import make_main

log = logging.getLogger("vit_exp.promote")


def promote(cfg: DictConfig) -> dict:
    """Choose a version by ``cfg.metric``, move ``cfg.alias`` to it if it wins, record why."""
    from dataclasses import fields

    from vit_exp.tracking.registry.promotion import PromotionRequest, apply_decision, comparison_table, decide
    from vit_exp.tracking.store import use_store

    client = use_store(cfg.mlflow.tracking_uri)
    values = {f.name: getattr(cfg, f.name) for f in fields(PromotionRequest)}  # the keys of the same name
    values["min_delta"] = float(values["min_delta"])
    for key in ("version", "data_digest"):  # names, even when given as numbers
        values[key] = None if values[key] is None else str(values[key])
    request = PromotionRequest(**values)
    decision = decide(client, request)
    print(comparison_table(decision), flush=True)
    log.info("%s%s", "[dry run] " if cfg.dry_run else "", decision.summary)
    if decision.promote and not cfg.dry_run:
        apply_decision(client, request, decision)
    return {"promoted": decision.promote and not cfg.dry_run, "version": decision.candidate}


main = make_main("promote", promote)

if __name__ == "__main__":
    main()
