"""The trainer: gradient flow, exact resume, early stopping, accumulation, teachers, schedules."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyCNN, demo_subset

from distill.core.compose import Composite
from distill.core.teachers import EnsembleTeacher, FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.methods.features import AttentionTransfer, FitNet
from distill.methods.logits import KD, CrossEntropy
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule
from distill.train.schedules import lr_factor
from distill.train.trainer import TrainConfig, Trainer, epoch_order


def make_task(augment: bool = True) -> ImageClassification:
    return ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4) if augment else None)


def make_module(seed: int = 0) -> DistillModule:
    torch.manual_seed(seed)
    student = TinyCNN(8)
    teacher = FrozenTeacher(TinyCNN(16))
    methods = Composite(
        {"ce": CrossEntropy(), "kd": KD(temperature=4.0), "fitnet": FitNet("f2", "f2"), "at": AttentionTransfer(
            ["f1", "f2"])},
        {"ce": 0.5, "kd": 0.5, "fitnet": 10.0, "at": 100.0},
    )
    return DistillModule(student, methods, teacher, make_task())


def test_gradients_reach_student_and_method_never_teacher():
    module = make_module()
    data = demo_subset("train", 2)
    task = module.task
    batch = task.prepare(task.fetch(data, torch.arange(20)), train=True, generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    loss, terms, _ = module(batch)
    assert set(terms) == {"ce", "kd", "fitnet", "at"}
    assert torch.isclose(loss, sum(terms.values()))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    reg = module.methods.methods["fitnet"].regressor
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reg.parameters())
    teacher = module.teacher.model
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not teacher.training
    # the teacher is not part of the trainable module's state or parameters
    assert not any(k.startswith("teacher") for k in module.state_dict())


def test_teacher_batchnorm_untouched_by_training(tmp_path):
    module = make_module()
    before = {k: v.clone() for k, v in module.teacher.model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=20, lr=0.05, progress=False, eval_every=1)
    Trainer(module, demo_subset("train", 4), None, cfg, tmp_path).fit()
    after = module.teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def fit_run(tmp_path, name, max_steps=None, epochs=2, resume=True, grad_accum=1, batch_size=20):
    module = make_module()
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, lr=0.05, schedule="cosine",
                      progress=False, deterministic=True, checkpoint_every=3, max_steps=max_steps,
                      optimizer="sgd", log_every=1)
    trainer = Trainer(module, demo_subset("train", 8), demo_subset("test", 2), cfg, tmp_path / name)
    summary = trainer.fit(resume=resume)
    return module, summary


def test_resume_is_bit_identical(tmp_path):
    full, _ = fit_run(tmp_path, "full")
    fit_run(tmp_path, "split", max_steps=5)  # stops after step 5; last checkpoint at step 3
    resumed, summary = fit_run(tmp_path, "split")
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert summary["steps"] == 8
    # the metric log was rewound to the checkpoint, so no step is logged twice
    import csv

    rows = list(csv.DictReader(open(tmp_path / "split" / "metrics.csv")))
    steps = [int(r["step"]) for r in rows if r["split"] == "train" and r["metric"] == "loss"]
    assert steps == sorted(set(steps)) == list(range(1, 9))


def test_epoch_order_is_a_permutation_and_seeded():
    a, b = epoch_order(100, 0, 3), epoch_order(100, 0, 3)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, epoch_order(100, 0, 4))


def test_early_stopping(tmp_path):
    module = make_module()
    cfg = TrainConfig(epochs=10, batch_size=20, lr=1e-12, schedule="constant", progress=False,
                      early_stopping_patience=2, early_stopping_metric="accuracy")
    summary = Trainer(module, demo_subset("train", 2), demo_subset("test", 2), cfg, tmp_path).fit()
    assert summary["epochs_done"] == 3  # first eval sets the best, two more without improvement stop it
    assert (tmp_path / "best" / "student.safetensors").exists()


def test_gradient_accumulation_matches_large_batch(tmp_path):
    torch.manual_seed(0)

    class NoBN(TinyCNN):
        def __init__(self):
            super().__init__()
            self.stage1[1] = torch.nn.Identity()
            self.stage2[1] = torch.nn.Identity()

    def run(batch_size, accum, name):
        torch.manual_seed(0)
        module = DistillModule(NoBN(), Composite({"ce": CrossEntropy()}), None, make_task(augment=False))
        cfg = TrainConfig(epochs=1, batch_size=batch_size, grad_accum=accum, lr=0.1, progress=False,
                          schedule="constant", weight_decay=0.0, momentum=0.0)
        Trainer(module, demo_subset("train", 4), None, cfg, tmp_path / name).fit()
        return module.student

    big = run(40, 1, "big")
    small = run(20, 2, "small")
    for a, b in zip(big.parameters(), small.parameters()):
        # the data order differs with the batch size only in grouping: same 40 examples per step
        assert a.shape == b.shape
    assert sum((a - b).abs().max() for a, b in zip(big.parameters(), small.parameters())) < 1e-4


def test_ensemble_teacher_reductions():
    torch.manual_seed(0)
    models = [TinyCNN(4), TinyCNN(4), TinyCNN(4)]
    task = make_task(augment=False)
    data = demo_subset("test", 1)
    batch = task.prepare(task.fetch(data, torch.arange(10)), train=False, generator=None)
    outs = [m.eval()(batch.inputs) for m in models]
    mean_logits = EnsembleTeacher(models, "logits")(batch, task, ["pooled"])
    assert torch.allclose(mean_logits.logits, torch.stack(outs).mean(0), atol=1e-6)
    assert mean_logits.features["pooled"].shape == (10, 8)
    probs = EnsembleTeacher(models, "probs")(batch, task)
    expected = torch.stack([o.softmax(-1) for o in outs]).mean(0)
    assert torch.allclose(probs.logits.softmax(-1), expected, atol=1e-6)


def test_schedules():
    assert lr_factor("step", 0, 10, 100, [3, 6]) == 1.0
    assert lr_factor("step", 30, 10, 100, [3, 6]) == pytest.approx(0.1)
    assert lr_factor("step", 99, 10, 100, [3, 6]) == pytest.approx(0.01)
    assert lr_factor("cosine", 0, 10, 100) == 1.0
    assert lr_factor("cosine", 50, 10, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("cosine", 4, 10, 100, warmup_steps=10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="allowed"):
        lr_factor("linear", 0, 1, 1)


def test_missing_teacher_is_refused():
    with pytest.raises(ValueError, match="need a teacher"):
        DistillModule(TinyCNN(), Composite({"kd": KD()}), None, make_task())


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    module = make_module()
    cfg = TrainConfig(epochs=1, batch_size=20, lr=1e30, progress=False, schedule="constant")
    with pytest.raises(FloatingPointError, match=r"non-finite .* at step \d+ \(epoch 1\)"):
        Trainer(module, demo_subset("train", 4), None, cfg, tmp_path).fit()


def test_initialisation_stage_runs_only_init_losses(tmp_path):
    from distill.core.method import Method
    from distill.train.logs import read_metrics

    class Anchored(Method):
        """init stage pulls a scalar to 3; the main stage leaves it alone."""

        needs_teacher = False
        init_epochs = 2

        def __init__(self):
            super().__init__()
            self.value = torch.nn.Parameter(torch.zeros(()))
            self.main_calls = 0

        def init_loss(self, inputs):
            return {"anchor": (self.value - 3.0) ** 2}

        def forward(self, inputs):
            self.main_calls += 1
            assert inputs.epoch >= 0
            return {"zero": 0.0 * self.value}

    torch.manual_seed(0)
    anchored = Anchored()
    module = DistillModule(TinyCNN(), Composite({"ce": CrossEntropy(), "anchor": anchored}), None, make_task())
    cfg = TrainConfig(epochs=1, batch_size=20, lr=0.1, momentum=0.0, weight_decay=0.0, progress=False, log_every=1)
    summary = Trainer(module, demo_subset("train", 4), demo_subset("test", 1), cfg, tmp_path).fit()
    steps_per_epoch = 2
    rows = read_metrics(tmp_path)
    init_rows = [r for r in rows if r["split"] == "init" and r["metric"] == "loss"]
    assert len(init_rows) == 2 * steps_per_epoch
    assert not any(r["metric"] == "ce" for r in rows if r["split"] == "init")
    assert anchored.main_calls == steps_per_epoch
    assert abs(anchored.value.item() - 3.0) < 3.0 * 0.8**4 + 1e-6  # four plain SGD steps toward 3
    assert summary["steps"] == 3 * steps_per_epoch and summary["epochs_done"] == 3
    assert [h["stage"] for h in summary["history"]] == ["init", "init", "main"]


def test_teacher_pass_sees_every_training_example_once(tmp_path):
    from distill.core.method import Method

    class ClassMeans(Method):
        wants_teacher_pass = True

        def __init__(self):
            super().__init__()
            self.register_buffer("seen", torch.zeros(()))
            self.register_buffer("means", torch.zeros(10, 16))

        def teacher_taps(self):
            return ["pooled"]

        def teacher_pass(self, outputs):
            counts = torch.zeros(10)
            for batch, out in outputs:
                self.seen += len(batch)
                self.means.index_add_(0, batch.labels, out.feature("pooled"))
                counts += torch.bincount(batch.labels, minlength=10)
            self.means /= counts[:, None]

        def forward(self, inputs):
            return {"zero": inputs.student.logits.sum() * 0.0}

    torch.manual_seed(0)
    method = ClassMeans()
    teacher = TinyCNN(8)
    module = DistillModule(TinyCNN(), Composite({"ce": CrossEntropy(), "means": method}), FrozenTeacher(teacher),
                           make_task())
    data = demo_subset("train", 3)
    cfg = TrainConfig(epochs=1, batch_size=10, progress=False, eval_batch_size=7)
    Trainer(module, data, None, cfg, tmp_path).fit()
    assert method.seen.item() == 30
    task = make_task(augment=False)
    # class means of the teacher's pooled features, recomputed directly
    with torch.no_grad():
        from distill.core.taps import FeatureTaps

        batch = task.prepare(task.fetch(data, torch.arange(30)), train=False, generator=None)
        with FeatureTaps(teacher, ["pooled"]).capture() as f:
            teacher(batch.inputs)
        pooled = f["pooled"]
    expected = torch.stack([pooled[data.labels == c].mean(0) for c in range(10)])
    assert torch.allclose(method.means, expected, atol=1e-5)


def test_batch_transform_reaches_teacher_and_student_and_is_replayable(tmp_path):
    from distill.core.batch import Batch
    from distill.core.method import Method

    seen = []

    class Recorder(torch.nn.Module):
        feature_taps: dict = {}

        def __init__(self):
            super().__init__()
            self.net = TinyCNN(4)

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.net(x)

    class Negate(Method):
        """flips the sign of a random half of the batch and turns labels into one-hot soft targets"""

        needs_teacher = False

        def transform_batch(self, batch, generator):
            flip = torch.rand(len(batch), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], -batch.inputs, batch.inputs)
            soft = torch.nn.functional.one_hot(batch.labels, 10).float()
            return Batch(x, soft, batch.indices, {**batch.meta, "flip": flip})

        def forward(self, inputs):
            assert inputs.labels.dtype == torch.float32 and inputs.labels.shape[1] == 10
            return {"zero": inputs.student.logits.sum() * 0.0}

    def run(name):
        seen.clear()
        torch.manual_seed(0)
        methods = Composite({"ce": CrossEntropy(), "neg": Negate(), "kd": KD()})
        module = DistillModule(TinyCNN(), methods, FrozenTeacher(Recorder()), make_task())
        cfg = TrainConfig(epochs=1, batch_size=10, progress=False, max_steps=3)
        Trainer(module, demo_subset("train", 3), None, cfg, tmp_path / name).fit()
        return list(seen)

    first, second = run("a"), run("b")
    assert len(first) == 1 + 3  # the set-up batch, then one teacher call per step
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert any((x < -1.5).any() for x in first[1:])  # negated views were seen by the teacher


def test_inference_model_and_after_epoch_hooks(tmp_path):
    from distill.core.method import Method

    class Scaled(torch.nn.Module):
        def __init__(self, student, scale):
            super().__init__()
            self.student, self.scale = student, scale

        def forward(self, x):
            return -self.scale * self.student(x)  # a deliberately different predictor

    class Hooked(Method):
        needs_teacher = False

        def __init__(self):
            super().__init__()
            self.register_buffer("val_seen", torch.zeros(()))
            self.register_buffer("epochs", torch.zeros(()))

        def after_epoch(self, context):
            assert context.splits == ("val", "eval")
            self.epochs += 1
            for batch, out in context.student_outputs("val", ["pooled"]):
                assert out.feature("pooled").shape[0] == len(batch)
                self.val_seen += len(batch)

        def inference_model(self, student):
            return Scaled(student, 2.0)

        def forward(self, inputs):
            return {"zero": inputs.student.logits.sum() * 0.0}

    torch.manual_seed(0)
    hooked = Hooked()
    module = DistillModule(TinyCNN(), Composite({"ce": CrossEntropy(), "h": hooked}), None, make_task())
    cfg = TrainConfig(epochs=2, batch_size=10, progress=False)
    trainer = Trainer(module, demo_subset("train", 2), demo_subset("test", 2), cfg, tmp_path,
                      val_data=demo_subset("test", 1))
    summary = trainer.fit()
    assert hooked.epochs.item() == 2 and hooked.val_seen.item() == 20
    wrapped = trainer.evaluate()
    plain = trainer.evaluate(module.student)
    assert summary["final"] == wrapped
    # negating the logits turns the arg-max into the arg-min, so the two evaluations differ
    assert wrapped["accuracy"] != plain["accuracy"] or wrapped["loss"] != plain["loss"]


def test_val_batches_are_a_function_of_the_step(tmp_path):
    module = make_module()
    val = demo_subset("test", 2)
    trainer = Trainer(module, demo_subset("train", 2), None, TrainConfig(batch_size=10, progress=False), tmp_path,
                      val_data=val)
    a, b = trainer._val_batch(3, 4), trainer._val_batch(3, 4)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.inputs, b.inputs)
    seen = torch.cat([trainer._val_batch(s, 4).indices for s in range(5)])  # one round: 5 batches of 4 of 20
    assert sorted(seen.tolist()) == list(range(20))


def test_resuming_with_other_settings_is_refused(tmp_path):
    fit_run(tmp_path, "run", max_steps=3)
    module = make_module()
    cfg = TrainConfig(epochs=2, batch_size=20, lr=0.1, schedule="cosine", progress=False, deterministic=True,
                      checkpoint_every=3, log_every=1)
    with pytest.raises(ValueError, match=r"different run \(lr: 0.05 -> 0.1\).*--restart"):
        Trainer(module, demo_subset("train", 8), demo_subset("test", 2), cfg, tmp_path / "run").fit()


def test_adamw_groups_and_logs(tmp_path):
    from distill.train.trainer import build_optimizer

    model = TinyCNN()
    params = list(model.parameters())
    opt = build_optimizer(params, TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    decays = {p.ndim > 1: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays == {True: 0.05, False: 0.0}  # no decay on biases and norm weights with AdamW
    module = make_module()
    cfg = TrainConfig(epochs=1, batch_size=20, optimizer="adamw", lr=1e-3, progress=False, log_every=1)
    Trainer(module, demo_subset("train", 4), demo_subset("test", 1), cfg, tmp_path).fit()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "summary.json").exists() and (tmp_path / "student.safetensors").exists()


def test_checkpoints_from_before_a_new_setting_stay_resumable(tmp_path):
    from distill.train.trainer import _train_config_defaults

    cfg = TrainConfig(epochs=1, batch_size=20, progress=False)
    trainer = Trainer(make_module(), demo_subset("train", 4), None, cfg, tmp_path)
    new = trainer._recipe(trainer.module)
    # an older checkpoint's recipe lacks a key added later (here the optimiser's momentum): at its default, the run
    # computes what the old code computed, so resuming is allowed
    old = {k: v for k, v in new.items() if k != "momentum"}
    assert new["momentum"] == _train_config_defaults()["momentum"]
    trainer._check_recipe(tmp_path / "ckpt", old, new)
    # the same missing key with a non-default value is a real change
    changed = dict(new, momentum=repr(0.5))
    with pytest.raises(ValueError, match=r"momentum: - -> 0.5"):
        trainer._check_recipe(tmp_path / "ckpt", old, changed)
