"""TransKD: HCL levels and weights by hand, SK weights summing to one, no fusion at the deepest stage, PEA shapes,
EA's learnable weights, and gradients reaching the student and the method's modules but never the teacher."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.core.taps import FeatureTaps
from distill.methods.dense.transkd import CSFBlock, TransKD
from distill.methods.features.reviewkd import hcl
from distill.tasks.segmentation.models import MiniMiT

YAML_EXAMPLES = {"transkd": "{name: transkd, variant: base}"}


def tiny(widths: tuple[int, ...]) -> MiniMiT:
    return MiniMiT(3, widths, (1, 1, 1, 1), (1, 1, 1, 1), (4, 2, 2, 1), decoder=16)


def run_models(student: MiniMiT, teacher: MiniMiT, method: TransKD, x: torch.Tensor):
    with FeatureTaps(student, method.student_taps()).capture() as fs:
        ys = student(x)
    with FeatureTaps(teacher, method.teacher_taps()).capture() as ft:
        yt = teacher(x)
    return ModelOutput(ys, dict(fs)), ModelOutput(yt, dict(ft))


def test_hcl_at_height_4_uses_levels_2_and_1_with_weights_half_and_quarter() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    p = F.adaptive_avg_pool2d
    expected = (F.mse_loss(s, t) + 0.5 * F.mse_loss(p(s, 2), p(t, 2)) + 0.25 * F.mse_loss(p(s, 1), p(t, 1))) / 1.75
    assert math.isclose(float(hcl(s, t)), float(expected), rel_tol=1e-6)
    assert float(hcl(s, s.clone())) == 0.0


def test_sk_weights_sum_to_one_per_channel_and_the_deepest_stage_does_not_fuse() -> None:
    torch.manual_seed(0)
    block = CSFBlock(8, 64, 16, fuse=True)
    u, y = torch.randn(3, 64, 4, 4), torch.randn(3, 64, 4, 4)
    att = block.attention(u, y)
    assert att.shape == (3, 2, 64, 1, 1) and torch.allclose(att.sum(1), torch.ones(3, 64, 1, 1))
    student, teacher = tiny((8, 16, 24, 32)), tiny((16, 32, 48, 64))
    m = TransKD()
    s, t = run_models(student, teacher, m, torch.randn(2, 3, 32, 32))
    m.setup(s, t, RunInfo())
    assert [b.fuse for b in m.csf] == [True, True, True, False]
    assert not hasattr(m.csf[3], "fc")
    outs = m.fused(s)
    assert [tuple(o.shape[1:]) for o in outs] == [tuple(t.feature(n).shape[1:]) for n in m.t_stages]
    pea = m.embeddings(s)
    assert [tuple(e.shape) for e in pea] == [tuple(t.feature(n).shape) for n in m.t_embeds]  # B x N_i x C^T_i


@pytest.mark.parametrize("variant", ["base", "gl", "ea"])
def test_gradients_reach_student_and_method_never_teacher(variant: str) -> None:
    torch.manual_seed(0)
    student, teacher = tiny((8, 16, 24, 32)), tiny((16, 32, 48, 64))
    m = TransKD(variant=variant)
    x = torch.randn(2, 3, 32, 32)
    s, t = run_models(student, teacher, m, x)
    m.setup(s, t, RunInfo())
    if variant == "ea":
        assert torch.allclose(m.omega.detach(), torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]))
    terms = m(StepInputs(s, t, None))
    assert set(terms) == {"csf", "pea"} and all(float(v.detach()) > 0 for v in terms.values())
    sum(terms.values()).backward()
    assert student.stages[0].patch_embed.proj.weight.grad is not None
    assert student.stages[3].blocks[0].attn.q.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in m.pea.parameters())
    if variant == "gl":
        assert m.gl.a.grad is not None and m.gl.c.grad is not None
        assert float(m.gl.a.detach()) == 1.0 and float(m.gl.c.detach()) == 1.0
    if variant == "ea":
        assert m.omega.grad is not None and bool((m.omega.grad != 0).all())


def test_pea_hand_case_with_identity_maps() -> None:
    """Student = teacher widths, Lin_i set to identity: L_PEA = sum_i w_i MSE(e_i, e^T_i) by hand."""
    torch.manual_seed(0)
    net = tiny((8, 16, 24, 32))
    m = TransKD()
    s, _ = run_models(net, net, m, torch.randn(2, 3, 32, 32))
    t = ModelOutput(s.logits, {k: v + 1.0 for k, v in s.features.items()})  # every teacher value shifted by 1
    m.setup(s, t, RunInfo())
    for lin in m.pea:
        torch.nn.init.eye_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    pea = m(StepInputs(s, t, None))["pea"].detach()
    assert math.isclose(float(pea), 0.1 + 0.1 + 0.5 + 1.0, rel_tol=1e-5)  # every MSE is 1


def test_mismatched_grids_are_refused() -> None:
    student, teacher = tiny((8, 16, 24, 32)), MiniMiT(3, (16, 32, 48, 64), (1, 1, 1, 1), (1, 1, 1, 1),
                                                       (1, 1, 1, 1), strides=(2, 2, 2, 2), decoder=16)
    m = TransKD()
    s, t = run_models(student, teacher, m, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="same H x W"):
        m.setup(s, t, RunInfo())
    with pytest.raises(ValueError, match="variant"):
        TransKD(variant="nope")  # type: ignore[arg-type]
