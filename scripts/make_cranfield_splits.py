"""Write the query splits of benchmarks/cranfield.py as files of query ids, one per line.

    python scripts/make_cranfield_splits.py    # needs ../shared/data/cranfield; writes benchmarks/data/cranfield/

``test_qids.txt`` / ``train_qids.txt``: the fixed split of the 225 Cranfield queries (``split_queries(all query
ids, num_test=75, seed=0)``: 75 test, 150 train); ``fit_qids.txt`` / ``val_qids.txt``: the transformer student's
early-stopping split of the training queries (``split_queries(train, num_test=30, seed=1)``: 120 fit, 30
validation). Query ids are the 1-based positions of the queries in ``cran.qry`` (what ``cranqrel`` uses). The
recipes of configs/cranfield*/ name these files as ``data.train_queries``; they are committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.text.groups import split_queries
from distill.text.ir_data import load_cranfield

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cranfield")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "data" / "cranfield")
    args = p.parse_args()
    coll = load_cranfield(args.data)
    train, test = split_queries(list(coll.queries), 75, seed=0)
    fit, val = split_queries(train, 30, seed=1)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, qids in (("train", train), ("test", test), ("fit", fit), ("val", val)):
        (args.out / f"{name}_qids.txt").write_text("".join(f"{q}\n" for q in qids))
        print(f"{args.out / f'{name}_qids.txt'}: {len(qids)} queries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
