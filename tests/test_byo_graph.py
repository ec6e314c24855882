"""A user's graph (``data.format: npz`` or ``files``) for ``task: graph_node_classification``: the readers, their
errors (missing arrays / columns / splits, edges naming unknown nodes), and a GNN teacher -> MLP student recipe run
end to end through ``distill train`` on a tiny graph written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch_geometric")

from distill.cli import main  # noqa: E402
from distill.config import ConfigError, parse_config  # noqa: E402
from distill.data.graph_files import load_graph_files, load_graph_npz  # noqa: E402
from distill.experiment import build_experiment  # noqa: E402

N = 40


def communities(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two communities of 20 nodes: features hint at the class, edges mostly inside a community."""
    g = np.random.default_rng(seed)
    y = np.repeat([0, 1], N // 2)
    x = (g.normal(size=(N, 5)) + y[:, None] * 0.8).astype(np.float32)
    edges = [(i, (i + 1) % 20 + 20 * (i // 20)) for i in range(N)] + [(0, 25)]  # two rings and one bridge
    return x, y, np.array(edges, dtype=np.int64)


def masks() -> dict[str, np.ndarray]:
    split = np.array(["train", "train", "val", "test"] * (N // 4))
    return {f"{s}_mask": split == s for s in ("train", "val", "test")}


def write_npz(path: Path, **drop: bool) -> Path:
    x, y, e = communities()
    arrays = {"feat": x, "label": y, "edge_index": e.T, **masks()}
    np.savez(path, **{k: v for k, v in arrays.items() if not drop.get(k)})
    return path


def write_folder(folder: Path, labels_from: int = 0, split_column: bool = True) -> Path:
    x, y, e = communities()
    folder.mkdir(parents=True, exist_ok=True)
    split = np.array(["train", "train", "val", "test"] * (N // 4))
    lines = ["f0,f1,f2,f3,f4,label" + (",split" if split_column else "")]
    for i in range(N):
        lines.append(",".join(f"{v:.4f}" for v in x[i]) + f",{y[i] + labels_from}" + (f",{split[i]}" if split_column
                                                                                      else ""))
    (folder / "nodes.csv").write_text("\n".join(lines) + "\n")
    (folder / "edges.tsv").write_text("source\ttarget\n" + "".join(f"{a}\t{b}\n" for a, b in e))
    return folder


def test_npz_reader_matches_the_files_reader_and_makes_edges_undirected(tmp_path):
    a = load_graph_npz(write_npz(tmp_path / "g.npz"))
    b = load_graph_files(write_folder(tmp_path / "g"))
    assert a.num_nodes == b.num_nodes == N and a.num_classes == 2 and a.num_features == 5
    assert (a.x - b.x).abs().max() < 1e-4 and a.y.equal(b.y) and a.edge_index.equal(b.edge_index)
    assert a.train_mask.equal(b.train_mask) and int(a.train_mask.sum()) == 20 and int(a.test_mask.sum()) == 10
    pairs = set(map(tuple, a.edge_index.T.tolist()))
    assert (0, 25) in pairs and (25, 0) in pairs and a.edge_index.shape[1] == 2 * (N + 1)  # both directions
    directed = load_graph_npz(tmp_path / "g.npz", undirected=False)
    assert directed.edge_index.shape[1] == N + 1
    x, y, e = communities()  # DGL style: g.edges() saved as src / dst, ndata names, integer index splits
    np.savez(tmp_path / "dgl.npz", feat=x, label=y, src=e[:, 0], dst=e[:, 1],
             **{f"{s}_idx": np.flatnonzero(m) for s, m in zip(("train", "val", "test"), masks().values())})
    c = load_graph_npz(tmp_path / "dgl.npz")
    assert c.edge_index.equal(a.edge_index) and c.val_mask.equal(a.val_mask)


def test_reader_errors_name_what_is_missing_or_wrong(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path: .*g\.npz: no labels array: expected one of \['y', 'label', "
                                          r"'labels'\]; its arrays: \['feat', 'edge_index'"):
        load_graph_npz(write_npz(tmp_path / "g.npz", label=True))
    with pytest.raises(ConfigError, match=r"has \['train_mask', 'test_mask'\] but no \['val_mask'\]"):
        load_graph_npz(write_npz(tmp_path / "g.npz", val_mask=True))
    folder = write_folder(tmp_path / "f")
    (folder / "edges.tsv").write_text("0\t1\n1\t40\n")
    with pytest.raises(ConfigError, match=r"edges\.tsv: line 2: edge 1 -> 40 names a node outside 0\.\.39"):
        load_graph_files(folder)
    (folder / "edges.tsv").unlink()
    with pytest.raises(ConfigError, match=r"no edge list: expected edges\.csv"):
        load_graph_files(folder)
    write_folder(folder)
    with pytest.raises(ConfigError, match=r"data\.label_column: no column 'class' in .*nodes\.csv; its columns"):
        load_graph_files(folder, label_column="class")
    write_folder(folder, labels_from=1)  # labels 1..2: refused as everywhere (data.integer_labels)
    with pytest.raises(ConfigError, match=r"integer labels must be 0\.\.K-1.*data\.integer_labels: names"):
        load_graph_files(folder)
    assert load_graph_files(folder, integer_labels="names").num_classes == 2


def test_random_split_without_masks(tmp_path, capsys):
    g = load_graph_files(write_folder(tmp_path / "f", split_column=False), random_split=(0.5, 0.25, 0.25))
    counts = [int(m.sum()) for m in (g.train_mask, g.val_mask, g.test_mask)]
    assert counts == [20, 10, 10] and not bool((g.train_mask & g.test_mask).any())
    assert "split at random [20, 10, 10]" in capsys.readouterr().err


def recipe(tmp_path: Path, data: dict, name: str, student: str, methods: list, teacher: dict | None = None) -> Path:
    raw = {"task": "graph_node_classification", "output_dir": str(tmp_path / name), "data": data,
           "student": {"arch": student, "options": {"hidden": 16, "num_layers": 2}}, "methods": methods,
           "train": {"optimizer": "adam", "lr": 0.05, "weight_decay": 0.0, "schedule": "constant", "epochs": 4,
                     "progress": False}}
    if teacher is not None:
        raw["teacher"] = teacher
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("fmt", ["npz", "files"])
def test_gnn_teacher_to_mlp_student_end_to_end(tmp_path, fmt, capsys):
    path = write_npz(tmp_path / "g.npz") if fmt == "npz" else write_folder(tmp_path / "g")
    data = {"format": fmt, "path": str(path), "train_on": "all"}
    assert main(["train", str(recipe(tmp_path, {**data, "train_on": "train"}, "gcn", "graph_gcn",
                                     [{"name": "ce"}]))]) == 0
    teacher = {"arch": "graph_gcn", "weights": str(tmp_path / "gcn" / "student.safetensors"),
               "options": {"hidden": 16, "num_layers": 2}}
    capsys.readouterr()
    assert main(["train", str(recipe(tmp_path, data, "mlp", "graph_mlp", [{"name": "glnn", "lam": 0.5}],
                                     teacher))]) == 0
    out = capsys.readouterr()
    teacher_eval = json.loads(next(ln for ln in out.err.splitlines() if ln.startswith('{"teacher_eval"')))
    assert set(teacher_eval["teacher_eval"]) == {"accuracy", "loss"}
    summary = json.loads((tmp_path / "mlp" / "summary.json").read_text())
    assert summary["steps"] == 4 and 0.0 <= summary["final"]["accuracy"] <= 1.0


def test_config_keys_of_the_formats(tmp_path):
    base = {"task": "graph_node_classification", "student": {"arch": "graph_mlp"}, "methods": [{"name": "ce"}]}
    write_npz(tmp_path / "g.npz")
    with pytest.raises(ConfigError, match=r"data\.random_split: .* must sum to 1"):
        parse_config({**base, "data": {"format": "npz", "path": "g.npz", "random_split": [0.5, 0.5, 0.5]}},
                     base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"data\.dataset: names a Planetoid graph"):
        parse_config({**base, "data": {"format": "npz", "path": "g.npz", "dataset": "pubmed"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"data\.split_seed: read with data\.format npz or files"):
        parse_config({**base, "data": {"path": ".", "split_seed": 1}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"data\.path: .*g\.npz is not a folder .*data\.format: npz"):
        build_experiment(parse_config({**base, "data": {"path": "g.npz"}}, base_dir=tmp_path), tmp_path / "r")
    x, y, e = communities()
    np.savez(tmp_path / "neg.npz", x=x - 5, y=y, edge_index=e.T)
    with pytest.raises(ConfigError, match=r"data\.normalize_features: .*negative"):
        build_experiment(parse_config({**base, "data": {"format": "npz", "path": "neg.npz",
                                                        "normalize_features": True}}, base_dir=tmp_path),
                         tmp_path / "r2")
