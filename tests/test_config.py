"""YAML configs: valid files build the same objects as the Python API; bad files fail with one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.cli import main
from distill.config import ConfigError, load_config, parse_config
from distill.experiment import build_methods
from distill.methods.features import FitNet
from distill.methods.logits import KD, CrossEntropy

DEMO = str(Path(__file__).resolve().parents[1] / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")


def base() -> dict:
    return {
        "output_dir": "runs/x",
        "data": {"train": DEMO, "eval": DEMO, "train_per_class": 2, "eval_per_class": 2},
        "student": {"arch": "resnet20"},
        "teacher": {"arch": "resnet20", "weights": "random"},
        "methods": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4}],
        "train": {"epochs": 1, "batch_size": 8},
    }


def test_valid_config_builds_the_python_objects():
    cfg = parse_config(base())
    comp = build_methods(cfg.methods)
    assert isinstance(comp.methods["ce"], CrossEntropy) and isinstance(comp.methods["kd"], KD)
    assert comp.methods["kd"].temperature == 4.0 and comp.weights == {"ce": 0.1, "kd": 0.9}


def test_method_aliases_and_labels():
    raw = base()
    raw["methods"] = [{"name": "hint", "label": "hint2", "student": "f2", "teacher": "f3"},
                      {"name": "fitnet", "weight": 2}]
    comp = build_methods(parse_config(raw).methods)
    assert isinstance(comp.methods["hint2"], FitNet) and comp.methods["hint2"].teacher_feature == "f3"


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: r["methods"][1].update(temprature=4), r"^methods\[1\]\.temprature: unknown option for method 'kd'; "
         r"allowed: weight, label, temperature"),
        (lambda r: r["methods"][1].update(temperature="hot"), r"^methods\[1\]\.temperature: .*valid number.*'hot'"),
        (lambda r: r["methods"].append({"name": "kdd"}), r"^methods\[2\]\.name: unknown method 'kdd'; allowed: .*kd"),
        (lambda r: r["methods"][1].update(reduction="avg"), r"^methods\[1\]\.reduction: .*'batchmean'"),
        (lambda r: r["train"].update(optimizer="adamax"), r"^train\.optimizer: Input should be 'sgd', 'adamw' or"),
        (lambda r: r["train"].update(epochs=0), r"^train\.epochs: .*greater than 0"),
        (lambda r: r.update(tranin={}), r"^tranin: unknown key"),
        (lambda r: r["student"].update(arch="resnet21"), r"^student\.arch: unknown model 'resnet21'; allowed: "),
        (lambda r: r.pop("teacher"), r"^teacher: required key is missing \(methods \['kd'\] need a teacher\)"),
        (lambda r: r.pop("data"), r"^data: required key is missing"),
        (lambda r: r["train"].update(schedule="step"), r"^train\.milestones: "),
        (lambda r: r["methods"].append({"name": "ce"}), r"^methods\[2\]\.label: 'ce' is used twice"),
        (lambda r: r["data"].update(normalize="imagenette"), r"^data\.normalize"),
    ],
)
def test_bad_config_names_the_key(mutate, expected):
    raw = base()
    mutate(raw)
    with pytest.raises(ConfigError, match=expected) as info:
        parse_config(raw)
    assert "\n" not in str(info.value)


def test_yaml_errors_and_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [\n  - name: kd\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base()))
    cfg = load_config(good, ["train.epochs=3", "methods.1.temperature=2"])
    assert cfg.train.epochs == 3 and cfg.methods[1].options()["temperature"] == 2


def test_cli_prints_one_line_without_traceback(tmp_path):
    raw = base()
    raw["methods"][1]["temprature"] = 4
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "train", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["config error: methods[1].temprature: unknown option for method 'kd'; allowed: weight, label, "
                     "temperature, ce_weight, kl_weight, reduction, torchdistill_compat, missing"]
    assert "Traceback" not in proc.stderr


def test_cli_rejects_missing_file(capsys):
    assert main(["train", "/nonexistent/config.yaml"]) == 2
    assert "no such file" in capsys.readouterr().err


EXAMPLES = {
    "ce": "{name: ce, weight: 1.0, label_smoothing: 0.1}",
    "kd": "{name: kd, weight: 0.9, temperature: 4}",
    "fitnet": "{name: fitnet, weight: 100, student: f2, teacher: f2}",
    "at": "{name: at, weight: 1000, student: [f1, f2, f3], mode: code}",
    "reverse_distillation": "{name: reverse_distillation, weight: 1.0, mode: rd4ad, student: [out1, out2, out3]}",
    "random_teachers": "{name: random_teachers, weight: 1.0, student_temp: 1.0, teacher_temp: 1.0}",
}


def all_examples() -> dict[str, str]:
    """The YAML examples of this file plus every method test module's ``YAML_EXAMPLES``."""
    import importlib

    found = dict(EXAMPLES)
    for path in sorted(Path(__file__).parent.glob("test_methods_*.py")):
        found.update(getattr(importlib.import_module(path.stem), "YAML_EXAMPLES", {}))
    return found


def test_every_method_has_a_validated_yaml_example():
    """Each example's options validate against the method's signature and build the method; a method trained by a
    pipeline is refused from a methods list with the pipeline named."""
    from distill.config import MethodConfig, validate_method_options
    from distill.methods import METHODS

    examples = all_examples()
    missing = set(METHODS.names()) - {METHODS.canonical(k) for k in examples}
    assert not missing, f"no YAML example for {sorted(missing)}"
    for name in METHODS.names():
        line = next(v for k, v in examples.items() if METHODS.canonical(k) == name)
        method = MethodConfig.model_validate(yaml.safe_load(line))
        validate_method_options(method.name, method.options(), "methods[0]")
        comp = build_methods([method])
        assert isinstance(next(iter(comp.methods.values())), METHODS.get(name)), name
        if METHODS.get(name).pipeline is not None:
            raw = base()
            raw["methods"] = [yaml.safe_load(line)]
            with pytest.raises(ConfigError, match=rf"^methods\[0\]\.name: '{name}' is trained by the pipeline "):
                parse_config(raw)


def test_a_run_folders_config_reruns_from_any_working_directory(tmp_path, monkeypatch):
    import numpy as np

    src = tmp_path / "project"
    src.mkdir()
    g = np.random.default_rng(0)
    x = g.normal(size=(24, 4)).astype("float32")
    np.savez(src / "rows.npz", x=x, y=(x[:, 0] > 0).astype("int64"))
    (src / "vec.yaml").write_text(f"""
task: vector_classification
output_dir: {tmp_path / 'run'}
data: {{train: rows.npz, eval: rows.npz}}
student: {{arch: mlp, options: {{hidden: 8}}}}
methods: [{{name: ce}}]
train: {{epochs: 1, batch_size: 8, progress: false}}
""")
    monkeypatch.chdir(src)
    assert main(["train", "vec.yaml"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(tmp_path / "run" / "distill_config.json")
    assert cfg.base_dir == str(src.resolve())
    assert main(["eval", str(tmp_path / "run" / "distill_config.json")]) == 0
