"""Every complete YAML config shown in the README, benchmarks/README.md and docs/ passes the config validation, so
the documentation cannot drift from the schema unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from distill.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def yaml_blocks() -> list[tuple[str, str]]:
    found = []
    for f in DOCUMENTS:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", f.read_text(), re.S)):
            found.append((f"{f.relative_to(ROOT).as_posix()}#{i}", block))
    return found


BLOCKS = yaml_blocks()


def test_the_docs_show_configs():
    full = [b for _, b in BLOCKS if "methods" in (yaml.safe_load(b) or {})]
    assert len(full) >= 5


@pytest.mark.parametrize("where, block", BLOCKS, ids=[w for w, _ in BLOCKS])
def test_documented_config_is_valid(where, block):
    raw = yaml.safe_load(block)
    assert isinstance(raw, dict), where
    if "stream" in raw and "learner" in raw:  # a stream file (distill stream, docs/streams.md)
        from distill.streams.section import parse_stream_config

        parse_stream_config(raw)
        return
    if "methods" not in raw:  # a fragment (e.g. only a teacher section) is shown inside a fuller example
        pytest.skip(f"{where} is a fragment")
    parse_config(raw, base_dir=ROOT)
