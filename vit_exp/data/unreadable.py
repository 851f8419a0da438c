"""Unreadable images: name the file when the pipeline fails on one, or leave them out of a split.

``data.skip_unreadable=true``: each split is checked once with Pillow (cached) and, if some fail, read via
a symlink mirror of the readable ones, so MindSpore's fast ImageFolderDataset still applies."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from vit_exp.data.folder import class_folders, list_images
from vit_exp.errors import DataError, first_line
from vit_exp.locking import exclusive

log = logging.getLogger(__name__)

_FAILED_FILE = re.compile(r"The corresponding data file is: (?P<path>.+?)\. (?P<reason>[^\n]*)")


def unreadable_image_error(exc: BaseException) -> DataError | None:
    """A DataError naming the image a MindSpore pipeline failure came from (None when it names none)."""
    match = _FAILED_FILE.search(str(exc))
    if match is None:
        return None
    reason = first_line(match["reason"]).rstrip(".") or "cannot decode it"
    return DataError(
        f"unreadable image {match['path']} ({reason}); remove it, or set data.skip_unreadable=true "
        "to train on the readable images"
    )


def is_readable(path: Path) -> bool:
    """Whether Pillow can open ``path`` and verify its structure."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:
        return False


def listing_digest(split_dir: Path, images: list[Path]) -> str:
    """A digest of the split's file list with each file's size and modification time."""
    digest = hashlib.sha256(str(split_dir.resolve()).encode())
    for image in images:
        stat = image.stat()
        digest.update(f"{image.relative_to(split_dir)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def readable_split(split_dir: Path, cache_dir: Path, key: str) -> Path:
    """``split_dir`` itself when all its images are readable; else a cached mirror without the others."""
    images = [image for name in class_folders(split_dir) for image in list_images(split_dir / name)]
    digest = listing_digest(split_dir, images)
    record = cache_dir / f"{digest}.json"
    with exclusive(cache_dir / f"{digest}.lock"):
        if record.is_file():
            unreadable = json.loads(record.read_text())["unreadable"]
        else:
            log.info("%s: checking %d images once for unreadable files", key, len(images))
            unreadable = [str(p.relative_to(split_dir)) for p in images if not is_readable(p)]
            if unreadable:
                _write_mirror(split_dir, cache_dir / digest, images, set(unreadable))
            record.write_text(json.dumps({"split": str(split_dir), "unreadable": unreadable}, indent=1))
    if not unreadable:
        return split_dir
    listing = cache_dir / f"{digest}.unreadable.txt"
    listing.write_text("".join(f"{split_dir / name}\n" for name in unreadable))
    log.warning(
        f"{key}: {len(unreadable)} of {len(images)} images in {split_dir} are unreadable and left out "
        f"(list: {listing})"
    )
    return cache_dir / digest


def _write_mirror(split_dir: Path, mirror: Path, images: list[Path], unreadable: set[str]) -> None:
    staging = mirror.with_name(mirror.name + f".writing-{os.getpid()}")
    for image in images:
        relative = str(image.relative_to(split_dir))
        if relative not in unreadable:
            link = staging / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(image.resolve())
    shutil.rmtree(mirror, ignore_errors=True)  # left by a check that did not finish
    staging.rename(mirror)
