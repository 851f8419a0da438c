"""Export a registered ViT version to ONNX or MindIR and register the export beside it:
``python -m vit_exp.export model_uri=models:/NAME/VERSION format=onnx|mindir``."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from vit_exp.cli import hydra_run_dir, make_main

log = logging.getLogger("vit_exp.export")


def export(cfg: DictConfig) -> list[dict]:
    """Write ``cfg.model_uri`` as ``cfg.format`` (one format or a list), check each export against the
    model, register it; an export already registered is reported, not made again."""
    from omegaconf import ListConfig

    from vit_exp.models.export import check_format
    from vit_exp.tracking.store import use_store

    formats = list(cfg.format) if isinstance(cfg.format, ListConfig) else [cfg.format]
    formats = [check_format(str(f)) for f in formats]
    client = use_store(cfg.mlflow.tracking_uri)
    return [export_one(client, cfg, fmt) for fmt in formats]


def export_one(client, cfg: DictConfig, fmt: str) -> dict:
    """Export ``cfg.model_uri`` to ``fmt``: see :func:`export`."""
    from vit_exp.errors import ExportError, RegistryError
    from vit_exp.models.export import check_export, write_export
    from vit_exp.tracking.registry.exports import EXPORTED_FROM, find_export, register_export, source_of
    from vit_exp.tracking.registry.resolve import download_version, resolve

    ref = resolve(client, cfg.model_uri)
    if ref.version is None:
        raise RegistryError(f"model_uri={cfg.model_uri}: export a registered version (models:/NAME/VERSION)")
    if origin := ref.tags.get(EXPORTED_FROM):
        kind = ref.tags.get("format", "an")
        raise RegistryError(f"{ref.pinned_uri} is the {kind} export of {origin}; export that version instead")
    source = source_of(client, ref)
    if (found := find_export(client, source, fmt)) is not None:
        log.info(f"{ref.pinned_uri} is already exported to {fmt}: {found.uri}")
        return {"uri": found.uri, "created": False}
    predictor, config = download_version(ref.pinned_uri)
    folder = (hydra_run_dir() or Path.cwd()) / f"export-{fmt}"
    log.info(f"exporting {ref.pinned_uri} to {fmt} ...")
    file = write_export(predictor.net, fmt, folder)
    check = check_export(predictor.net, file, fmt, float(cfg.tolerance))
    if not check.passed:
        raise ExportError(
            f"the {fmt} export of {ref.pinned_uri} failed its check: {check.describe()}; nothing registered"
        )
    log.info(f"checked on {check.images} images: {check.describe()}")
    exported = register_export(client, source, fmt, file, check, config)
    log.info(
        f"registered {exported.uri} (exported from {ref.pinned_uri}; {file.stat().st_size / 1e6:.1f} MB)"
    )
    return {"uri": exported.uri, "created": True, "max_abs_diff": check.max_abs_diff}


main = make_main("export", export)

if __name__ == "__main__":
    main()
