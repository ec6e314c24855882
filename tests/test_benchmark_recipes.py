"""benchmarks/sweep.py: a benchmark's settings declared once in its recipe (flags from the recipe, unknown and
missing keys refused by name) and stored results never overwritten by a run with other settings."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import sweep  # noqa: E402


def recipe(tmp_path: Path, settings: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text("settings:\n" + "".join(f"  {k}: {v}\n" for k, v in settings.items()))
    return path


def test_recipe_values_are_the_defaults_and_flags_override_them_with_the_recipe_type(tmp_path, monkeypatch):
    path = recipe(tmp_path, {"per_domain": 2000, "ilr": 0.001})
    monkeypatch.setattr(sys, "argv", ["x", "--ilr", "0.003"])
    args, settings = sweep.parse_with_recipe(argparse.ArgumentParser(), path, ("per_domain", "ilr"))
    assert settings == {"per_domain": 2000, "ilr": 0.003} and isinstance(args.per_domain, int)


@pytest.mark.parametrize(("settings", "key"), [({"a": 1, "typo": 2}, "settings.typo"), ({}, "settings.a")])
def test_unknown_and_missing_recipe_keys_are_refused_by_name(tmp_path, monkeypatch, settings, key):
    monkeypatch.setattr(sys, "argv", ["x"])
    with pytest.raises(SystemExit, match=key):
        sweep.parse_with_recipe(argparse.ArgumentParser(), recipe(tmp_path, settings), ("a",))


def test_results_of_other_settings_are_refused_not_overwritten(tmp_path):
    out = tmp_path / "t.json"
    assert sweep.results_for(out, {"a": 1}, {"seeds": {}}) == {"settings": {"a": 1}, "seeds": {}}
    out.write_text(json.dumps({"settings": {"a": 1}, "seeds": {"0": 5}}))
    assert sweep.results_for(out, {"a": 1}, {"seeds": {}})["seeds"] == {"0": 5}
    with pytest.raises(SystemExit, match="a 1 -> 2"):
        sweep.results_for(out, {"a": 2}, {"seeds": {}})
    assert json.loads(out.read_text())["seeds"] == {"0": 5}
