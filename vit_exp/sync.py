"""Send what a training run could not store (its tracking server was away) into the same run.

python -m vit_exp.sync outbox=<run dir>/mlflow_outbox [tracking_uri=...]
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from vit_exp.cli import make_main
from vit_exp.credentials import mask
from vit_exp.errors import DataError, RegistryError

log = logging.getLogger("vit_exp.sync")


def sync(cfg: DictConfig) -> int:
    """Send the unsent records of ``cfg.outbox``; return how many were sent."""
    from vit_exp.tracking.record.outbox import Outbox, RunRecord, RunSender, load_records
    from vit_exp.tracking.store import use_store

    folder = Path(cfg.outbox).expanduser()
    records = load_records(folder)
    if not records or not isinstance(run := records[0], RunRecord):
        raise DataError(f"outbox: {folder} is not a vit-exp run outbox (<run dir>/mlflow_outbox)")
    run_id, uri = run.run_id, cfg.tracking_uri or run.tracking_uri
    outbox = Outbox(folder, RunSender(use_store(uri), run_id), background=False)
    try:
        pending = outbox.unsent
        if not pending:
            log.info("nothing to send: the %d record(s) of run %s are all stored", len(records), run_id)
            return 0
        log.info("sending %d record(s) of run %s to %s", pending, run_id, mask(uri))
        left = outbox.send_pending()
    finally:
        outbox.close()
    if left:
        raise RegistryError(f"{mask(uri)} did not take {left} of {pending} record(s); run sync again later")
    log.info("sent %d record(s); run %s is complete", pending, run_id)
    return pending


main = make_main("sync", sync)

if __name__ == "__main__":
    main()
