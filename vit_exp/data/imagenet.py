"""ImageNet class names and indices from the devkit's ``meta.mat``."""

from __future__ import annotations

from pathlib import Path

from vit_exp.errors import DataError


def load_imagenet_classes(meta_mat: str | Path) -> list[tuple[str, str]]:
    """Return ``[(wnid, name), ...]`` indexed by ImageNet class index: the leaf synsets sorted by WNID,
    each named by the first comma-separated part of ``words`` (the reference recipe's rule)."""
    path = Path(meta_mat).expanduser()
    if not path.is_file():
        raise DataError(f"data.meta_mat: file not found: {path}")
    import scipy.io

    try:
        synsets = scipy.io.loadmat(str(path), squeeze_me=True)["synsets"]
        leaves = [
            (str(row["WNID"]), str(row["words"]).split(",")[0].strip())
            for row in synsets
            if int(row["num_children"]) == 0
        ]
    except Exception as exc:
        raise DataError(f"data.meta_mat: cannot read ImageNet synsets from {path}: {exc}") from None
    if not leaves:
        raise DataError(f"data.meta_mat: {path} has no leaf synsets (num_children == 0)")
    return sorted(leaves, key=lambda item: item[0])
