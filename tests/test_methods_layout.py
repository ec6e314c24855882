"""The method catalogue's layout: one file per registered method, named after it, in its family's folder; the old
import paths are shims that re-export the same objects."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

import distill
from distill.cli import main
from distill.core.batch import IGNORE_INDEX
from distill.methods import FAMILY_FOLDERS, METHODS

PACKAGE = Path(distill.__file__).parent
METHODS_DIR = PACKAGE / "methods"
#: modules of the method folders that hold maths or bases shared by several methods (not methods themselves)
SHARED = {"features/adapters.py", "features/stages.py", "relations/rows.py", "logits/losses.py",
          "augmentation/mixing.py", "llm/divergences.py", "llm/chunked.py", "graph/base.py", "ranking/scores.py",
          "dense/affinity.py"}
#: the module paths of before the one-file-per-method layout, kept as shims for one release
SHIMS = ["crd", "dual_head", "feature_transfer", "graph_kd", "lelp", "lm_divergences", "logit_variants", "lsf_idm",
         "makd", "meal_v2", "mixup", "nd_loss", "pld", "retrieval", "reviewkd", "tgeo"]


def test_every_method_has_its_own_file_named_after_it():
    for entry in METHODS:
        path = PACKAGE / entry.file
        assert path.is_file(), (entry.name, entry.file)
        assert path.stem == entry.name, (entry.name, entry.file)
        assert path.parent.parent == METHODS_DIR, entry.file
        assert path.parent.name == FAMILY_FOLDERS[entry.family], (entry.name, entry.family, entry.file)
        assert entry.obj.__module__ == "distill." + entry.file[:-3].replace("/", ".")
    files = [e.file for e in METHODS]
    assert len(set(files)) == len(files)


def test_method_folders_hold_only_methods_and_shared_modules():
    registered = {e.file for e in METHODS}
    for folder in sorted(set(FAMILY_FOLDERS.values())):
        for path in sorted((METHODS_DIR / folder).glob("*.py")):
            rel = f"methods/{folder}/{path.name}"
            if path.name == "__init__.py":
                continue
            if f"{folder}/{path.name}" in SHARED:
                assert path.stem not in METHODS, f"{rel}: a shared module must not be named like a method"
            else:
                assert rel in registered, f"{rel} is neither a registered method's file nor a shared module"


def test_methods_command_prints_each_file(capsys):
    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["file"] for r in rows} == {e.name: e.file for e in METHODS}
    assert {r["name"]: r["file"] for r in rows}["ft"] == "methods/features/ft.py"
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for entry in METHODS:
        assert entry.file in out, entry.file


@pytest.mark.parametrize("old", SHIMS)
def test_old_module_paths_reexport_the_same_objects(old):
    before = {e.name: e.obj for e in METHODS}
    shim = importlib.import_module(f"distill.methods.{old}")
    assert shim.__doc__.startswith("Deprecated import path, kept for one release; use distill.methods.")
    assert shim.__all__
    for name in shim.__all__:
        obj = getattr(shim, name)
        if name in ("UNLABELED", "IGNORE"):
            assert obj == IGNORE_INDEX
            continue
        home = getattr(obj, "__module__", None)
        if home is None or not home.startswith("distill.methods."):  # a type alias such as Reduction
            continue
        assert home != shim.__name__ and getattr(importlib.import_module(home), name) is obj, (old, name)
    assert {e.name: e.obj for e in METHODS} == before  # importing a shim registers nothing again


def test_old_package_paths_and_names():
    from distill.llm.generation import OnPolicy
    from distill.methods.feature_transfer import FactorTransfer
    from distill.methods.features import AttentionTransfer, FitNet, attention_map, conv_regressor
    from distill.methods.features.adapters import conv_regressor as conv_regressor_new
    from distill.methods.features.at import AttentionTransfer as AttentionTransferNew
    from distill.methods.features.at import attention_map as attention_map_new
    from distill.methods.features.fitnet import FitNet as FitNetNew
    from distill.methods.features.ft import FactorTransfer as FactorTransferNew
    from distill.methods.llm.on_policy import OnPolicy as OnPolicyNew
    from distill.methods.lm_divergences import IGNORE
    from distill.methods.logits import KD, CrossEntropy, cross_entropy, kl_batchmean
    from distill.methods.logits.ce import CrossEntropy as CrossEntropyNew
    from distill.methods.logits.kd import KD as KDNew
    from distill.methods.logits.losses import cross_entropy as cross_entropy_new
    from distill.methods.logits.losses import kl_batchmean as kl_batchmean_new
    from distill.methods.relations import RelationalKD, rkd_angles
    from distill.methods.relations.rkd import RelationalKD as RelationalKDNew
    from distill.methods.relations.rkd import rkd_angles as rkd_angles_new

    assert (KD, CrossEntropy, cross_entropy, kl_batchmean) == (KDNew, CrossEntropyNew, cross_entropy_new,
                                                               kl_batchmean_new)
    assert (FitNet, AttentionTransfer, attention_map, conv_regressor) == (FitNetNew, AttentionTransferNew,
                                                                          attention_map_new, conv_regressor_new)
    assert (RelationalKD, rkd_angles) == (RelationalKDNew, rkd_angles_new)
    assert FactorTransfer is FactorTransferNew and OnPolicy is OnPolicyNew and IGNORE == IGNORE_INDEX == -100
    assert METHODS.get("on_policy") is OnPolicyNew and METHODS.get("kd") is KDNew


def test_generation_module_does_not_import_the_methods():
    source = (PACKAGE / "llm" / "generation.py").read_text()
    for node in ast.parse(source).body:  # module level only; OnPolicy is re-exported lazily
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("distill.methods"), node.module
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("distill.methods") for a in node.names)
