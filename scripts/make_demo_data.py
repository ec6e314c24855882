"""Build ``src/distill/assets/cifar10_demo.tar.gz`` from the JPEG CIFAR-10 archive in ../shared.

The demo archive keeps the image-folder layout and the original JPEG bytes (no re-encoding) of a
class-balanced, seeded choice of images: 250 per class from ``train/`` and 100 per class from ``test/``.

    python scripts/make_demo_data.py [--source ../shared/data/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import argparse
import io
import random
import tarfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
    p.add_argument("--out", type=Path, default=REPO / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")
    p.add_argument("--train-per-class", type=int, default=250)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    files: dict[tuple[str, str], dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(args.source, "r:*") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[2].endswith(".jpg"):
                data = tar.extractfile(member)
                assert data is not None
                files[(parts[0], parts[1])][parts[2]] = data.read()
    rng = random.Random(args.seed)
    with tarfile.open(args.out, "w:gz", format=tarfile.PAX_FORMAT) as out:
        for (split, cls), images in sorted(files.items()):
            k = args.train_per_class if split == "train" else args.test_per_class
            for name in sorted(rng.sample(sorted(images), k)):
                info = tarfile.TarInfo(f"{split}/{cls}/{name}")
                info.size = len(images[name])
                info.mtime = 0
                out.addfile(info, io.BytesIO(images[name]))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
