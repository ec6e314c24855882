"""Write the splits of benchmarks/digits_lelp.py as .npz files for ``task: vector_classification``.

    python scripts/make_digits_npz.py        # needs scikit-learn; writes benchmarks/data/digits/split<k>/

The data are the 1,797 8x8 digit images scikit-learn ships (``load_digits``; BSD-3-Clause, originally the UCI
"Optical Recognition of Handwritten Digits" test set), as 64 pixel values 0..16 (uint8, unscaled: the recipes
standardise on the training rows). 5 stratified 60/40 splits (``StratifiedShuffleSplit(n_splits=5, test_size=0.4,
random_state=0)``, stratified by digit: 1,078 train / 719 test rows). Per split, four files with arrays ``x``
and ``y``: ``train.npz`` / ``test.npz`` with the binary label [digit >= 5] and ``train_digits.npz`` /
``test_digits.npz`` with the digit itself (the oracle arm). The files are committed; this script rebuilds them
byte for byte.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "data" / "digits"
SPLITS = 5


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """A compressed .npz with fixed member timestamps, so the same arrays give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, buf.getvalue())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--splits", type=int, default=SPLITS)
    args = p.parse_args()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedShuffleSplit

    x, digit = load_digits(return_X_y=True)
    x = x.astype(np.uint8)
    digit = digit.astype(np.int64)
    binary = (digit >= 5).astype(np.int64)
    splitter = StratifiedShuffleSplit(n_splits=args.splits, test_size=0.4, random_state=0)
    for k, (train, test) in enumerate(splitter.split(x, digit)):
        folder = args.out / f"split{k}"
        for name, rows in (("train", train), ("test", test)):
            save_npz(folder / f"{name}.npz", x=x[rows], y=binary[rows])
            save_npz(folder / f"{name}_digits.npz", x=x[rows], y=digit[rows])
        print(f"{folder}: {len(train)} train / {len(test)} test rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
