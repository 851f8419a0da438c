"""Data: the digits cache, explicit label mapping (folder / ImageNet meta.mat) and the pipelines."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.data import write_image_folder, write_meta_mat
from vit_exp.data.digits import MARKER, ensure_digits_folder
from vit_exp.data.folder import ImageFolderData
from vit_exp.data.imagenet import load_imagenet_classes
from vit_exp.errors import ConfigError, DataError

LEAVES = [  # deliberately unsorted; the rule sorts leaves by WNID
    ("n02085620", "Chihuahua"),
    ("n01440764", "tench, Tinca tinca"),
    ("n02107142", "Doberman, Doberman pinscher"),
    ("n01443537", "goldfish, Carassius auratus"),
    ("n01484850", "great white shark, white shark"),
]
PARENTS = [("n00001740", "entity"), ("n01440000", "fish")]


def test_digits_folder_is_written_once(tmp_path):
    root = ensure_digits_folder(tmp_path / "digits")
    train = sorted((root / "train").rglob("*.png"))
    val = sorted((root / "val").rglob("*.png"))
    assert len(train) + len(val) == 1797
    assert len(val) == pytest.approx(0.2 * 1797, abs=10)
    assert sorted(p.name for p in (root / "train").iterdir()) == [str(d) for d in range(10)]
    assert (root / MARKER).is_file()
    stamp = train[0].stat().st_mtime_ns
    ensure_digits_folder(tmp_path / "digits")
    assert train[0].stat().st_mtime_ns == stamp
    ensure_digits_folder(tmp_path / "digits", val_fraction=0.3)  # another split rewrites it
    assert len(list((root / "val").rglob("*.png"))) == pytest.approx(0.3 * 1797, abs=10)


def test_meta_mat_rule_keeps_sorted_leaves(tmp_path):
    path = write_meta_mat(tmp_path / "meta.mat", LEAVES, PARENTS)
    classes = load_imagenet_classes(path)
    assert [wnid for wnid, _ in classes] == sorted(w for w, _ in LEAVES)
    assert classes[0] == ("n01440764", "tench")
    assert classes[4] == ("n02107142", "Doberman")


def test_imagenet_class_map_on_a_subset(tmp_path):
    meta = write_meta_mat(tmp_path / "ds/ILSVRC2012_devkit_t12/data/meta.mat", LEAVES, PARENTS)
    root = write_image_folder(tmp_path / "ds", ["n02107142", "n01440764", "n01484850"], per_class=2)
    data = ImageFolderData(root=root, class_map="imagenet", meta_mat=meta)
    assert data.class_indexing == {"n01440764": 0, "n01484850": 2, "n02107142": 4}
    assert data.num_classes == 5
    assert data.class_names[4] == "Doberman" and data.class_names[2] == "great white shark"
    folder = ImageFolderData(root=root, class_map="folder", meta_mat=meta)
    assert folder.class_indexing == {"n01440764": 0, "n01484850": 1, "n02107142": 2}
    assert folder.class_names == ["tench", "great white shark", "Doberman"]


def test_imagenet_class_map_rejects_unknown_wnids(tmp_path):
    meta = write_meta_mat(tmp_path / "meta.mat", LEAVES)
    root = write_image_folder(tmp_path / "ds", ["n01440764", "cats"], per_class=1)
    with pytest.raises(DataError, match=r"\['cats'\].*not ImageNet wnids"):
        _ = ImageFolderData(root=root, class_map="imagenet", meta_mat=meta).class_indexing


def test_pipelines_yield_batches_with_the_mapped_labels(tmp_path):
    from vit_exp.data.pipeline import train_dataset, val_dataset

    meta = write_meta_mat(tmp_path / "meta.mat", LEAVES)
    root = write_image_folder(tmp_path / "ds", ["n02107142", "n01440764"], per_class=5, size=40, fmt="jpg")
    data = ImageFolderData(root=root, class_map="imagenet", meta_mat=meta)
    train = train_dataset(data, image_size=32, batch_size=4)
    assert train.get_dataset_size() == 2  # 10 images, drop_remainder
    images, labels = next(train.create_tuple_iterator(output_numpy=True))
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.float32
    assert labels.dtype == np.int32 and set(labels) <= {0, 4}
    val = val_dataset(data, image_size=32, batch_size=4)
    assert val.get_dataset_size() == 3  # 10 images, last partial batch kept
    all_labels = np.concatenate([b[1] for b in val.create_tuple_iterator(output_numpy=True)])
    assert all_labels.dtype == np.int32  # the loss and metrics take int32 labels (no cast stage)
    assert sorted(all_labels.tolist()) == [0] * 5 + [4] * 5


def test_val_transform_resizes_then_center_crops(tmp_path):
    from vit_exp.data.pipeline import val_transforms

    data = ImageFolderData(root=write_image_folder(tmp_path / "ds", ["a"], per_class=1), val_resize_margin=32)
    names = [type(op).__name__ for op in val_transforms(data, 224)]
    assert names == ["Decode", "Resize", "CenterCrop", "Normalize", "HWC2CHW"]


def test_missing_root_split_and_empty_split(tmp_path):
    with pytest.raises(DataError, match=r"data.root: folder not found"):
        ImageFolderData(root=tmp_path / "nowhere")
    root = write_image_folder(tmp_path / "ds", ["a", "b"], per_class=1, splits=("train",))
    data = ImageFolderData(root=root)
    from vit_exp.data.pipeline import val_dataset

    with pytest.raises(DataError, match=r"data.val_split: split folder not found"):
        val_dataset(data, 32, 2)
    (tmp_path / "empty/train/a").mkdir(parents=True)
    with pytest.raises(
        DataError, match=r"data.train_split: split folder .* has no class folders with images"
    ):
        ImageFolderData(root=tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"data.class_map"):
        ImageFolderData(root=root, class_map="wordnet")


def test_more_workers_than_cpus_are_capped(tmp_path, caplog):
    import os

    from vit_exp.data.pipeline import train_dataset

    root = write_image_folder(tmp_path / "ds", ["a", "b"], per_class=4)
    data = ImageFolderData(root=root, num_workers=(os.cpu_count() or 1) + 7)
    images, _ = next(train_dataset(data, 32, 4).create_tuple_iterator(output_numpy=True))
    assert images.shape == (4, 3, 32, 32)
    assert "more than the" in caplog.text


def test_unreadable_images_are_left_out_once_and_the_check_is_cached(tmp_path, caplog):
    import logging

    from vit_exp.data.unreadable import readable_split

    root = write_image_folder(tmp_path / "ds", ["a", "b"], per_class=3, splits=("train",))
    broken = root / "train" / "b" / "b_9.png"
    broken.write_bytes(b"\x89PNG not really")
    with caplog.at_level(logging.INFO, logger="vit_exp.data.unreadable"):
        mirror = readable_split(root / "train", tmp_path / "checks", "data.train_split")
        again = readable_split(root / "train", tmp_path / "checks", "data.train_split")
    assert mirror == again != root / "train"
    assert sorted(p.name for p in mirror.rglob("*.png")) == sorted(
        p.name for p in (root / "train").rglob("*.png") if p != broken
    )
    assert all(p.is_symlink() for p in mirror.rglob("*.png"))
    assert caplog.text.count("checking 7 images once") == 1  # the second call reads the cache
    assert caplog.text.count("1 of 7 images") == 2
    broken.unlink()  # the file list changed: checked again, nothing left out
    assert readable_split(root / "train", tmp_path / "checks", "data.train_split") == root / "train"
