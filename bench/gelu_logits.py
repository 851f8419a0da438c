"""Exact (erf) vs tanh GELU on trained weights: how far apart are the logits and predictions?

    GLOG_v=3 .venv/bin/python bench/gelu_logits.py --checkpoint CKPT [--model vit_tiny] [--data digits]
        [--images FOLDER] [--limit 512]

Loads ``CKPT`` (a path or URL, e.g. the recipe's published ``vit_b_16_224.ckpt`` with
``--model vit_b16 --data imagenet --images <ImageNet val folder>``) into the same ViT twice, once
per GELU variant (``model.gelu_approximate`` false / true), runs both on up to ``--limit`` images
found under ``--images`` (default: the digits val split), preprocessed as ``vit_exp.predict`` does
(resize to ``model.image_size``, the data config's mean/std), and prints the logit differences
(max and mean absolute, relative to the logits' spread), top-1 and top-5 agreement, the largest
probability difference and, when the folder's class count equals the head's, each variant's top-1
accuracy with sorted folder names as labels. The variant the weights were trained with is the
reference; the other is what switching the config would give.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _models import composed_group, cpu_vit, vit_config

from vit_exp.config import PROJECT_ROOT

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def data_config(name: str) -> dict:
    """mean and std of ``data=<name>``."""
    cfg = composed_group("data", name)
    return {"mean": list(cfg["mean"]), "std": list(cfg["std"])}


def find_images(folder: Path, limit: int) -> tuple[list[Path], list[int], int]:
    """Up to ``limit`` images under ``folder`` spread over its class folders; labels; class count."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    per_class = [sorted(f for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes]
    if not classes:  # a flat folder of images: no labels
        per_class = [sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)]
    paths, labels = [], []
    depth = 0
    while len(paths) < limit and any(depth < len(files) for files in per_class):
        for label, files in enumerate(per_class):
            if depth < len(files) and len(paths) < limit:
                paths.append(files[depth])
                labels.append(label)
        depth += 1
    return paths, labels, len(classes)


def logits_of(
    model: str, params: dict, checkpoint: Path, batches: list[np.ndarray], approximate: bool
) -> np.ndarray:
    """Logits of every batch, ``params`` (the checkpoint's) loaded, ``gelu_approximate=approximate``."""
    import mindspore as ms

    from vit_exp.models.checkpoint import load_into

    num_classes = int(params["dense.weight"].shape[0])
    net = cpu_vit(vit_config(model, gelu_approximate=approximate, num_classes=num_classes))
    load_into(net, params, checkpoint, head_names=())
    net.set_train(False)
    return np.concatenate([net(ms.Tensor(b)).asnumpy() for b in batches]).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a MindSpore checkpoint path or URL")
    parser.add_argument("--model", default="vit_tiny", help="conf/model/<name>.yaml the checkpoint fits")
    parser.add_argument("--data", default="digits", help="conf/data/<name>.yaml for mean and std")
    parser.add_argument("--images", type=Path, default=PROJECT_ROOT / ".cache/datasets/digits/val")
    parser.add_argument("--limit", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--trained-with", choices=("exact", "tanh"), default=None, help="default: the config's"
    )
    args = parser.parse_args()

    import mindspore as ms

    from vit_exp.data.images import decode_rgb, preprocess
    from vit_exp.models.checkpoint import apply_name_map, fetch_checkpoint

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    model, data = args.model, data_config(args.data)
    if not args.images.is_dir():
        raise SystemExit(
            f"error: --images {args.images} is not a folder (the digits default needs one run first)"
        )
    checkpoint = fetch_checkpoint(args.checkpoint, PROJECT_ROOT / ".cache" / "checkpoints")
    params = apply_name_map(ms.load_checkpoint(str(checkpoint)), "auto")  # read once for both variants
    paths, labels, num_classes = find_images(args.images, args.limit)
    if not paths:
        raise SystemExit(f"error: no images under {args.images} (--images)")
    images = [decode_rgb(p.read_bytes(), str(p)) for p in paths]
    size = int(model["image_size"])
    batches = [
        preprocess(images[i : i + args.batch], size, data["mean"], data["std"]).astype(np.float32)
        for i in range(0, len(images), args.batch)
    ]
    trained = args.trained_with or ("tanh" if model.get("gelu_approximate") else "exact")
    reference = logits_of(model, params, checkpoint, batches, approximate=trained == "tanh")
    other = logits_of(model, params, checkpoint, batches, approximate=trained != "tanh")
    other_name = "exact" if trained == "tanh" else "tanh"

    diff = np.abs(other - reference)
    spread = float(reference.std())

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    top1 = float((other.argmax(1) == reference.argmax(1)).mean())
    top5_ref = np.argsort(-reference, 1)[:, :5]
    top5_other = np.argsort(-other, 1)[:, :5]
    top5 = float(np.mean([set(a) == set(b) for a, b in zip(top5_ref, top5_other, strict=True)]))
    print(f"checkpoint {checkpoint} ({args.model}, trained with {trained} GELU), {len(paths)} images")
    print(
        f"{other_name} vs {trained}: max |dlogit| {diff.max():.3g}, mean {diff.mean():.3g} "
        f"(logit std {spread:.3g}; max/std {diff.max() / spread:.3g}); top-1 agreement {top1:.4f}, "
        f"top-5 set agreement {top5:.4f}; max |dprob| {np.abs(softmax(other) - softmax(reference)).max():.3g}"
    )
    if num_classes == reference.shape[1]:
        y = np.array(labels)
        acc_ref, acc_other = np.mean(reference.argmax(1) == y), np.mean(other.argmax(1) == y)
        print(
            "top-1 accuracy (sorted folder names as labels): "
            f"{trained} {acc_ref:.4f}, {other_name} {acc_other:.4f}"
        )


if __name__ == "__main__":
    main()
