"""DMAE and masked-image pre-training: the shared mask, MAE's reconstruction loss on a hand case, the distillation
loss's invariances, the truncated teacher, gradients (student and projector, never the teacher), the family end to
end on the bundled demo images, and the recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.config import ConfigError, load_raw, parse_config
from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.core.teachers import FrozenTeacher
from distill.experiment import build_experiment, build_methods
from distill.methods.dense.dmae import DMAE, normalized_distance
from distill.methods.dense.mae_reconstruction import MAEReconstruction, masked_patch_mse
from distill.tasks.masked_image.data import masking_from_noise, random_masking
from distill.tasks.masked_image.models import MaskedAutoencoderViT, patchify, sincos_2d
from distill.tasks.masked_image.task import MaskedImageModelling
from distill.train.module import DistillModule

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")
CONFIGS = REPO / "configs" / "masked_image"
#: one validated recipe line per method of this file (tests/test_config.py checks every method has one)
YAML_EXAMPLES = {"mae_reconstruction": "{name: mae_reconstruction}",
                 "dmae": "{name: dmae, student: [b2], teacher: [b4], projector: linear, loss: l1}"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiny(depth: int = 2, dim: int = 32, stop: int | None = None) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(image_size=16, patch_size=4, dim=dim, depth=depth, heads=2, decoder_dim=16,
                                decoder_depth=1, decoder_heads=1, stop_after_block=stop)


def test_masking_keeps_the_smallest_noise_and_restores_the_order():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    ids_keep, ids_restore, mask = masking_from_noise(noise, 0.5)
    assert ids_keep.tolist() == [[1, 3]]
    assert mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]
    shuffled = torch.argsort(noise, 1)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), torch.arange(4)[None])
    ids_keep, _, mask = random_masking(3, 64, 0.75, torch.Generator().manual_seed(0))
    assert ids_keep.shape == (3, 16) and mask.sum(1).tolist() == [48.0] * 3
    assert random_masking(1, 64, 0.95, torch.Generator().manual_seed(0))[0].shape == (1, 3)


def test_reconstruction_loss_counts_only_masked_patches():
    # two patches of 2 pixels: patch 0 hidden (errors 1, 3 -> mean 5), patch 1 visible (error 10 ignored)
    pred = torch.tensor([[[1.0, 3.0], [10.0, 10.0]]])
    labels = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
    assert masked_patch_mse(pred, labels).item() == pytest.approx(5.0)
    labels[0, 1, 2] = 1.0  # both hidden: (5 + 100) / 2
    assert masked_patch_mse(pred, labels).item() == pytest.approx(52.5)
    loss = MAEReconstruction()(StepInputs(ModelOutput(pred), None, labels))["loss"]
    assert loss.item() == pytest.approx(52.5)


def test_distillation_loss_invariances_and_hand_case():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 8)
    method = DMAE(student="b0", teacher="b0")
    out = ModelOutput(torch.zeros(1), {"b0": h})
    method.setup(out, out, RunInfo())
    with torch.no_grad():
        method.projectors[0].weight.copy_(torch.eye(8))
        method.projectors[0].bias.zero_()
    assert method(StepInputs(out, out, None))["loss"].item() == pytest.approx(0.0, abs=1e-7)  # T = S, P = I
    scaled = ModelOutput(torch.zeros(1), {"b0": 3.7 * h})
    assert method(StepInputs(out, scaled, None))["loss"].item() == pytest.approx(0.0, abs=1e-6)
    # (1, 0) vs (0, 1): |1 - 0| + |0 - 1| over 2 channels -> 1; squared -> 1
    s, t = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 2.0]]])
    assert normalized_distance(s, t, "l1").item() == pytest.approx(1.0)
    assert normalized_distance(s, t, "l2").item() == pytest.approx(1.0)
    # (3, 4) vs (1, 0): n = (0.6, 0.8) -> |0.4| + |0.8| over 2 = 0.6
    assert normalized_distance(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.6)


def test_truncated_teacher_gives_the_full_forwards_block_output():
    torch.manual_seed(0)
    full = tiny(depth=3)
    cut = tiny(depth=3, stop=1)
    cut.load_state_dict(full.state_dict())
    x = torch.randn(2, 3, 16, 16)
    ids_keep, ids_restore, _ = random_masking(2, 16, 0.75, torch.Generator().manual_seed(1))
    seen = {}
    hook = full.blocks[1].register_forward_hook(lambda m, i, o: seen.setdefault("b1", o))
    full(x, ids_keep, ids_restore)
    hook.remove()
    calls = []
    hook = cut.blocks[2].register_forward_hook(lambda m, i, o: calls.append(1))
    assert torch.allclose(cut(x, ids_keep, ids_restore), seen["b1"], atol=1e-6)
    assert not calls  # block 2 never runs
    assert seen["b1"].shape == (2, 1 + 4, 32)
    with pytest.raises(ValueError, match="stop_after_block"):
        tiny(depth=2, stop=2)


def test_sincos_and_patchify():
    emb = sincos_2d(8, 2)
    assert emb.shape == (1, 5, 8) and torch.equal(emb[0, 0], torch.zeros(8))
    assert emb[0, 1, :2].tolist() == [0.0, 0.0] and emb[0, 1, 2:4].tolist() == [1.0, 1.0]  # position 0: sin 0, cos 0
    img = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    p = patchify(img, 2)
    assert p.shape == (2, 4, 12)
    assert p[0, 1, :3].tolist() == [img[0, 0, 0, 2].item(), img[0, 1, 0, 2].item(), img[0, 2, 0, 2].item()]


def masked_batch(n: int = 4, ratio: float = 0.75) -> tuple[MaskedImageModelling, Batch]:
    task = MaskedImageModelling(MEAN, STD, None, mask_ratio=ratio, patch_size=4)
    raw = Batch(inputs=torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8), labels=torch.arange(n),
                indices=torch.arange(n), meta={})
    return task, task.prepare(raw, train=True, generator=torch.Generator().manual_seed(0))


def test_teacher_and_student_see_the_same_visible_patches():
    task, batch = masked_batch()
    seen: dict[str, torch.Tensor] = {}

    class Spy(MaskedAutoencoderViT):
        def embed(self, x, ids_keep):
            seen[self.tag] = ids_keep
            return super().embed(x, ids_keep)

    s, t = Spy(16, 4, 32, 2, 2, 16, 1, 1), Spy(16, 4, 48, 2, 2, 16, 1, 1, stop_after_block=0)
    s.tag, t.tag = "student", "teacher"
    task.forward(s, batch)
    FrozenTeacher(t)(batch, task, ["blocks.0"])
    assert torch.equal(seen["student"], seen["teacher"]) and seen["student"].shape == (4, 4)
    # the evaluation masks depend on the image index only
    raw = Batch(inputs=batch.inputs.new_zeros(2, 3, 16, 16, dtype=torch.uint8), labels=torch.arange(2),
                indices=torch.tensor([7, 3]), meta={})
    a = task.prepare(raw, train=False, generator=None).meta["ids_keep"]
    b = task.prepare(Batch(raw.inputs.flip(0), raw.labels, torch.tensor([3, 7]), {}), train=False,
                     generator=None).meta["ids_keep"]
    assert torch.equal(a, b.flip(0))


def test_gradients_reach_student_and_projector_never_teacher():
    torch.manual_seed(0)
    task, batch = masked_batch()
    student, teacher = tiny(depth=2, dim=32), tiny(depth=3, dim=48, stop=1)
    dmae = DMAE(student="b1", teacher="b1")
    methods = Composite({"mae_reconstruction": MAEReconstruction(), "dmae": dmae})
    module = DistillModule(student, methods, FrozenTeacher(teacher), task)
    module.setup(batch)
    loss, terms, _ = module(batch)
    assert set(terms) == {"mae_reconstruction", "dmae"} and all(v.item() > 0 for v in terms.values())
    loss.backward()
    for name, p in student.named_parameters():
        assert p.grad is not None, name  # decoder from L_rec; encoder from both
    assert dmae.projectors[0].weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    # the distillation term alone reaches the encoder up to block 1 and nothing of the decoder
    student.zero_grad()
    module(batch)[1]["dmae"].backward()
    assert student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert student.decoder_pred.weight.grad is None or student.decoder_pred.weight.grad.abs().sum() == 0


def test_bad_options_are_refused_with_their_name():
    with pytest.raises(ValueError, match="projector"):
        DMAE(projector="conv")
    with pytest.raises(ValueError, match="loss"):
        DMAE(loss="l3")
    raw = load_raw(CONFIGS / "mae.yaml")
    raw["data"]["mask_ratio"] = 1.0
    with pytest.raises(ValueError, match="mask_ratio"):
        parse_config(raw, base_dir=str(CONFIGS))
    raw = load_raw(CONFIGS / "mae.yaml")
    raw["student"]["options"]["stop_after_block"] = 1
    with pytest.raises(ValueError, match="stop_after_block"):
        parse_config(raw, base_dir=str(CONFIGS))


@pytest.mark.parametrize("arm", ["teacher_mae", "mae", "dmae", "dmae_m95"])
def test_recipes_validate(arm):
    raw = load_raw(CONFIGS / f"{arm}.yaml")
    cfg = parse_config(raw, base_dir=str(CONFIGS))
    names = list(build_methods(cfg.methods).methods)
    assert names == (["mae_reconstruction", "dmae"] if arm.startswith("dmae") else ["mae_reconstruction"])
    assert cfg.data.mask_ratio == (0.95 if arm == "dmae_m95" else 0.75)
    if arm.startswith("dmae"):
        assert cfg.teacher.options["stop_after_block"] == 4


def test_family_trains_end_to_end_on_demo_images(tmp_path):
    common = {"train": DEMO, "eval": DEMO, "train_per_class": 4, "eval_per_class": 2, "cache_dir": None}
    raw = load_raw(CONFIGS / "teacher_mae.yaml")
    raw["data"].update(common)
    raw["student"]["options"] = {"dim": 32, "depth": 3, "heads": 2, "decoder_dim": 16, "decoder_depth": 1,
                                 "decoder_heads": 1}
    raw.update(output_dir=str(tmp_path / "t"))
    raw["train"].update(epochs=1, batch_size=8, eval_every=1)
    summary = build_experiment(parse_config(raw, base_dir=str(CONFIGS))).fit(resume=False)
    assert summary["final"]["recon_mse"] > 0
    raw = load_raw(CONFIGS / "dmae.yaml")
    raw["data"].update(common)
    raw["student"]["options"] = {"dim": 16, "depth": 2, "heads": 1, "decoder_dim": 16, "decoder_depth": 1,
                                 "decoder_heads": 1}
    raw["teacher"].update(weights=str(tmp_path / "t" / "student.safetensors"),
                          options={"dim": 32, "depth": 3, "heads": 2, "decoder_dim": 16, "decoder_depth": 1,
                                   "decoder_heads": 1, "stop_after_block": 1})
    raw["methods"][1].update(student=["b1"], teacher=["b1"])
    raw.update(output_dir=str(tmp_path / "s"))
    raw["train"].update(epochs=1, batch_size=8, eval_every=1)
    exp = build_experiment(parse_config(raw, base_dir=str(CONFIGS)))
    summary = exp.fit(resume=False)
    assert summary["final"]["recon_mse"] > 0
    assert exp.student.features(torch.randn(2, 3, 32, 32)).shape == (2, 16)


def test_users_images_at_another_size_set_the_vits_size(tmp_path):
    """data.image_size 48 (users' photos): the MAE ViT follows the data (it was built for 32 px and failed in the
    first step with a tensor-size error); an explicit student.options.image_size that disagrees is named."""
    common = {"train": DEMO, "eval": DEMO, "train_per_class": 2, "eval_per_class": 1, "cache_dir": None,
              "image_size": 48}
    raw = load_raw(CONFIGS / "mae.yaml")
    raw["data"].update(common)
    raw["student"]["options"] = {"dim": 16, "depth": 1, "heads": 1, "decoder_dim": 16, "decoder_depth": 1,
                                 "decoder_heads": 1}
    raw.update(output_dir=str(tmp_path / "s"))
    raw["train"].update(epochs=1, batch_size=4, eval_every=1, warmup_epochs=0)
    exp = build_experiment(parse_config(raw, base_dir=str(CONFIGS)))
    assert exp.student.grid == 12
    assert exp.fit(resume=False)["final"]["recon_mse"] > 0
    raw["student"]["options"]["image_size"] = 32
    with pytest.raises(ConfigError, match=r"student.options.image_size: 32, but the data's images are 48 x 48"):
        build_experiment(parse_config(raw, base_dir=str(CONFIGS)))
