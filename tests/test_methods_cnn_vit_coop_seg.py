"""CNN-ViT collaborative learning, segmentation variant (spec row 38 on TexMosaic): per-pixel masks and KL, the DML
special case on a hand-computed dense example, ignored pixels never selected, region teachers from per-pixel CE,
the stop-gradient on the teaching side, gradients reaching the CNN, the ViT peer and the aligners, the peer's mIoU,
the two models' shapes and the recipes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput
from distill.core.taps import FeatureTaps
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD
from distill.methods.features.cnn_vit_coop import (
    IGNORE_INDEX,
    CnnVitCoop,
    bsd_masks,
    pixel_bsd,
    region_bsd,
    region_teachers,
)
from distill.tasks.segmentation.models import seg_resnet20, seg_vit_micro
from distill.tasks.segmentation.task import SemanticSegmentation
from distill.train.module import DistillModule

REPO = Path(__file__).resolve().parents[1]


def test_identical_dense_students_transfer_nothing():
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    s_cv, s_vc = bsd_masks(z, z.clone(), y)
    assert s_cv.shape == (2, 4, 4) and not s_cv.any() and not s_vc.any()
    assert pixel_bsd(z, z.clone(), s_cv, s_vc).item() == 0.0
    every = y != IGNORE_INDEX
    assert pixel_bsd(z, z.clone(), every, every).item() == pytest.approx(0.0, abs=1e-7)


def test_dense_masks_hand_case_and_swapping_roles_swaps_them():
    # 4 pixels in a 2 x 2 map, 2 classes; logits per pixel (class 0, class 1)
    zc = torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 2.0]]).T.reshape(1, 2, 2, 2)
    zv = torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.0, 2.0], [0.0, 1.0]]).T.reshape(1, 2, 2, 2)
    y = torch.tensor([0, 1, 0, 0]).reshape(1, 2, 2)
    s_cv, s_vc = bsd_masks(zc, zv, y)
    # pixel 0: both right, c surer -> c teaches; 1: v surer -> v teaches; 2: only c right; 3: neither right
    assert s_cv.flatten().tolist() == [True, False, True, False]
    assert s_vc.flatten().tolist() == [False, True, False, False]
    s_vc2, s_cv2 = bsd_masks(zv, zc, y)
    assert torch.equal(s_cv2, s_cv) and torch.equal(s_vc2, s_vc)


def test_ignored_pixels_are_never_selected():
    zc = torch.tensor([[5.0, 0.0]] * 4).T.reshape(1, 2, 2, 2)  # the CNN sure of class 0 everywhere
    zv = torch.zeros(1, 2, 2, 2)
    y = torch.tensor([[0, IGNORE_INDEX], [IGNORE_INDEX, 0]])[None]
    s_cv, s_vc = bsd_masks(zc, zv, y)
    assert s_cv[0].tolist() == [[True, False], [False, True]] and not s_vc.any()
    y_all_ignored = torch.full_like(y, IGNORE_INDEX)
    assert not any(m.any() for m in bsd_masks(zc, zv, y_all_ignored))


def test_all_ones_masks_give_the_hand_dml_value_on_a_dense_case():
    # two pixels: (p^c, p^v) = ((3/4, 1/4), (1/2, 1/2)) and ((1/2, 1/2), (1/4, 3/4)); a third pixel is ignored
    zc = torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, 0.0, 7.0]]).reshape(1, 2, 1, 3)
    zv = torch.tensor([[0.0, 0.0, -4.0], [0.0, math.log(3.0), 1.0]]).reshape(1, 2, 1, 3)
    valid = torch.tensor([[[True, True, False]]])

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))

    pc = [(0.75, 0.25), (0.5, 0.5)]
    pv = [(0.5, 0.5), (0.25, 0.75)]
    expected = sum(kl(pc[i], pv[i]) + kl(pv[i], pc[i]) for i in range(2)) / 4
    assert pixel_bsd(zc, zv, valid, valid).item() == pytest.approx(expected, abs=1e-6)


def test_teaching_side_gets_no_gradient_dense():
    zc = torch.tensor([3.0, 0.0]).reshape(1, 2, 1, 1).requires_grad_()
    zv = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1).requires_grad_()
    s_cv, s_vc = bsd_masks(zc, zv, torch.zeros(1, 1, 1, dtype=torch.long))
    assert s_cv.all() and not s_vc.any()
    pixel_bsd(zc, zv, s_cv, s_vc).backward()
    assert zv.grad.abs().sum() > 0 and (zc.grad is None or zc.grad.abs().sum() == 0)


def test_region_teachers_from_mean_pixel_ce_and_empty_regions_left_out():
    lc = torch.zeros(1, 4, 4)
    lv = torch.zeros(1, 4, 4)
    lc[0, :2, :2], lv[0, :2, :2] = 0.1, 0.5  # top-left: CNN better -> CNN teaches
    lc[0, :2, 2:], lv[0, :2, 2:] = 0.9, 0.2  # top-right: ViT better
    lc[0, 2:, :2] = torch.tensor([[0.0, 2.0], [0.0, 0.0]])  # bottom-left: c's mean 0.5 (over 4) vs v's 0.4
    lv[0, 2:, :2] = 0.4
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 2:, 2:] = False  # bottom-right: no labelled pixel
    lc[0, 2:, 2:] = 99.0  # (ignored pixels carry no CE; any value there must not count)
    c_teaches, keep = region_teachers(lc, lv, valid, 2)
    assert c_teaches[0].tolist() == [[True, False], [False, False]]
    assert keep[0].tolist() == [[True, True], [True, False]]
    gc = torch.randn(1, 3, 4, 4, requires_grad=True)
    gv = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = region_bsd(gc, gv, c_teaches, 2, keep)
    per = (gc - gv).pow(2).mean(1)[0]
    expected = (per[:2, :2].mean() + per[:2, 2:].mean() + per[2:, :2].mean()) / 3  # bottom-right left out
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    # top-left: the ViT learns (CNN side detached); the other two kept regions: the CNN learns
    assert gv.grad[0, :, :2, :2].abs().sum() > 0 and gc.grad[0, :, :2, :2].abs().sum() == 0
    assert gc.grad[0, :, :2, 2:].abs().sum() > 0 and gv.grad[0, :, :2, 2:].abs().sum() == 0
    assert gc.grad[0, :, 2:, 2:].abs().sum() == 0 and gv.grad[0, :, 2:, 2:].abs().sum() == 0


def test_models_give_the_spec_shapes():
    x = torch.randn(2, 3, 64, 64)
    cnn, vit = seg_resnet20(num_classes=3), seg_vit_micro(num_classes=3)
    with FeatureTaps(cnn, ["layer3", "conv1:input"]).capture() as f:
        z = cnn(x)
    assert z.shape == (2, 3, 64, 64) and f["layer3"].shape == (2, 64, 16, 16)
    with FeatureTaps(vit, [vit.feature_taps["tokens"], vit.feature_taps["f1"]]).capture() as f:
        zv = vit(x)
    assert zv.shape == (2, 3, 64, 64) and f["norm"].shape == (2, 256, 96)  # 16 x 16 tokens, no cls token


def _batch(task: SemanticSegmentation, n: int = 4, size: int = 16) -> Batch:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = (x[:, 0].long() * 3 // 256)  # a label the image tells
    y[:, :2, :2] = IGNORE_INDEX
    return task.prepare(Batch(inputs=x, labels=y, indices=torch.arange(n), meta={}), train=True, generator=g)


def test_dense_gradients_reach_both_students_and_the_aligners_and_peer_miou_is_measured():
    torch.manual_seed(0)
    method = CnnVitCoop(peer="seg_vit_micro", peer_options={"image_size": 16}, input_tap="conv1:input", low="f1",
                        high="f3", peer_high="tokens", align_width=8, regions=2)
    task = SemanticSegmentation(IMAGENET_MEAN, IMAGENET_STD, num_classes=3)
    module = DistillModule(seg_resnet20(num_classes=3), Composite({"coop": method}), None, task)
    batch = _batch(task)
    module.setup(batch)
    assert method.dense and method.peer.dense
    loss, terms, _ = module(batch)
    assert {"coop.peer_ce", "coop.hfd", "coop.rbsd", "coop.pbsd"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    for part in (method.peer.patch_embed, method.peer.head, method.a_c, method.a_v):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())

    def learns(m):  # an rBSD aligner learns only in regions where its own student is the learner
        return m.weight.grad is not None and m.weight.grad.abs().sum() > 0

    c1, v1 = method.last_regions  # the fraction of kept regions where the CNN / the ViT teaches
    assert learns(method.b_c) == (v1 > 0) and learns(method.b_v) == (c1 > 0) and c1 + v1 == pytest.approx(1.0)
    assert method.selected[2] == 1 and 0 <= method.selected[0] + method.selected[1] <= 1

    class Context:
        epoch, splits = 1, ("eval",)

        @staticmethod
        def student_outputs(split, taps):
            with torch.no_grad(), FeatureTaps(module.student, ["conv1:input"]).capture() as f:
                z = module.student(batch.inputs)
            yield batch, ModelOutput(z, {"conv1:input": f["conv1:input"]})

    method.total_epochs = 1
    method.after_epoch(Context())
    assert 0.0 <= method.peer_miou.item() <= 1.0 and method.peer_accuracy.item() == -1.0


def test_dml_selection_on_dense_skips_ignored_pixels_only():
    torch.manual_seed(0)
    method = CnnVitCoop(peer="seg_vit_micro", peer_options={"image_size": 16}, input_tap="conv1:input",
                        peer_high="tokens", hfd_weight=0.0, rbsd_weight=0.0, selection="all")
    task = SemanticSegmentation(IMAGENET_MEAN, IMAGENET_STD, num_classes=3)
    module = DistillModule(seg_resnet20(num_classes=3), Composite({"coop": method}), None, task)
    batch = _batch(task)
    module.setup(batch)
    _, terms, _ = module(batch)
    assert set(terms) >= {"coop.peer_ce", "coop.pbsd"} and "coop.hfd" not in terms
    assert method.selected[0] == method.selected[1] == 1.0  # every labelled pixel both ways, none ignored


def test_a_classification_peer_for_a_dense_student_is_refused_naming_it():
    method = CnnVitCoop(peer="vit_micro", input_tap="conv1:input")
    task = SemanticSegmentation(IMAGENET_MEAN, IMAGENET_STD, num_classes=3)
    module = DistillModule(seg_resnet20(num_classes=3), Composite({"coop": method}), None, task)
    with pytest.raises(ValueError, match="vit_micro.*segmentation"):
        module.setup(_batch(task))


@pytest.mark.parametrize("arm", ["independent", "dml", "coop", "pbsd", "bsd"])
def test_segmentation_recipes_validate_with_equal_schedules(arm):
    from distill.config import load_config
    from distill.experiment import build_methods

    cfg = load_config(REPO / "configs" / "segmentation_coop" / f"{arm}.yaml")
    mit = load_config(REPO / "configs" / "segmentation" / "mit_ce.yaml")
    assert cfg.teacher is None and cfg.task == "semantic_segmentation" and cfg.student.arch == "seg_resnet20"
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.texmosaic) == (mit.train.epochs, mit.train.batch_size,
                                                                            mit.data.texmosaic)
    coop = build_methods(cfg.methods).methods["cnn_vit_coop"]
    assert coop.peer_name == "seg_vit_micro" and coop.input_tap == "conv1:input" and coop.peer_high == "tokens"
    on = {"independent": (0, 0, 0), "dml": (0, 0, 1), "coop": (1, 1, 1), "pbsd": (0, 0, 1), "bsd": (0, 1, 1)}[arm]
    assert (coop.hfd_weight, coop.rbsd_weight, coop.pbsd_weight) == on
    assert coop.selection == ("all" if arm == "dml" else "reliable")
