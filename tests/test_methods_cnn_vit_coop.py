"""CNN-ViT collaborative learning (classification variant): the selection masks, the DML special case on a hand
example, the stop-gradient on the teaching side, and gradients reaching the CNN, the ViT peer and the aligners."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TinyCNN, demo_subset

from distill.core.compose import Composite
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.methods.features.cnn_vit_coop import CnnVitCoop, bsd_masks, pixel_bsd, region_bsd, to_map
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule

#: one validated recipe line per method of this file (tests/test_config.py checks every method has one)
YAML_EXAMPLES = {"cnn_vit_coop": "{name: cnn_vit_coop, peer: vit_micro, input_tap: 'conv1:input', low: f1, high: f3, "
                                 "regions: 4, selection: reliable}"}


def test_identical_students_transfer_nothing():
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    s_cv, s_vc = bsd_masks(z, z.clone(), y)
    assert not s_cv.any() and not s_vc.any()
    assert pixel_bsd(z, z.clone(), s_cv, s_vc).item() == 0.0
    ones = torch.ones(6, dtype=torch.bool)
    assert pixel_bsd(z, z.clone(), ones, ones).item() == pytest.approx(0.0, abs=1e-7)


def test_masks_hand_case_and_swapping_roles_swaps_them():
    zc = torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 2.0]])
    zv = torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.0, 2.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 0, 0])
    s_cv, s_vc = bsd_masks(zc, zv, y)
    # row 0: both right, c surer -> c teaches; row 1: v surer -> v teaches; row 2: only c right; row 3: neither
    assert s_cv.tolist() == [True, False, True, False] and s_vc.tolist() == [False, True, False, False]
    s_vc2, s_cv2 = bsd_masks(zv, zc, y)
    assert torch.equal(s_cv2, s_cv) and torch.equal(s_vc2, s_vc)


def test_all_ones_masks_give_dml_hand_value():
    zc = torch.tensor([[math.log(3.0), 0.0]])  # p^c = (3/4, 1/4)
    zv = torch.tensor([[0.0, 0.0]])  # p^v = (1/2, 1/2)
    ones = torch.ones(1, dtype=torch.bool)
    kl_cv = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    kl_vc = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert pixel_bsd(zc, zv, ones, ones).item() == pytest.approx((kl_cv + kl_vc) / 2, abs=1e-6)


def test_teaching_side_gets_no_gradient():
    zc = torch.tensor([[3.0, 0.0]], requires_grad=True)
    zv = torch.tensor([[1.0, 0.0]], requires_grad=True)
    s_cv, s_vc = bsd_masks(zc, zv, torch.tensor([0]))
    assert s_cv.all() and not s_vc.any()
    pixel_bsd(zc, zv, s_cv, s_vc).backward()
    assert zv.grad.abs().sum() > 0 and (zc.grad is None or zc.grad.abs().sum() == 0)
    gc = torch.randn(1, 2, 4, 4, requires_grad=True)
    gv = torch.randn(1, 2, 4, 4, requires_grad=True)
    teach = torch.ones(1, 2, 2, dtype=torch.bool)  # the CNN teaches everywhere: only the ViT map learns
    region_bsd(gc, gv, teach, 2).backward()
    assert gv.grad.abs().sum() > 0 and (gc.grad is None or gc.grad.abs().sum() == 0)
    expected = (gv - gc).pow(2).mean().item()
    assert region_bsd(gc, gv, teach, 2).item() == pytest.approx(expected, rel=1e-5)


def test_to_map_drops_cls_token():
    t = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    m = to_map(t, 1)
    assert m.shape == (2, 3, 2, 2) and torch.equal(m[0, :, 1, 0], t[0, 3])


def test_gradients_reach_cnn_peer_and_aligners_and_peer_is_evaluated():
    torch.manual_seed(0)
    method = CnnVitCoop(peer="vit", peer_options={"dim": 32, "depth": 2, "heads": 2, "stages": 2},
                        input_tap="stage1:input", low="f1", high="f2", align_width=8, regions=2)
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    module = DistillModule(TinyCNN(8), Composite({"coop": method}), None, task)
    batch = task.prepare(task.fetch(demo_subset("train", 2), torch.arange(20)), train=True,
                         generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    loss, terms, _ = module(batch)
    assert {"coop.peer_ce", "coop.hfd", "coop.rbsd", "coop.pbsd"} <= set(terms)
    loss.backward()
    backbone = [p for n, p in module.student.named_parameters() if not n.startswith("head")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone)
    for part in (method.peer.patch_embed, method.a_c, method.a_v, method.b_c, method.b_v):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert any(k.startswith("methods.") and ".peer." in k for k in module.state_dict())
    groups = method.optimizer_overrides()
    assert len(groups[0][0]) == len(list(method.peer.parameters()))

    class Context:
        epoch, splits = 1, ("eval",)

        @staticmethod
        def student_outputs(split, taps):
            from distill.core.taps import FeatureTaps

            with torch.no_grad(), FeatureTaps(module.student, ["stage1:input"]).capture() as f:
                z = module.student(batch.inputs)
            from distill.core.outputs import ModelOutput

            yield batch, ModelOutput(z, {"stage1:input": f["stage1:input"]})

    method.total_epochs = 1
    method.after_epoch(Context())
    assert 0.0 <= method.peer_accuracy.item() <= 1.0


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="peer"):
        CnnVitCoop(peer="no_such_model")
    with pytest.raises(ValueError, match="regions"):
        CnnVitCoop(regions=0)


@pytest.mark.parametrize("arm", ["independent", "dml", "coop"])
def test_recipes_validate_without_teacher(arm):
    from pathlib import Path

    from distill.config import load_config
    from distill.experiment import build_methods

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "cifar10_coop" / f"{arm}.yaml")
    assert cfg.teacher is None
    coop = build_methods(cfg.methods).methods["cnn_vit_coop"]
    assert coop.peer_name == "vit_micro" and coop.input_tap == "conv1:input"
    on = {"independent": (0, 0, 0), "dml": (0, 0, 1), "coop": (1, 1, 1)}[arm]
    assert (coop.hfd_weight, coop.rbsd_weight, coop.pbsd_weight) == on
    assert coop.selection == ("all" if arm == "dml" else "reliable")
