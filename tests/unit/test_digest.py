"""The data identity: a split's digest follows its files, sizes and class map, not its location."""

from __future__ import annotations

import shutil

from tests.helpers.data import write_image_folder
from vit_exp.data.digest import class_names_digest, compute_split_digest, data_identity, split_digest
from vit_exp.data.folder import ImageFolderData


def test_the_same_files_elsewhere_have_the_same_digest(tmp_path):
    root = write_image_folder(tmp_path / "a", ["ant", "bee"], per_class=3, size=8)
    copy = shutil.copytree(root, tmp_path / "b")
    first = data_identity(ImageFolderData(root=root), cache_dir=None)
    second = data_identity(ImageFolderData(root=copy), cache_dir=None)
    assert first.digest == second.digest and first.train.path != second.train.path
    assert first.train.num_images == 6 and first.train.num_classes == 2
    assert first.train.num_bytes == sum(p.stat().st_size for p in (root / "train").rglob("*.png"))
    assert first.train.digest != first.val.digest  # other files


def test_a_changed_file_list_size_or_class_map_changes_the_digest(tmp_path):
    root = write_image_folder(tmp_path / "a", ["ant", "bee"], per_class=3, size=8)
    split, indexing = root / "train", {"ant": 0, "bee": 1}
    base = compute_split_digest("train", split, indexing).digest
    assert compute_split_digest("train", split, {"ant": 1, "bee": 0}).digest != base  # labels swapped
    image = next((split / "ant").glob("*.png"))
    image.write_bytes(image.read_bytes() + b"\0")  # one more byte
    assert compute_split_digest("train", split, indexing).digest != base
    grown = compute_split_digest("train", split, indexing).digest
    (split / "ant" / "extra.png").write_bytes(image.read_bytes())
    assert compute_split_digest("train", split, indexing).digest not in (base, grown)


def test_the_cache_is_used_until_a_class_folder_changes(tmp_path):
    root = write_image_folder(tmp_path / "a", ["ant", "bee"], per_class=3, size=8)
    split, indexing, cache = root / "train", {"ant": 0, "bee": 1}, tmp_path / "cache"
    first = split_digest("train", split, indexing, cache)
    assert len(list(cache.glob("*.json"))) == 1
    assert split_digest("train", split, indexing, cache) == first  # from the cache
    (split / "bee" / "new.png").write_bytes(b"x" * 10)  # the folder's mtime moves: listed again
    after = split_digest("train", split, indexing, cache)
    assert after.num_images == first.num_images + 1 and after.digest != first.digest
    assert after == compute_split_digest("train", split, indexing)


def test_class_names_digest_depends_on_order_and_names():
    assert class_names_digest(["a", "b"]) != class_names_digest(["b", "a"])
    assert class_names_digest(["a", "b"]) == class_names_digest(("a", "b"))
