"""ORTrack (row 1): the Cox block-mask sampler's statistics, ORR's stop-gradient invariance, AFKD's weights and loss on
the spec's hand case, and gradients (student yes, teacher never)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TinyCNN, demo_subset

from distill.config import load_raw, parse_config
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.experiment import build_methods
from distill.methods.augmentation.cox_block_mask import CoxBlockMask, base_intensity, cox_masks
from distill.methods.features.afkd import AFKD, afkd_loss, afkd_weights
from distill.methods.features.orr_invariance import ORRInvariance
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "ortrack"
#: one validated recipe line per method of this file (tests/test_config.py checks every method has one)
YAML_EXAMPLES = {"cox_block_mask": "{name: cox_block_mask, ratio: 0.3, block: 4, prob: 0.5}",
                 "orr_invariance": "{name: orr_invariance, weight: 0.01, feature: f3, ratio: 0.3, block: 4}",
                 "afkd": "{name: afkd, student: f3, teacher: f3, lambda_d: 2.0e-5, tau0: 10.0, rho: 10.0}"}


def test_cox_sampler_statistics():
    g = torch.Generator().manual_seed(0)
    masks, accepted = cox_masks(20000, 32, 32, block=4, ratio=0.3, generator=g)
    assert accepted.mean().item() == pytest.approx(19.0, abs=0.2)  # E = floor(64 * 0.3) = 19
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    blocks = masks[:, 0].reshape(-1, 8, 4, 8, 4)
    assert torch.equal(blocks.amax(dim=(2, 4)), blocks.amin(dim=(2, 4)))  # constant within a block
    hidden = 1 - masks[:, 0, ::4, ::4].mean(0)  # per cell
    assert hidden[3, 3] > 1.5 * hidden[0, 0]  # the centre more often than a corner (0.32 vs 0.17 here)
    assert (1 - masks).mean() < 0.3  # duplicates: below r
    p = base_intensity(32, 32, 4, 16.0)
    assert p.shape == (8, 8) and p.sum().item() == pytest.approx(1.0)


def test_cox_block_mask_transform_masks_to_the_mean():
    from distill.core.batch import Batch

    x = torch.randn(4, 3, 32, 32)
    out = CoxBlockMask(ratio=0.5).transform_batch(Batch(x, torch.zeros(4), torch.arange(4), {}),
                                                  torch.Generator().manual_seed(1))
    m = out.meta["cox_mask"]
    assert torch.equal(out.inputs, x * m) and (m == 0).any()
    with pytest.raises(ValueError, match="ratio"):
        CoxBlockMask(ratio=1.5)


def test_afkd_hand_case_and_uniform_reduction():
    w = afkd_weights(torch.tensor([0.0, 1.0]), 2e-5, 10.0, 10.0)
    assert w.tolist() == pytest.approx([1e-4, 3e-4])
    # e = (1, 3): student errors of 1 and 3 per element
    s = torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), 3.0 ** 0.5)])
    t = torch.zeros(2, 2, 2)
    assert afkd_loss(s, t, w).item() == pytest.approx(5e-4)
    same = afkd_weights(torch.tensor([0.4, 0.4]), 2e-5, 10.0, 10.0)
    assert afkd_loss(s, t, same).item() == pytest.approx(2e-5 * 10 * 2.0)  # lambda_d tau0 mean(e)
    neg = afkd_weights(torch.tensor([0.0, 2.0, 2.0, 2.0]), 1.0, 1.0, 1.0)
    assert neg[0] < 0 and afkd_weights(torch.tensor([0.0, 2.0, 2.0, 2.0]), 1.0, 1.0, 1.0, 0.0)[0] == 0


def test_afkd_weights_are_detached_and_difficulty_follows_the_student():
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]], requires_grad=True)
    feat_s = torch.randn(2, 3, requires_grad=True)
    out_s = ModelOutput(logits, {"f3": feat_s})
    out_t = ModelOutput(torch.zeros(2, 2), {"f3": torch.zeros(2, 3)})
    method = AFKD(lambda_d=1.0, tau0=1.0, rho=1.0)
    method.setup(out_s, out_t, RunInfo())
    loss = method(StepInputs(out_s, out_t, torch.tensor([0, 0])))["loss"]
    loss.backward()
    assert logits.grad is None or logits.grad.abs().sum() == 0  # no gradient through the weights
    # the harder sample (p = 0.5) has the larger weight, so a larger gradient per unit error
    assert feat_s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one shape"):
        AFKD().setup(ModelOutput(torch.zeros(1, 2), {"f3": torch.zeros(1, 3)}),
                     ModelOutput(torch.zeros(1, 2), {"f3": torch.zeros(1, 4)}), RunInfo())


def build(method_cls, **kw):  # type: ignore[no-untyped-def]
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    return task, method_cls(**kw)


def test_orr_gradient_only_through_the_clean_pass_and_zero_without_mask():
    torch.manual_seed(0)
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    method = ORRInvariance(feature="f2", ratio=0.3)
    student = TinyCNN(8)
    module = DistillModule(student, Composite({"orr": method}), None, task)
    batch = task.prepare(task.fetch(demo_subset("train", 2), torch.arange(20)), train=True,
                         generator=torch.Generator().manual_seed(0))
    module.setup(batch, RunInfo(student=student, task=task))
    student.eval()  # BatchNorm on batch statistics would couple the two passes; eval isolates the mask's effect
    loss, _, _ = module(batch, generator=torch.Generator().manual_seed(3))
    assert loss.item() > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    # with m = 1 everywhere the masked pass equals the clean one: L = 0
    method.masks = lambda images, generator: torch.ones(images.shape[0], 1, *images.shape[-2:])  # type: ignore
    loss, _, _ = module(batch, generator=torch.Generator().manual_seed(3))
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    # the masked branch is stop-gradient: its tensor carries no graph
    method.transform_batch(batch, torch.Generator().manual_seed(4))
    assert not method.masked_feature().requires_grad
    assert not list(method.parameters()) and not any("orr" in k for k in module.state_dict())


def test_afkd_gradients_reach_student_never_teacher():
    torch.manual_seed(0)
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    module = DistillModule(TinyCNN(8), Composite({"afkd": AFKD(student="f2", teacher="f2", lambda_d=1.0)}),
                           FrozenTeacher(TinyCNN(8)), task)
    batch = task.prepare(task.fetch(demo_subset("train", 2), torch.arange(20)), train=True,
                         generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    loss, _, _ = module(batch)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    assert all(not p.requires_grad and p.grad is None for p in module.teacher.model.parameters())


@pytest.mark.parametrize("masked_bn", ["frozen", "update"])
def test_orr_masked_pass_leaves_batchnorm_statistics_unless_asked(masked_bn):
    """In train mode the masked pass normalises with its own batch statistics; with ``masked_bn: frozen`` the
    running statistics end the step as the clean pass alone leaves them (as after a plain CE step)."""
    torch.manual_seed(0)
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    student = TinyCNN(8)
    batch = task.prepare(task.fetch(demo_subset("train", 2), torch.arange(20)), train=True,
                         generator=torch.Generator().manual_seed(0))
    norms = [m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    start = {k: v.clone() for k, v in student.state_dict().items()}
    student.train()
    with torch.no_grad():
        task.forward(student, batch)
    clean_only = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in norms]
    student.load_state_dict(start)
    method = ORRInvariance(feature="f2", ratio=0.3, masked_bn=masked_bn)
    module = DistillModule(student, Composite({"orr": method}), None, task)
    module.setup(batch, RunInfo(student=student, task=task))
    student.train()
    module(batch, generator=torch.Generator().manual_seed(3))
    after = [(m.running_mean, m.running_var, int(m.num_batches_tracked)) for m in norms]
    same = all(torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1]) and a[2] == b[2]
               for a, b in zip(after, clean_only))
    assert same == (masked_bn == "frozen")
    with pytest.raises(ValueError, match="masked_bn"):
        ORRInvariance(masked_bn="eval")


@pytest.mark.parametrize("arm", ["ce_finetune", "orr", "orr_w2e-4", "orr_w1e-1", "orr_bn_update", "scratch", "afkd",
                                 "mse_uniform"])
def test_recipes_validate(arm):
    raw = load_raw(CONFIGS / f"{arm}.yaml")
    cfg = parse_config(raw, base_dir=str(CONFIGS))
    comp = build_methods(cfg.methods)
    assert "ce" in comp.methods
