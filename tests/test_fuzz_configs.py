"""A fixed-seed sample of ``scripts/fuzz_configs.py``: mutants of the documented configs are refused with one line
naming a key or the file, or accepted when they are still valid; never a traceback, a crash or a hang.

The sample is parsed only (``load_config``, plus ``model_dump_json`` as ``distill train`` does), so that it runs
in seconds; the full fuzzer also builds every experiment."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

from distill.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def _fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_configs", ROOT / "scripts" / "fuzz_configs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_configs"] = module
    spec.loader.exec_module(module)
    return module


def test_a_sample_of_mutated_doc_configs_gives_no_traceback(tmp_path):
    pytest.importorskip("transformers")
    from conftest import shared_path

    shared_path("data", "sst")  # the fuzzer's fixtures come from ../shared
    fz = _fuzzer()
    cases = fz.make_cases(100, 1234, tmp_path)
    outcomes: Counter[str] = Counter()
    bad = []
    for i, case in enumerate(cases):
        path = tmp_path / f"case{i}.yaml"
        path.write_text(case.text)
        try:
            load_config(path).model_dump_json()
            outcome = "accepted"
        except ConfigError as e:
            msg = str(e)
            outcome = "error" if "\n" not in msg and fz.KEY_RE.match(msg) else "unnamed"
            if outcome == "unnamed":
                bad.append((case.name, msg))
        except Exception as e:  # noqa: BLE001 - the point of the test
            outcome = "traceback"
            bad.append((case.name, f"{type(e).__name__}: {e}"))
        outcomes[outcome] += 1
    assert not bad, bad[:5]
    assert outcomes["error"] >= 50, outcomes
