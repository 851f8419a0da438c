"""The identity of a dataset: digests of its splits (file list, sizes, class map) and of its class names.

A split's digest covers each image's relative path, size and label, not the folder's location. Cached
under ``cache_dir`` by folder mtimes, it misses a file rewritten in place until the entry is removed.

One digest names the data everywhere (console, run tags, MLflow datasets, version tags, promote): the
data digest, read as ``digits:289287cc`` (its first ``SHORT_LENGTH`` characters); a split's MLflow
dataset digest begins with those same characters (``289287cc`` + the split's own ``acc8f497``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from vit_exp.data.folder import IMAGE_EXTENSIONS
from vit_exp.locking import exclusive

Kept = dict[str, set[str]] | None  # class folder -> the image names a training subset keeps

DIGEST_LENGTH = 16
SHORT_LENGTH = 8  # what people read and type: ``digits:289287cc``
CACHE_VERSION = 1


@dataclass(frozen=True)
class SplitDigest:
    """One split of a dataset: where it is, its digest and what it holds."""

    split: str
    path: str
    digest: str
    num_images: int
    num_bytes: int
    num_classes: int


@dataclass(frozen=True)
class DataIdentity:
    """What a model version records of its data: name, digests, class count and class-names digest."""

    name: str
    digest: str  # of the train and val split digests together
    num_classes: int
    class_names_digest: str
    train: SplitDigest
    val: SplitDigest

    @property
    def label(self) -> str:
        """``digits:289287cc``: how the console, the run description and promote name this data."""
        return data_label(self.name, self.digest)

    def dataset_digest(self, split: SplitDigest) -> str:
        """``split``'s digest as an MLflow dataset (and ``data.<split>_digest`` tag): the data digest's
        short form, then the split's own, ``DIGEST_LENGTH`` characters in all."""
        return self.digest[:SHORT_LENGTH] + split.digest[: DIGEST_LENGTH - SHORT_LENGTH]

    def tags(self) -> dict[str, str]:
        """Tags for a model version (and a run): ``data.name``, ``data.digest``, ..."""
        return {
            "data.name": self.name,
            "data.digest": self.digest,
            "data.train_digest": self.dataset_digest(self.train),
            "data.val_digest": self.dataset_digest(self.val),
            "data.num_classes": str(self.num_classes),
            "data.class_names_digest": self.class_names_digest,
        }


def data_label(name: str, digest: str) -> str:
    """``digits:289287cc``: a data name and the start of its digest (also of a version's tags)."""
    return f"{name}:{digest[:SHORT_LENGTH]}"


def class_names_digest(class_names: list[str]) -> str:
    """A digest of the class names in index order (two models with equal digests name labels alike)."""
    return hashlib.sha256(json.dumps(list(class_names)).encode()).hexdigest()[:DIGEST_LENGTH]


def _images(folder: str) -> list[tuple[str, int]]:
    with os.scandir(folder) as entries:
        found = [
            (entry.name, entry.stat().st_size)
            for entry in entries
            if entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file()
        ]
    return sorted(found)


def _cache_key(split_dir: Path, class_indexing: dict[str, int], keep: Kept = None) -> str:
    key = hashlib.sha256(f"{CACHE_VERSION}\t{split_dir.resolve()}\n".encode())
    if keep is not None:
        key.update(json.dumps({k: sorted(v) for k, v in keep.items()}, sort_keys=True).encode())
    key.update(f"{split_dir.stat().st_mtime_ns}\n".encode())
    for folder, label in sorted(class_indexing.items()):
        path = split_dir / folder
        mtime = path.stat().st_mtime_ns if path.is_dir() else -1
        key.update(f"{folder}\t{label}\t{mtime}\n".encode())
    return key.hexdigest()[:32]


def compute_split_digest(
    split: str, split_dir: Path, class_indexing: dict[str, int], keep: Kept = None
) -> SplitDigest:
    """List the split (uncached): every image of every mapped class folder, its size and label; with
    ``keep`` (class folder -> image names), only those images."""
    digest = hashlib.sha256()
    images = size = classes = 0
    for folder, label in sorted(class_indexing.items()):
        path = split_dir / folder
        if not path.is_dir():
            continue
        files = _images(str(path))
        if keep is not None:
            files = [(name, nbytes) for name, nbytes in files if name in keep.get(folder, ())]
        classes += bool(files)
        for name, nbytes in files:
            digest.update(f"{folder}/{name}\t{nbytes}\t{label}\n".encode())
            images, size = images + 1, size + nbytes
    return SplitDigest(
        split, str(split_dir.resolve()), digest.hexdigest()[:DIGEST_LENGTH], images, size, classes
    )


def split_digest(
    split: str, split_dir: Path, class_indexing: dict[str, int], cache_dir: Path | None, keep: Kept = None
) -> SplitDigest:
    """The split's digest (of the images in ``keep`` if given), cached while its folders are unchanged."""
    split_dir = Path(split_dir)
    if cache_dir is None:
        return compute_split_digest(split, split_dir, class_indexing, keep)
    cache_dir = Path(cache_dir).expanduser()
    record = cache_dir / f"{_cache_key(split_dir, class_indexing, keep)}.json"
    try:
        return SplitDigest(**json.loads(record.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    with exclusive(cache_dir / ".lock"):
        result = compute_split_digest(split, split_dir, class_indexing, keep)
        partial = record.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(result)))
        os.replace(partial, record)
    return result


def data_identity(data, cache_dir: Path | None, class_names: list[str] | None = None) -> DataIdentity:
    """The identity of an ImageFolderData's train and val splits; ``class_names``: the model's
    (default: the data's), e.g. padded to a larger head. A training subset (``data.train_fraction``,
    ``data.per_class_limit``) is other data: the train digest covers only its images."""
    indexing = dict(data.class_indexing)
    keep = getattr(data, "train_subset", None)
    train = split_digest(data.train_split, data.root / data.train_split, indexing, cache_dir, keep)
    val = split_digest(data.val_split, data.root / data.val_split, indexing, cache_dir)
    both = hashlib.sha256(f"{train.digest}\t{val.digest}".encode()).hexdigest()[:DIGEST_LENGTH]
    names = list(class_names if class_names is not None else data.class_names)
    return DataIdentity(data.name, both, len(names), class_names_digest(names), train, val)
