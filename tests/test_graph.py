"""The graph task: offline Planetoid loading, the node-classification adapter with the trainer, the YAML route,
and the unlearning metrics."""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("torch_geometric")

from conftest import shared_path  # noqa: E402

from distill.core.compose import Composite  # noqa: E402
from distill.data.planetoid import GraphData, load_planetoid  # noqa: E402
from distill.graph.node import graph_train_config, train_node_classifier  # noqa: E402
from distill.methods.graph_kd import FFG2M  # noqa: E402
from distill.methods.logits import CrossEntropy  # noqa: E402
from distill.models.gnn import graph_gat, graph_gcn, graph_mlp, graph_sage  # noqa: E402
from distill.pipelines.graph_unlearning import auroc, choose_deleted, df_auroc, link_split  # noqa: E402
from distill.tasks.graph import UNLABELED, GraphNodeClassification, GraphNodes  # noqa: E402


def test_cora_loads_offline_with_the_public_split(tmp_path):
    raw = shared_path("data", "planetoid")
    g = load_planetoid(raw, "cora")
    assert (g.num_nodes, g.num_features, g.num_classes) == (2708, 1433, 7)
    assert g.edge_index.shape[1] == 10556 and bool((g.edge_index[0] != g.edge_index[1]).all())
    assert [int(m.sum()) for m in (g.train_mask, g.val_mask, g.test_mask)] == [140, 500, 1000]
    # torch_geometric's layout root/Cora/raw works too, and a missing file is named
    layout = tmp_path / "Cora" / "raw"
    layout.mkdir(parents=True)
    for f in raw.glob("ind.cora.*"):
        shutil.copy(f, layout / f.name)
    assert torch.equal(load_planetoid(tmp_path, "Cora").y, g.y)
    (layout / "ind.cora.tx").unlink()
    with pytest.raises(FileNotFoundError, match=r"ind\.cora\.tx"):
        load_planetoid(tmp_path, "cora")
    with pytest.raises(ValueError, match="unknown Planetoid"):
        load_planetoid(tmp_path, "reddit")


def two_communities(n: int = 40, seed: int = 0) -> GraphData:
    """Two dense communities; features carry a weak class signal, the graph a strong one."""
    gen = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) >= n // 2).long()
    src, dst = [], []
    for i in range(n):
        for j in range(i + 1, n):
            p = 0.3 if y[i] == y[j] else 0.01
            if torch.rand(1, generator=gen).item() < p:
                src += [i, j]
                dst += [j, i]
    x = torch.rand(n, 6, generator=gen)
    x[:, 0] += 0.3 * y
    perm = torch.randperm(n, generator=gen)
    train = torch.zeros(n, dtype=torch.bool)
    train[perm[:8]] = True
    val = torch.zeros(n, dtype=torch.bool)
    val[perm[8:16]] = True
    return GraphData(x, torch.tensor([src, dst]), y, train, val, ~(train | val))


def test_task_selects_the_batch_nodes_and_hides_labels():
    g = two_communities()
    task = GraphNodeClassification(g)
    data = GraphNodes.split(g, "all", labelled_split="train")
    idx = torch.tensor([3, 0, 7])
    batch = task.fetch(data, idx)
    nodes = data.nodes[idx]
    assert torch.equal(batch.indices, nodes)
    want = torch.where(g.train_mask[nodes], g.y[nodes], torch.full_like(nodes, UNLABELED))
    assert torch.equal(batch.labels, want)
    model = graph_gcn(6, 2, hidden=8).eval()
    assert torch.allclose(task.forward(model, batch), model(g.x, g.edge_index)[nodes])
    metrics = task.new_metrics()
    metrics.update(task.forward(model, batch), batch)
    assert metrics.n == int(g.train_mask[nodes].sum())


def test_sparse_feature_path_matches_dense_for_every_model():
    g = two_communities()
    for make in (graph_mlp, graph_gcn, graph_gat):
        model = make(6, 2, hidden=8, num_layers=2).eval()
        sparse = model(g.x, g.edge_index)
        model.sparse_input = False
        assert torch.allclose(model(g.x, g.edge_index), sparse, atol=1e-5), make.__name__
    sage = graph_sage(6, 2, hidden=8, num_layers=2)
    assert not sage.sparse_input and sage(g.x, g.edge_index).shape == (g.num_nodes, 2)


def test_trainer_trains_a_gcn_teacher_then_an_ffg2m_student(tmp_path):
    torch.manual_seed(0)
    g = two_communities()
    teacher = graph_gcn(6, 2, hidden=16, num_layers=2)
    cfg = graph_train_config(0, epochs=15, patience=15, lr=0.05)
    run = train_node_classifier(g, teacher, Composite({"ce": CrossEntropy()}), cfg, tmp_path / "t")
    assert run.test_accuracy >= 0.8  # the graph separates the communities
    student = graph_mlp(6, 2, hidden=16, num_layers=2)
    srun = train_node_classifier(g, student, Composite({"ffg2m": FFG2M(lam=0.4)}),
                                 graph_train_config(0, epochs=4, patience=4), tmp_path / "s",
                                 teacher=teacher, train_on="all")
    assert 0.0 <= srun.test_accuracy <= 1.0 and srun.epochs >= 1
    assert (tmp_path / "s" / "best" / "student.safetensors").exists()


def test_yaml_graph_task_builds_and_rejects_mismatched_models(tmp_path):
    from distill.config import ConfigError, parse_config
    from distill.experiment import build_experiment

    raw = {"task": "graph_node_classification",
           "data": {"path": str(shared_path("data", "planetoid")), "dataset": "cora", "train_on": "all"},
           "student": {"arch": "graph_mlp", "options": {"hidden": 16, "num_layers": 2}},
           "teacher": {"arch": "graph_gcn", "weights": "random", "options": {"hidden": 16, "num_layers": 2}},
           "methods": [{"name": "ffg2m", "lam": 0.4, "tau": 1.5}],
           "train": {"optimizer": "adam", "lr": 0.01, "schedule": "constant", "epochs": 1}}
    exp = build_experiment(parse_config(raw), tmp_path)
    assert exp.trainer.cfg.batch_size == 2708 and isinstance(exp.task, GraphNodeClassification)
    assert len(exp.eval_data) == 1000 and len(exp.trainer.eval_data) == 500  # test reported, val selects
    bad = dict(raw, student={"arch": "resnet20"})
    with pytest.raises(ConfigError, match="student.arch"):
        parse_config(bad)


def test_auroc_and_df_auroc():
    assert auroc(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 1, 0])) == 1.0
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.5
    gen = torch.Generator().manual_seed(0)
    # every deleted score below every retained score -> 1.0
    assert df_auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.6, 0.7, 0.9]), 20, gen) == 1.0


def test_link_split_and_deletion_settings():
    g = two_communities(60)
    split = link_split(g, seed=0)
    assert split.test_pos.shape[1] > 0 and split.train.shape[1] > split.test_pos.shape[1]
    mask = choose_deleted(split, 0.1, "random", 0)
    assert int(mask.sum()) == round(0.1 * split.train.shape[1])
    from torch_geometric.utils import k_hop_subgraph

    with pytest.raises(ValueError, match="no training edge lies outside"):  # dense toy graph: all near a test edge
        choose_deleted(split, 0.05, "out", 0)
    g = load_planetoid(shared_path("data", "planetoid"))
    split = link_split(g, seed=0)
    out = choose_deleted(split, 0.05, "out", 0)
    near = k_hop_subgraph(split.test_pos.flatten().unique(), 2, torch.cat([split.train, split.train.flip(0)], 1),
                          num_nodes=g.num_nodes)[0]
    inside = torch.zeros(g.num_nodes, dtype=torch.bool)
    inside[near] = True
    u, v = split.train[:, out]
    assert int(out.sum()) >= 1 and not bool((inside[u] & inside[v]).any())
    everything = choose_deleted(split, 0.9, "out", 0)  # fewer 'out' edges than asked: all of them are taken
    assert int(everything.sum()) == int((~(inside[split.train[0]] & inside[split.train[1]])).sum())
    with pytest.raises(ValueError, match="unknown deletion"):
        choose_deleted(split, 0.1, "inside", 0)
