"""The CIFAR benchmark's short variant runs its recipes end to end and writes its JSON, Markdown table and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "distill" / "assets"


def test_quick_benchmark_on_shipped_data(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "cifar10_kd.py"), "--quick", "--work", str(tmp_path),
           "--data", str(ASSETS / "cifar10_demo.tar.gz"),
           "--teacher", str(ASSETS / "resnet56_cifar10_jpeg.safetensors"),
           "--per-class", "8", "--arms", "scratch", "kd"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results" / "cifar10_kd.json").read_text())
    assert [r["arm"] for r in results["runs"]] == ["scratch", "kd"]
    assert [r["recipe"] for r in results["runs"]] == ["configs/cifar10/scratch.yaml", "configs/cifar10/kd.yaml"]
    kd = load_yaml_methods(REPO / "configs" / "cifar10" / "kd.yaml")
    assert results["runs"][1]["methods"] == kd
    table = (tmp_path / "results" / "cifar10_kd.md").read_text()
    assert "| kd |" in table and "| scratch |" in table
    assert (tmp_path / "results" / "cifar10_kd.png").stat().st_size > 10_000


def load_yaml_methods(path: Path) -> list:
    from distill.config import load_raw

    return load_raw(path)["methods"]
