from __future__ import annotations

import json

import pytest

from distill.cli import main
from distill.core.registry import Registry
from distill.methods import METHODS


def test_registry_errors_and_aliases():
    reg: Registry[int] = Registry("thing")
    reg.register("a", paper="P", year=2020, arxiv="1", aliases=("alpha",))(1)
    assert reg.get("alpha") == 1 and reg.canonical("alpha") == "a"
    with pytest.raises(KeyError, match="unknown thing 'b'; allowed: a"):
        reg.get("b")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(2)


def test_catalogue_has_provenance(capsys):
    for name in ["ce", "kd", "fitnet", "at"]:
        assert name in METHODS
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["kd"]["provenance"]["arxiv"] == "1503.02531"
    assert rows["fitnet"]["provenance"]["arxiv"] == "1412.6550"
    assert rows["at"]["provenance"]["arxiv"] == "1612.03928"
    for name, row in rows.items():
        assert row["provenance"] and row["provenance"]["paper"], name


def test_methods_family_filter(capsys):
    assert main(["methods", "--json", "--family", "relations"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {r["family"] for r in rows} == {"relations"}
    assert {"sp", "rkd"} <= {r["name"] for r in rows}
    assert main(["methods", "--family", "nope"]) == 2
    assert "unknown family 'nope'" in capsys.readouterr().err
    assert main(["methods", "--family", "logits"]) == 0
    out = capsys.readouterr().out
    assert "Decoupled Knowledge Distillation" in out  # piped output is not folded to 80 columns


def test_docs_methods_lists_every_registered_method():
    # the catalogue table is generated (scripts/catalogue_md.py --write); the per-task table is written by hand
    import sys
    from pathlib import Path

    from distill.core.family import FAMILIES

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "scripts"))
    try:
        import catalogue_md
    finally:
        sys.path.pop(0)
    assert catalogue_md.documented() == catalogue_md.table(), "run: python scripts/catalogue_md.py --write"
    lines = (root / "docs" / "methods.md").read_text().splitlines()
    start = lines.index("| task | methods |")
    per_task = "\n".join(line for line in lines[start:] if line.startswith("|"))
    assert [e.name for e in METHODS if f"`{e.name}`" not in per_task] == []
    assert [f for f in FAMILIES.names() if f"`{f}`" not in per_task] == []
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Method catalogue"):]
    assert section.startswith(f"## Method catalogue\n\n{len(METHODS.names())} methods")
    assert [e.name for e in METHODS if f"`{e.name}`" not in section.split("\n## ")[0]] == []
