"""LEAF's unlabelled corpus for the Cranfield benchmark: the wide pool (the spec's 50k texts) built from the text in
../shared, while the base pool (the published tables' 5,000- and 3,000-text samples) is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import load_benchmark

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def load():
    return load_benchmark("cranfield")


def test_speeches_join_each_speakers_lines_and_skip_one_line_speeches():
    bench = load()
    lines = ["First Citizen:", "Before we proceed,", "hear me speak.", "", "All:", "Speak.", "",
             "MENENIUS:", "Why, masters,", "my good friends,", "mine honest neighbours,"]
    assert bench.shakespeare_speeches(lines) == [
        "Before we proceed, hear me speak.", "Why, masters, my good friends, mine honest neighbours,"]


@pytest.mark.skipif(not (SHARED / "cranfield").is_dir(), reason=f"Cranfield not found under {SHARED}")
def test_wide_pool_reaches_50k_distinct_non_query_texts_the_base_pool_does_not():
    bench = load()
    coll = bench.load_cranfield(SHARED / "cranfield")
    wide = bench.leaf_texts(coll, SHARED, 50_000, seed=0, pool="wide")
    assert len(wide) == len(set(wide)) == 50_000 and not set(wide) & set(coll.queries.values())
    base = bench.leaf_texts(coll, SHARED, 5000, seed=0)
    assert base[:2] == bench.leaf_texts(coll, SHARED, 2, seed=0)  # a prefix of one seeded shuffle
    with pytest.raises(SystemExit, match="wide"):
        bench.leaf_texts(coll, SHARED, 50_000, seed=0)  # the base pool is too small and says where to look
