"""The paired-view residual adapter (row 7, feature-level KD): it starts as the exo model exactly (its last conv is
zero-initialised), the loss MSE(g(x_ego) + x_ego, x_exo) and its gradient against hand-computed values, gradients
reach the adapter and never the frozen exo model (nor its BatchNorm statistics), the combined variant trains the model
around a frozen adapter, bad settings are refused with the key named; both recipes end to end on the demo images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TinyCNN
from safetensors.torch import save_file
from torch import nn

from distill.config import ConfigError, load_raw, parse_config
from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD
from distill.experiment import build_experiment, build_methods
from distill.methods.features.paired_view_kd import PairedViewKD
from distill.models import MODELS
from distill.models.paired_view_adapter import ADAPTER_BRANCH, ADAPTER_IN, PairedViewAdapted, ResidualConvAdapter
from distill.models.weights import read_state_dict
from distill.tasks.paired_views.task import PairedViews, TeacherView
from distill.train.module import DistillModule

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")
CONFIGS = REPO / "configs" / "paired_views"


def copy_of(model: nn.Module) -> nn.Module:
    twin = type(model)()
    twin.load_state_dict(model.state_dict())
    return twin


def module_for(student: nn.Module, teacher: nn.Module, taps: list[str]) -> DistillModule:
    task = PairedViews(IMAGENET_MEAN, IMAGENET_STD, None)
    method = PairedViewKD(student=taps, teacher=taps)
    return DistillModule(student, Composite({"paired_view_kd": method}), FrozenTeacher(TeacherView(teacher)), task)


def paired(ego: torch.Tensor, exo: torch.Tensor) -> Batch:
    """A prepared training batch: the student's view in ``inputs``, the teacher's in ``meta``, no labels."""
    n = ego.shape[0]
    return Batch(inputs=ego, labels=None, indices=torch.arange(n), meta={"teacher_inputs": exo})


def test_the_adapter_starts_as_the_exo_model_exactly():
    """Design: the last convolution of g is zero (weight and bias), so g(x) = 0 and x + g(x) = x bit for bit."""
    torch.manual_seed(0)
    exo = TinyCNN(8)
    adapted = PairedViewAdapted(copy_of(exo), at="f1")
    x = torch.randn(4, 3, 16, 16)
    for mode in (True, False):
        adapted.train(mode)
        exo.eval()  # the adapted model keeps its exo part in eval mode even in training
        assert torch.equal(adapted(x), exo(x))
    g = ResidualConvAdapter(8)
    assert torch.equal(g(torch.randn(2, 8, 5, 5)), torch.zeros(2, 8, 5, 5))
    assert adapted.feature_taps["f1"] == "model.stage1" and adapted.feature_taps[ADAPTER_IN] == "model.stage1.stage"
    assert adapted.feature_taps["f2"] == "model.stage2"  # the taps after the adapter keep their modules
    with pytest.raises(ValueError, match="kernel"):
        ResidualConvAdapter(8, kernel=2)


class OneChannel(nn.Module):
    """A 1-channel "exo model": stage = 1x1 conv with weight 1, bias 0 (its map is the input), then a head."""

    feature_taps = {"f1": "stage"}

    def __init__(self):
        super().__init__()
        self.stage = nn.Conv2d(1, 1, 1)
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.stage.weight.fill_(1.0)
            self.stage.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(x).mean((2, 3)))


def test_loss_and_adapter_gradient_against_hand_computed_values():
    """x_ego = [1, 2, 3, 4], x_exo = [2, 2, 4, 4], g(x) = 0.5 x + 0.25 (a 1x1 conv):
    x + g(x) = [1.75, 3.25, 4.75, 6.25], residuals r = [-0.25, 1.25, 0.75, 2.25],
    L = mean r^2 = (0.0625 + 1.5625 + 0.5625 + 5.0625) / 4 = 1.8125,
    dL/dw = mean(2 r x) = 2 (-0.25 + 2.5 + 2.25 + 9) / 4 = 6.75, dL/db = mean(2 r) = 2.0."""
    exo = OneChannel()
    adapted = PairedViewAdapted(copy_of(exo), at="f1", kernel=1, layers=1)
    last = adapted.adapter.body[0]
    with torch.no_grad():
        last.weight.fill_(0.5)
        last.bias.fill_(0.25)
    module = module_for(adapted, exo, ["f1"])
    batch = paired(torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2),
                   torch.tensor([[2.0, 2.0], [4.0, 4.0]]).view(1, 1, 2, 2))
    module.setup(batch)
    loss, _, _ = module(batch)
    assert loss.item() == pytest.approx(1.8125, abs=1e-6)
    loss.backward()
    assert last.weight.grad.item() == pytest.approx(6.75, abs=1e-5)
    assert last.bias.grad.item() == pytest.approx(2.0, abs=1e-6)


def test_gradients_reach_the_adapter_and_never_the_frozen_exo_model():
    torch.manual_seed(0)
    exo = TinyCNN(8)
    adapted = PairedViewAdapted(copy_of(exo), at="f1")
    module = module_for(adapted, exo, ["f1"])
    task = PairedViews(IMAGENET_MEAN, IMAGENET_STD, None)
    raw = Batch(inputs=torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator()
                                     .manual_seed(0)), labels=torch.arange(8), indices=torch.arange(8), meta={})
    batch = task.prepare(raw, train=True, generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    frozen_before = {k: v.clone() for k, v in adapted.state_dict().items() if ".adapter." not in k}
    exo_before = {k: v.clone() for k, v in exo.state_dict().items()}
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in adapted.adapter.parameters()}
    opt = torch.optim.SGD(trainable, lr=0.1, momentum=0.9, weight_decay=5e-4)
    module.train()
    first = adapted.adapter.body[0].weight
    for step in range(2):
        opt.zero_grad()
        loss, _, _ = module(batch)
        assert loss.item() > 0  # the two views differ
        loss.backward()
        assert adapted.adapter.body[-1].weight.grad.abs().sum() > 0
        # g's first conv feeds a zero conv: no gradient at step 0, some once the last conv has moved
        assert (first.grad.abs().sum() > 0) == (step == 1)
        assert all(p.grad is None for n, p in adapted.named_parameters() if ".adapter." not in n)
        assert all(p.grad is None and not p.requires_grad for p in exo.parameters())
        opt.step()
    after = adapted.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen_before.items())  # BatchNorm statistics included
    assert all(torch.equal(v, exo.state_dict()[k]) for k, v in exo_before.items())
    assert module(batch)[0].item() < loss.item()  # the adapter moved the ego maps towards the exo maps


def test_the_combined_variant_trains_the_model_around_a_frozen_adapter(tmp_path):
    torch.manual_seed(0)
    exo = TinyCNN(8)
    trained = PairedViewAdapted(copy_of(exo), at="f1")
    with torch.no_grad():
        for p in trained.adapter.parameters():
            p.normal_(0.0, 0.1)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "student.safetensors"))
    combined = PairedViewAdapted(copy_of(exo), at="f1", train="model")
    combined.load_adapter(read_state_dict(tmp_path / "student.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(combined.adapter.state_dict().values(),
                                                 trained.adapter.state_dict().values(), strict=True))
    combined.train()
    assert not combined.adapter.training and combined.model.stage2.training
    module = module_for(combined, exo, ["f1", "f2"])
    batch = paired(torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16))
    module.setup(batch)
    module(batch)[0].backward()
    assert all(p.grad is None and not p.requires_grad for p in combined.adapter.parameters())
    assert combined.model.stage1.stage[0].weight.grad.abs().sum() > 0
    assert combined.model.head.weight.grad is None  # no loss on the logits here, yet the head is trainable
    with pytest.raises(ValueError, match="does not hold this adapter"):
        PairedViewAdapted(copy_of(exo), at="f2", train="model").load_adapter(trained.state_dict())


def adapter_raw(**adapter) -> dict:
    raw = load_raw(CONFIGS / "adapter.yaml")
    raw["student"]["adapter"].update(adapter)
    return raw


def test_bad_settings_are_refused_with_the_key_named(tmp_path):
    with pytest.raises(ConfigError, match=r"student\.adapter\.hiden"):
        parse_config(adapter_raw(hiden=16), base_dir=str(CONFIGS))
    with pytest.raises(ConfigError, match=r"student\.adapter\.train"):
        parse_config(adapter_raw(train="both"), base_dir=str(CONFIGS))
    raw = load_raw(CONFIGS / "adapter.yaml")
    raw["teacher"]["adapter"] = {"at": "f2"}
    with pytest.raises(ConfigError, match=r"teacher\.adapter"):
        parse_config(raw, base_dir=str(CONFIGS))
    with pytest.raises(ConfigError, match=r"student\.adapter\.weights"):
        parse_config(adapter_raw(train="model"), base_dir=str(CONFIGS))
    for bad, key in (({"at": "f9"}, "at"), ({"at": "f0"}, "at"), ({"kernel": 2}, "kernel")):
        raw = small(adapter_raw(**bad), tmp_path)
        with pytest.raises(ConfigError, match=rf"student\.adapter\.{key}"):
            build_experiment(parse_config(raw, base_dir=str(CONFIGS)))


@pytest.mark.parametrize("arm", ["adapter", "combined"])
def test_recipes_validate(arm):
    cfg = parse_config(load_raw(CONFIGS / f"{arm}.yaml"), base_dir=str(CONFIGS))
    assert list(build_methods(cfg.methods).methods) == ["paired_view_kd"]
    assert cfg.student.adapter.train == ("adapter" if arm == "adapter" else "model")
    assert cfg.student.weights == cfg.teacher.weights  # the exo model on both sides
    assert not cfg.data.labels_in_training


def small(raw: dict, tmp_path: Path, weights: str | None = None) -> dict:
    """The recipe on the bundled demo images, ResNet-20 exo model, one short epoch."""
    raw["data"].update(train=DEMO, eval=DEMO, train_per_class=2, eval_per_class=2, cache_dir=None)
    exo = weights or str(tmp_path / "exo.safetensors")
    if weights is None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        save_file(MODELS["resnet20"](num_classes=10).state_dict(), exo)
    raw["student"].update(arch="resnet20", weights=exo)
    raw["teacher"] = {"arch": "resnet20", "weights": exo}
    raw["train"].update(epochs=1, batch_size=8, eval_every=1, milestones=[1])
    raw["output_dir"] = str(tmp_path / "run")
    return raw


def test_both_recipes_train_end_to_end_on_demo_images(tmp_path):
    raw = small(load_raw(CONFIGS / "adapter.yaml"), tmp_path / "adapter")
    exp = build_experiment(parse_config(raw, base_dir=str(CONFIGS)))
    before = exp.trainer.evaluate()["accuracy"]  # step 0: the exo model itself on the ego views (source-only)
    exo = MODELS["resnet20"](num_classes=10)
    exo.load_state_dict(read_state_dict(raw["student"]["weights"]))
    summary = exp.fit(resume=False)
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0 and 0.0 <= before <= 1.0
    state = read_state_dict(tmp_path / "adapter" / "run" / "student.safetensors")
    for key, value in exo.state_dict().items():  # the exo model is exactly the one it started as
        moved = key.replace("layer2.", "layer2.stage.") if key.startswith("layer2.") else key
        assert torch.equal(state[f"model.{moved}"], value), key
    assert state["model.layer2.adapter.body.3.weight"].abs().sum() > 0  # the adapter trained
    # the combined variant reads that adapter, keeps it frozen and trains the model around it
    raw = small(load_raw(CONFIGS / "combined.yaml"), tmp_path / "combined", weights=raw["student"]["weights"])
    raw["student"]["adapter"]["weights"] = str(tmp_path / "adapter" / "run" / "student.safetensors")
    build_experiment(parse_config(raw, base_dir=str(CONFIGS))).fit(resume=False)
    after = read_state_dict(tmp_path / "combined" / "run" / "student.safetensors")
    adapter_keys = [k for k in state if ".adapter." in k]
    assert adapter_keys and all(torch.equal(after[k], state[k]) for k in adapter_keys)
    assert not torch.equal(after["model.layer1.0.conv1.weight"], state["model.layer1.0.conv1.weight"])
    assert ADAPTER_BRANCH in PairedViewAdapted(MODELS["resnet20"](num_classes=10)).feature_taps
