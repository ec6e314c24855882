"""FF-G2M, GLNN and D2DGN: maths on hand-computed values, invariances, gradient flow, YAML examples."""

from __future__ import annotations

import math

import pytest
import torch

from distill.core.compose import Composite
from distill.core.method import METHODS
from distill.core.outputs import ModelOutput, StepInputs
from distill.methods.graph_kd import D2DGN, FFG2M, GLNN, batch_edges, hfd_loss, lfd_loss

pytest.importorskip("torch_geometric")

YAML_EXAMPLES = {
    "ffg2m": "{name: ffg2m, lam: 0.4, tau: 1.5}",
    "glnn": "{name: glnn, lam: 0.4, temperature: 1.0}",
    "d2dgn": "{name: d2dgn, alpha: 0.5}",
}

# a 3-node path 0 - 1 - 2, both directions
PATH = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
ZS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
ZT = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])


def softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_lfd_and_hfd_match_hand_computed_values_on_a_path():
    pairs = [(0, 1), (1, 0), (1, 2), (2, 1), (0, 0), (1, 1), (2, 2)]  # E_L: 4 edges + 3 self-loops
    want_lfd = sum(kl(softmax(ZT[j].tolist()), softmax(ZS[i].tolist())) for i, j in pairs) / 7
    assert lfd_loss(ZS, ZT, PATH).item() == pytest.approx(want_lfd, rel=1e-5)
    tau = 1.5
    want_hfd = 0.0
    for i, j in pairs[:4]:  # E_H: the 4 directed edges
        dt = [abs(a - b) / tau for a, b in zip(ZT[i].tolist(), ZT[j].tolist())]
        ds = [abs(a - b) / tau for a, b in zip(ZS[i].tolist(), ZS[j].tolist())]
        want_hfd += kl(softmax(dt), softmax(ds)) / 4
    assert hfd_loss(ZS, ZT, PATH, tau).item() == pytest.approx(want_hfd, rel=1e-5)


def test_ffg2m_combines_ce_and_the_two_terms_with_lambda():
    method = FFG2M(lam=0.3, tau=1.5)
    method.set_graph(PATH, 3)
    labels = torch.tensor([1, -100, -100])  # only node 0 labelled
    terms = method(StepInputs(ModelOutput(ZS), ModelOutput(ZT), labels, indices=torch.arange(3)))
    ce = -math.log(softmax(ZS[0].tolist())[1])
    assert terms["ce"].item() == pytest.approx(0.3 * ce, rel=1e-5)
    assert terms["lfd"].item() == pytest.approx(0.7 * lfd_loss(ZS, ZT, PATH).item(), rel=1e-6)
    assert terms["hfd"].item() == pytest.approx(0.7 * hfd_loss(ZS, ZT, PATH, 1.5).item(), rel=1e-6)


def test_lfd_on_self_loops_only_is_the_glnn_kd_term():
    no_edges = torch.zeros(2, 0, dtype=torch.long)
    glnn = GLNN(lam=0.0)
    terms = glnn(StepInputs(ModelOutput(ZS), ModelOutput(ZT), torch.full((3,), -100)))
    assert terms["kd"].item() == pytest.approx(lfd_loss(ZS, ZT, no_edges).item(), rel=1e-6)
    assert terms["ce"].item() == 0.0


def test_hfd_invariances():
    torch.manual_seed(0)
    zs, zt = torch.randn(3, 4), torch.randn(3, 4)
    base = hfd_loss(zs, zt, PATH, 1.2)
    assert hfd_loss(zs + torch.randn(1, 4), zt, PATH, 1.2).item() == pytest.approx(base.item(), rel=1e-5)
    # an edge between identical teacher logits gives a uniform target distribution
    same = torch.tensor([[0.5, 2.0, -1.0], [0.5, 2.0, -1.0]])
    student = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    edge = torch.tensor([[0], [1]])
    d = [abs(a - b) / 1.0 for a, b in zip(student[0].tolist(), student[1].tolist())]
    want = kl([1 / 3] * 3, softmax(d))
    assert hfd_loss(student, same, edge, 1.0).item() == pytest.approx(want, rel=1e-5)


def test_batch_edges_keeps_edges_inside_the_batch_in_row_positions():
    nodes = torch.tensor([2, 1])  # node 0 left out; rows: node 2 -> 0, node 1 -> 1
    got = batch_edges(PATH, nodes, 3)
    assert sorted(map(tuple, got.t().tolist())) == [(0, 1), (1, 0)]


def test_d2dgn_binary_kl_with_clamp_and_routing():
    eps = 1e-5
    zt = torch.tensor([100.0, 0.0])  # sigma(100) clamps to 1 - eps
    zs = torch.tensor([0.0, 0.0])
    forget = torch.tensor([False, True])
    terms = D2DGN(alpha=0.25)(StepInputs(ModelOutput(zs), ModelOutput(zt, {"forget": forget}), None))
    p = 1 - eps
    want_r = p * math.log(p / 0.5) + eps * math.log(eps / 0.5)
    assert terms["retain"].item() == pytest.approx(0.25 * want_r, rel=1e-4)
    assert terms["forget"].item() == pytest.approx(0.0, abs=1e-7)  # student equals the destroyer's row


def test_d2dgn_zero_when_student_copies_each_teacher_and_node_variant():
    torch.manual_seed(1)
    preserver, destroyer = torch.randn(6, 3), torch.randn(6, 3)
    forget = torch.tensor([0, 0, 1, 0, 1, 1]).bool()
    routed = torch.where(forget[:, None], destroyer, preserver)
    method = D2DGN()
    on_p = method(StepInputs(ModelOutput(preserver), ModelOutput(routed, {"forget": forget}), None))
    assert on_p["retain"].item() == pytest.approx(0.0, abs=1e-6) and on_p["forget"].item() > 0
    on_d = method(StepInputs(ModelOutput(destroyer), ModelOutput(routed, {"forget": forget}), None))
    assert on_d["forget"].item() == pytest.approx(0.0, abs=1e-6) and on_d["retain"].item() > 0


def test_gradients_reach_the_student_never_the_teacher():
    from distill.core.teachers import FrozenTeacher
    from distill.data.planetoid import GraphData
    from distill.models.gnn import graph_gcn, graph_mlp
    from distill.tasks.graph import GraphNodeClassification, GraphNodes
    from distill.train.module import DistillModule

    torch.manual_seed(0)
    n = 8
    edges = torch.tensor([[i, (i + 1) % n] for i in range(n)]).t()
    graph = GraphData(torch.rand(n, 5), torch.cat([edges, edges.flip(0)], 1), torch.arange(n) % 2,
                      torch.arange(n) < 4, torch.arange(n) >= 4, torch.arange(n) >= 4)
    task = GraphNodeClassification(graph)
    data = GraphNodes.split(graph, "all", labelled_split="train")
    for method in (FFG2M(), GLNN()):
        student, teacher = graph_mlp(5, 2, hidden=8), graph_gcn(5, 2, hidden=8)
        module = DistillModule(student, Composite({"m": method}), FrozenTeacher(teacher), task)
        batch = task.fetch(data, torch.arange(n))
        from distill.core.outputs import RunInfo

        module.setup(batch, RunInfo(num_train_examples=n, batch_size=n, student=student, task=task))
        loss, terms, _ = module(batch)
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
        assert all(p.grad is None for p in teacher.parameters())
        assert "m.ce" in terms and len(terms) >= 2


def test_d2dgn_gradient_flow_through_a_link_student():
    from distill.graph.unlearning import LinkGCN

    torch.manual_seed(0)
    x = torch.rand(6, 4)
    mp = torch.tensor([[0, 1, 2, 3, 1, 2, 3, 4], [1, 2, 3, 4, 0, 1, 2, 3]])
    pairs = torch.tensor([[0, 1, 4], [1, 2, 5]])
    student, teacher = LinkGCN(4, 8, 4), LinkGCN(4, 8, 4)
    with torch.no_grad():
        zt = teacher.score(teacher(x, mp), pairs)
    scores = student.score(student(x, mp), pairs)
    terms = D2DGN()(StepInputs(ModelOutput(scores), ModelOutput(zt, {"forget": torch.tensor([0, 0, 1]).bool()}),
                               None))
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_registered_with_provenance_and_bad_options():
    assert METHODS.entry("ffg2m").provenance.arxiv == "2305.10758"
    assert METHODS.entry("glnn").provenance.arxiv == "2110.08727"
    assert METHODS.entry("d2dgn").provenance.arxiv == "2309.16173"
    with pytest.raises(ValueError, match="lam"):
        FFG2M(lam=1.5)
    with pytest.raises(ValueError, match="graph task"):
        FFG2M().setup(ModelOutput(ZS), ModelOutput(ZT), __import__("distill.core.outputs").core.outputs.RunInfo())
