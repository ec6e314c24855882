"""ACAM-KD (reconstructed): the masked losses and the Dice diversity against hand-computed values, the cross-attention
rows, and gradients that reach the student and the method's own parameters but never the teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers import TinyCNN, demo_subset

from distill.config import load_raw, parse_config
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.experiment import build_methods
from distill.methods.dense.acam_kd import (
    ACAMKD,
    ACAMHead,
    acam_terms,
    cross_attention,
    dice_diversity,
    mask_dice,
    masked_channel_loss,
    masked_spatial_loss,
)
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule

REPO = Path(__file__).resolve().parents[1]
#: one validated recipe line per method of this file (tests/test_config.py checks every method has one)
YAML_EXAMPLES = {"acam_kd": "{name: acam_kd, student: f3, teacher: f3, num_masks: 6, qk_ratio: 2, alpha: 100.0, "
                            "beta: 1.0}"}


def test_attention_rows_sum_to_one():
    torch.manual_seed(0)
    att = cross_attention(torch.randn(2, 4, 9), torch.randn(2, 4, 9))
    assert att.shape == (2, 9, 9)
    assert torch.allclose(att.sum(-1), torch.ones(2, 9), atol=1e-6)


def test_all_ones_masks_give_the_plain_mean_squared_error():
    # D over C = 2 channels, HW = 3 positions: mean = (1+4+0+9+1+3) / 6 = 3
    d = torch.tensor([[[1.0, 4.0, 0.0], [9.0, 1.0, 3.0]]])
    assert masked_channel_loss(d, torch.ones(1, 4, 2)).item() == pytest.approx(3.0)
    assert masked_spatial_loss(d, torch.ones(1, 4, 3)).item() == pytest.approx(3.0)


def test_masked_losses_on_a_hand_case():
    d = torch.tensor([[[1.0, 4.0, 0.0], [9.0, 1.0, 3.0]]])  # channel sums (5, 13), position sums (10, 5, 3)
    # one channel mask (1, 0): 5 / (3 * 1); a second (0.5, 0.5): (2.5 + 6.5) / (3 * 1) = 3 -> mean (5/3 + 3) / 2
    ch = masked_channel_loss(d, torch.tensor([[[1.0, 0.0], [0.5, 0.5]]]))
    assert ch.item() == pytest.approx((5 / 3 + 3.0) / 2)
    # spatial mask (1, 1, 0): (10 + 5) / (2 * 2) = 3.75
    sp = masked_spatial_loss(d, torch.tensor([[[1.0, 1.0, 0.0]]]))
    assert sp.item() == pytest.approx(3.75)
    # saturated (all-zero) masks give a finite loss, not 0/0
    assert torch.isfinite(masked_spatial_loss(d, torch.zeros(1, 1, 3)))
    # scaling a mask changes nothing (the mask-sum normaliser)
    assert masked_spatial_loss(d, torch.tensor([[[0.2, 0.2, 0.0]]])).item() == pytest.approx(3.75)


def test_dice_is_one_for_identical_and_zero_for_disjoint_masks():
    same = torch.tensor([[[0.3, 0.7, 0.1], [0.3, 0.7, 0.1]]])
    assert dice_diversity(same).item() == pytest.approx(1.0, abs=1e-6)
    disjoint = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    assert dice_diversity(disjoint).item() == pytest.approx(0.0, abs=1e-7)
    # (1, 1, 0) vs (1, 0, 0): 2 * 1 / (2 + 1) = 2/3
    assert dice_diversity(torch.tensor([[[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])).item() == pytest.approx(2 / 3)
    assert mask_dice(same, same).item() == pytest.approx(1.0, abs=1e-6)


def test_identical_features_give_zero_mask_loss():
    torch.manual_seed(0)
    t = torch.randn(2, 8, 4, 4)
    head = ACAMHead(8, 8, num_masks=3, student_size=4, size=4)
    assert head(t, t)[0].shape == t.shape  # the adapter: FitNet's 1x1 regressor (conv, BN, ReLU)
    channel, spatial = head.masks(head.fuse(t, t)[0])  # a student already equal to the teacher after phi
    assert channel.shape == (2, 3, 8) and spatial.shape == (2, 3, 16)
    terms = acam_terms(t, t, channel, spatial)
    assert terms["ch"].item() == pytest.approx(0.0, abs=1e-10) and terms["sp"].item() == pytest.approx(0.0, abs=1e-10)
    assert 0.0 < terms["div"].item() <= 2.0


def test_bad_options_are_refused_with_their_name():
    for kwargs, key in [({"num_masks": 0}, "num_masks"), ({"qk_ratio": 0}, "qk_ratio"), ({"alpha": -1.0}, "alpha"),
                        ({"channel_units": "matrix"}, "channel_units"), ({"probe_images": -1}, "probe_images")]:
        with pytest.raises(ValueError, match=key):
            ACAMKD(**kwargs)
    raw = load_raw(REPO / "configs" / "acam_kd" / "acam.yaml")
    raw["methods"][1]["masks"] = 4
    with pytest.raises(ValueError, match="masks"):
        parse_config(raw, base_dir=str(REPO / "configs" / "acam_kd"))


@pytest.mark.parametrize("detach_kv", [False, True])
def test_gradients_reach_student_and_selection_units_never_teacher(detach_kv):
    torch.manual_seed(0)
    method = ACAMKD(student="f2", teacher="f2", num_masks=4, alpha=10.0, detach_student_kv=detach_kv,
                    probe_images=0)
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    module = DistillModule(TinyCNN(8), Composite({"acam_kd": method}), FrozenTeacher(TinyCNN(16)), task)
    batch = task.prepare(task.fetch(demo_subset("train", 2), torch.arange(20)), train=True,
                         generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    loss, terms, _ = module(batch)
    assert set(terms) == {"acam_kd.mask", "acam_kd.div"} and loss.item() > 0
    loss.backward()
    grads = {n: p.grad for n, p in module.student.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())
    head = method.head
    for p in (head.channel_units, head.spatial_units, head.q.weight, head.adapter[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in module.teacher.model.parameters())
    assert any(".head.spatial_units" in k for k in module.state_dict())
    assert 0 < float(method.mask_entropy) <= 0.7


def test_probe_masks_record_the_first_epoch_and_compare_later_ones():
    torch.manual_seed(0)
    method = ACAMKD(num_masks=2, probe_images=4)
    s, t = torch.randn(4, 8, 3, 3), torch.randn(4, 16, 3, 3)
    method.setup(ModelOutput(torch.randn(4, 10), {"f3": s}), ModelOutput(torch.randn(4, 10), {"f3": t}), RunInfo())

    class Ctx:
        epoch, splits = 1, ("eval",)

        @staticmethod
        def student_outputs(split, taps):
            yield None, ModelOutput(torch.zeros(4, 10), {"f3": s})

        @staticmethod
        def teacher_outputs(split, taps):
            yield None, ModelOutput(torch.zeros(4, 10), {"f3": t})

    method.after_epoch(Ctx())
    assert float(method.mask_dice_first) == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        method.head.spatial_units.mul_(-5.0)
        method.head.channel_units.mul_(-5.0)
    method.after_epoch(Ctx())
    assert float(method.mask_dice_first) < 0.99
    terms = method(StepInputs(ModelOutput(torch.zeros(4, 10), {"f3": s}), ModelOutput(torch.zeros(4, 10), {"f3": t}),
                              torch.zeros(4, dtype=torch.long)))
    assert all(torch.isfinite(v) for v in terms.values())


@pytest.mark.parametrize("arm", ["scratch", "kd", "fitnet", "acam"])
def test_recipes_validate(arm):
    raw = load_raw(REPO / "configs" / "acam_kd" / f"{arm}.yaml")
    cfg = parse_config(raw, base_dir=str(REPO / "configs" / "acam_kd"))
    comp = build_methods(cfg.methods)
    assert cfg.train.epochs == 8 and cfg.data.train_per_class == 100
    if arm == "acam":
        m = comp.methods["acam_kd"]
        assert (m.student_feature, m.teacher_feature, m.num_masks, m.alpha) == ("f3", "f3", 6, 100.0)
    assert yaml.safe_load((REPO / "configs" / "acam_kd" / f"{arm}.yaml").read_text())["base"] == "_base.yaml"
