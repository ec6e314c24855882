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
