"""Cost of data.skip_unreadable's one-time check of a split, per 10k files, and of the cached lookup.

    .venv/bin/python bench/image_check.py [--files 10000]

Writes --files small PNGs (digits-like, 8x8) and --files 400x300 JPEGs (ImageNet-like) into a temp
folder, then times ``readable_split`` the first time (every image opened and verified) and the
second time (file list, sizes and times hashed, the cached result read).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def write_split(root: Path, count: int, size: tuple[int, int], fmt: str) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.{fmt}")
    return root / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    from vit_exp.data.unreadable import readable_split

    with tempfile.TemporaryDirectory() as tmp:
        for name, size, fmt in (("8x8 PNG", (8, 8), "png"), ("400x300 JPEG", (300, 400), "jpg")):
            split = write_split(Path(tmp) / fmt, args.files, size, fmt)
            cache = Path(tmp) / f"cache-{fmt}"
            timings = []
            for _ in range(2):
                start = time.perf_counter()
                readable_split(split, cache, "data.train_split")
                timings.append(time.perf_counter() - start)
            per_10k = [t * 10_000 / args.files for t in timings]
            print(
                f"{name}: first check {per_10k[0]:.2f} s per 10k files "
                f"(ImageNet's 1.28M: ~{per_10k[0] * 128 / 60:.1f} min), cached {per_10k[1]:.3f} s per 10k "
                f"(~{per_10k[1] * 128:.0f} s for 1.28M)"
            )


if __name__ == "__main__":
    main()
