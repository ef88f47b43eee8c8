"""Shard Imagenette (train shuffled, val sorted) at 256 px into a folder small enough to carry to the device.

Usage: python benchmarks/stage_imagenette.py SRC_ROOT OUT_DIR [QUALITY]
Writes OUT_DIR/train, OUT_DIR/val and OUT_DIR/pixel_mean.npy with the test writer of the shard contract.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from PIL import Image  # noqa: E402
from shard_writer import write_mean, write_split  # noqa: E402


class _Lazy:
    """Open each image only when the writer reaches it (13k images would not fit open at once)."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __iter__(self):
        return (Image.open(p) for p in self.paths)


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    quality = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    classes = sorted(p.name for p in (src / "train").iterdir())
    for split in ("train", "val"):
        files = sorted((src / split).glob("*/*.JPEG"))
        if split == "train":
            random.Random(0).shuffle(files)
        labels = [classes.index(f.parent.name) for f in files]
        write_split(_Lazy(files), labels, out / split, split, classes, size=256, quality=quality, per_shard=512)
        print(split, len(files))
    write_mean(out / "train", out / "pixel_mean.npy")


if __name__ == "__main__":
    main()
