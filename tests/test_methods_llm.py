"""LM divergences (FKL, RKL, GJSD, TVD, skew KL, TAID): maths against hand-computed values, masks, top-k, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from distill.core.method import METHODS
from distill.core.outputs import ModelOutput, StepInputs
from distill.core.topk import TopKLogits
from distill.methods.lm_divergences import (
    TAID,
    ForwardKL,
    GeneralizedJSD,
    NextTokenCE,
    ReverseKL,
    SkewForwardKL,
    SkewReverseKL,
    TotalVariation,
)

YAML_EXAMPLES = {
    "fkl": "{name: fkl, weight: 1.0, temperature: 1.0, reduction: token_mean}",
    "rkl": "{name: rkl, weight: 1.0}",
    "gjsd": "{name: gjsd, weight: 1.0, beta: 0.5}",
    "tvd": "{name: tvd, weight: 1.0, t2_scale: true, temperature: 2.0}",
    "skl": "{name: skl, weight: 1.0, alpha: 0.1}",
    "srkl": "{name: srkl, weight: 1.0, alpha: 0.1}",
    "taid": "{name: taid, weight: 1.0, t_start: 0.4, t_end: 1.0, alpha: 5.0e-4, beta: 0.99}",
    "lm_ce": "{name: lm_ce, weight: 1.0}",
    "uld": "{name: uld, weight: 1.5, student_temperature: 1.0, teacher_temperature: 1.0}",
}

ZS = [1.0, 2.0, 0.0]
ZT = [3.0, 0.0, 1.0]


def softmax(z):
    e = [math.exp(v) for v in z]
    s = sum(e)
    return [v / s for v in e]


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


Q, P = softmax(ZS), softmax(ZT)


def step_inputs(zs, zt, labels=None, topk_k=None, progress=0.0):
    """(B, T, V) logits from rows: position 0 holds the distributions, position 1 is the dropped last position."""
    zs = torch.as_tensor(zs, dtype=torch.float32)
    zt = torch.as_tensor(zt, dtype=torch.float32)
    if zs.dim() == 1:
        zs = torch.stack([zs, torch.zeros_like(zs)]).unsqueeze(0)
        zt = torch.stack([zt, torch.zeros_like(zt)]).unsqueeze(0)
    teacher = ModelOutput(zt) if topk_k is None else ModelOutput(None, topk=TopKLogits.from_logits(zt, topk_k))
    return StepInputs(ModelOutput(zs), teacher, labels, progress=progress)


def loss_of(method, zs=ZS, zt=ZT, **kw):
    return float(method(step_inputs(zs, zt, **kw))["loss"])


def test_forward_reverse_kl_and_tvd_match_hand_computed_values():
    assert loss_of(ForwardKL()) == pytest.approx(kl(P, Q), rel=1e-5)
    assert loss_of(ReverseKL()) == pytest.approx(kl(Q, P), rel=1e-5)
    assert loss_of(TotalVariation()) == pytest.approx(0.5 * sum(abs(p - q) for p, q in zip(P, Q)), rel=1e-5)
    entropy = -sum(p * math.log(p) for p in P)
    assert loss_of(ForwardKL(ce_form=True)) == pytest.approx(kl(P, Q) + entropy, rel=1e-5)
    assert kl(P, Q) != pytest.approx(kl(Q, P), rel=1e-2)  # the two directions really differ here


def test_generalized_jsd_follows_trl_convention_including_endpoints():
    for beta in (0.3, 0.5, 0.9):
        m = [beta * p + (1 - beta) * q for p, q in zip(P, Q)]
        want = beta * kl(P, m) + (1 - beta) * kl(Q, m)
        assert loss_of(GeneralizedJSD(beta=beta)) == pytest.approx(want, rel=1e-5)
    assert loss_of(GeneralizedJSD(beta=0.0)) == pytest.approx(kl(P, Q), rel=1e-6)  # forward at beta = 0
    assert loss_of(GeneralizedJSD(beta=1.0)) == pytest.approx(kl(Q, P), rel=1e-6)  # reverse at beta = 1
    # the interior tends to beta * FKL near 0: about 100x smaller than the beta = 0 endpoint at beta = 0.01
    assert loss_of(GeneralizedJSD(beta=0.01)) == pytest.approx(0.01 * kl(P, Q), rel=0.05)
    # DistiLLM's js_distance(lambda) = lambda KL(q||M') + (1 - lambda) KL(p||M'), M' = (1-lambda) p + lambda q
    lam = 0.9
    m2 = [(1 - lam) * p + lam * q for p, q in zip(P, Q)]
    assert loss_of(GeneralizedJSD(beta=1 - lam)) == pytest.approx(lam * kl(Q, m2) + (1 - lam) * kl(P, m2), rel=1e-4)
    with pytest.raises(ValueError, match="beta"):
        GeneralizedJSD(beta=1.5)


def test_skew_kls_match_distillm_definitions():
    a = 0.1
    mix = [a * p + (1 - a) * q for p, q in zip(P, Q)]
    assert loss_of(SkewForwardKL(alpha=a)) == pytest.approx(kl(P, mix), rel=1e-5)
    ce = -sum(p * math.log(m) for p, m in zip(P, mix))
    assert loss_of(SkewForwardKL(alpha=a, ce_form=True)) == pytest.approx(ce, rel=1e-5)
    rmix = [(1 - a) * p + a * q for p, q in zip(P, Q)]
    assert loss_of(SkewReverseKL(alpha=a)) == pytest.approx(kl(Q, rmix), rel=1e-5)
    assert loss_of(SkewForwardKL(alpha=0.0)) == pytest.approx(kl(P, Q), rel=1e-6)
    assert loss_of(SkewReverseKL(alpha=0.0)) == pytest.approx(kl(Q, P), rel=1e-6)


def test_temperature_divides_both_logits_and_t2_scale_multiplies():
    tau = 2.0
    qt, pt = softmax([v / tau for v in ZS]), softmax([v / tau for v in ZT])
    assert loss_of(ForwardKL(temperature=tau)) == pytest.approx(kl(pt, qt), rel=1e-5)
    assert loss_of(ForwardKL(temperature=tau, t2_scale=True)) == pytest.approx(tau**2 * kl(pt, qt), rel=1e-5)


def test_shift_and_token_mask_and_reductions():
    torch.manual_seed(0)
    zs, zt = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    labels = torch.tensor([[1, 2, -100, 3], [-100, 4, 4, -100]])  # shifted mask: [[T,F,T],[T,T,F]]
    per = ForwardKL(reduction="none")(step_inputs(zs, zt, labels))["loss"]
    assert per.shape == (2, 3)
    dense = torch.stack([torch.stack([torch.tensor(kl(torch.softmax(zt[b, t], 0).tolist(),
                                                      torch.softmax(zs[b, t], 0).tolist())) for t in range(3)])
                         for b in range(2)])
    mask = torch.tensor([[True, False, True], [True, True, False]])
    assert torch.allclose(per, torch.where(mask, dense, torch.zeros(())), atol=1e-5)
    assert float(ForwardKL()(step_inputs(zs, zt, labels))["loss"]) == pytest.approx(float(dense[mask].mean()), rel=1e-5)
    assert float(ForwardKL(reduction="sum")(step_inputs(zs, zt, labels))["loss"]) == pytest.approx(
        float(dense[mask].sum()), rel=1e-5)
    assert float(ForwardKL(reduction="batch_mean")(step_inputs(zs, zt, labels))["loss"]) == pytest.approx(
        float(dense[mask].sum()) / 2, rel=1e-5)
    # the last position never counts (it predicts nothing)
    zs2 = zs.clone()
    zs2[:, -1] += 5.0
    assert torch.equal(ForwardKL(reduction="none")(step_inputs(zs2, zt, labels))["loss"], per)


def test_masked_vocabulary_entries_are_zeroed():
    zs = torch.tensor([[[1.0, 2.0, 0.0, -math.inf], [0.0, 0.0, 0.0, -math.inf]]])
    zt = torch.tensor([[[3.0, 0.0, 1.0, -math.inf], [0.0, 0.0, 0.0, -math.inf]]])
    for method, want in ((ForwardKL(), kl(P, Q)), (ReverseKL(), kl(Q, P))):
        val = float(method(step_inputs(zs, zt))["loss"])
        assert val == pytest.approx(want, rel=1e-5)


def test_topk_teacher_buckets_are_exact_at_full_k_and_a_lower_bound_below():
    torch.manual_seed(1)
    zs, zt = torch.randn(2, 3, 12), 2 * torch.randn(2, 3, 12)
    for cls in (ForwardKL, ReverseKL, GeneralizedJSD, TotalVariation, SkewForwardKL, SkewReverseKL):
        dense = float(cls()(step_inputs(zs, zt))["loss"])
        full = float(cls()(step_inputs(zs, zt, topk_k=12))["loss"])
        assert full == pytest.approx(dense, rel=1e-4), cls.__name__
        sparse = float(cls()(step_inputs(zs, zt, topk_k=3))["loss"])
        assert sparse <= dense + 1e-6, cls.__name__  # data-processing inequality for f-divergences
        assert sparse > 0


def test_bucketed_kl_is_the_kl_of_the_coarsened_distributions():
    zs, zt = torch.tensor(ZS + [0.5]), torch.tensor(ZT + [-1.0])
    p, q = torch.softmax(zt, 0).tolist(), torch.softmax(zs, 0).tolist()
    # top-2 of the teacher are ids 0 and 2; buckets: {0}, {2}, tail {1, 3}
    pb, qb = [p[0], p[2], p[1] + p[3]], [q[0], q[2], q[1] + q[3]]
    assert loss_of(ForwardKL(), zs, zt, topk_k=2) == pytest.approx(kl(pb, qb), rel=1e-5)


@pytest.mark.parametrize("cls", [ForwardKL, ReverseKL, GeneralizedJSD, TotalVariation, SkewForwardKL,
                                 SkewReverseKL, TAID])
@pytest.mark.parametrize("topk", [None, 4])
def test_gradient_reaches_student_never_teacher(cls, topk):
    torch.manual_seed(2)
    zs = torch.randn(2, 4, 9, requires_grad=True)
    zt = torch.randn(2, 4, 9, requires_grad=True)
    method = cls()
    teacher = ModelOutput(zt) if topk is None else ModelOutput(None, topk=TopKLogits.from_logits(zt, topk))
    labels = torch.tensor([[0, 1, 2, -100], [3, -100, 4, 5]])
    loss = method(StepInputs(ModelOutput(zs), teacher, labels))["loss"]
    loss.backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None
    assert zs.grad[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_next_token_ce_is_shifted_and_masked():
    zs = torch.tensor([[ZS, [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[0, 1, -100]])
    got = float(NextTokenCE()(StepInputs(ModelOutput(zs), None, labels))["loss"])
    assert got == pytest.approx(-math.log(Q[1]), rel=1e-6)


# -- TAID -----------------------------------------------------------------------------------------------------
def test_taid_target_is_the_logit_space_interpolation():
    zs, zt = torch.tensor(ZS), torch.tensor(ZT)
    target = TAID.interpolated_target(zs, zt, 0.4).exp()
    assert torch.allclose(target, torch.tensor([0.556976, 0.305675, 0.137349]), atol=1e-6)
    wrong = torch.tensor([0.484355, 0.415949, 0.099696])  # the probability mixture, which TAID is not
    assert not torch.allclose(target, wrong, atol=1e-3)
    method = TAID(t_start=0.4).eval()  # eval: no update of t
    assert loss_of(method) == pytest.approx(1.239280, abs=1e-6)


def test_taid_gradient_is_zero_at_t0_and_j_is_fkl_plus_entropy_at_t1():
    zs = torch.tensor([[ZS, [0.0, 0.0, 0.0]]], requires_grad=True)
    zt = torch.tensor([[ZT, [0.0, 0.0, 0.0]]])
    m = TAID(t_start=0.0).eval()
    m(StepInputs(ModelOutput(zs), ModelOutput(zt), None))["loss"].backward()
    assert zs.grad.abs().max() < 1e-7
    m1 = TAID(t_start=0.0).eval()
    m1.t.fill_(1.0)
    entropy = -sum(p * math.log(p) for p in P)
    assert loss_of(m1) == pytest.approx(kl(P, Q) + entropy, rel=1e-5)


@pytest.mark.parametrize("case", ["dense", "topk", "masked_vocab", "t1", "many_blocks"])
def test_taid_rows_value_and_gradient_equal_autograd_on_the_formula(case):
    """The blocked TAID rows with their written-out gradient against autograd on the official formula."""
    from distill.methods.llm.taid import taid_rows, taid_rows_reference

    gen = torch.Generator().manual_seed(5)
    n, v, t = 7, 40, 0.4
    if case == "t1":
        t = 1.0
    if case == "many_blocks":  # more rows than one CPU block (2**20 // v)
        n, v = 2500, 1000
    zs = torch.randn(2, n, v, generator=gen, dtype=torch.float64) * 2
    zt = torch.randn(2, n, v, generator=gen, dtype=torch.float64) * 2
    if case == "masked_vocab":  # padded vocabulary rows: -inf in both models' logits
        zs[..., -3:] = -math.inf
        zt[..., -3:] = -math.inf
    teacher = TopKLogits.from_logits(zt, 5) if case in ("topk", "many_blocks") else zt
    g = torch.randn(2, n, generator=gen, dtype=torch.float64)
    za, zb = zs.clone().requires_grad_(), zs.clone().requires_grad_()
    got, want = taid_rows(za, teacher, t), taid_rows_reference(zb, teacher, t)
    torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-6)
    (got * g).sum().backward()
    (want * g.float()).sum().backward()
    assert torch.isfinite(za.grad).all()
    torch.testing.assert_close(za.grad.float(), zb.grad.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("total, want_t, want_m", [(10**12, (0.40015008, 0.40030015), (0.001, 0.0015456)),
                                                   (100, (0.406, 0.412), None)])
def test_taid_update_rule_matches_the_official_code(total, want_t, want_m):
    m = TAID(t_start=0.4, alpha=5e-4, beta=0.99)
    for step, loss in enumerate((2.0, 1.8, 1.7)):
        m.update(loss, step / total)
        if step == 0:
            assert float(m.t) == pytest.approx(0.4) and float(m.prev) == 2.0
        else:
            assert float(m.t) == pytest.approx(want_t[step - 1], abs=1e-8)
            if want_m is not None:
                assert float(m.m) == pytest.approx(want_m[step - 1], abs=1e-7)
    assert float(m.prev) == 1.7


def test_taid_updates_only_in_training_and_state_round_trips():
    m = TAID(t_start=0.4, alpha=0.5)
    zs = torch.randn(1, 3, 6)
    zt = torch.randn(1, 3, 6)
    m.eval()
    m(StepInputs(ModelOutput(zs), ModelOutput(zt), None, progress=0.5))
    assert math.isnan(float(m.prev)) and float(m.t) == 0.4
    m.train()
    for i in range(3):
        m(StepInputs(ModelOutput(zs * (1 - 0.2 * i)), ModelOutput(zt), None, progress=0.1 * i))
    state = {k: v.clone() for k, v in m.state_dict().items()}
    fresh = TAID(t_start=0.4, alpha=0.5)
    fresh.load_state_dict(state)
    for k in ("t", "m", "prev"):
        assert torch.equal(getattr(fresh, k), getattr(m, k))
    assert float(m.t) > 0.4


def test_taid_disable_adaptive_is_linear():
    m = TAID(t_start=0.2, disable_adaptive=True)
    for step in range(3):
        m.update(1.0 / (step + 1), step / 10)
    assert float(m.t) == pytest.approx(0.2 + 0.8 * 0.2)


def test_registered_with_provenance():
    for name in ("fkl", "rkl", "gjsd", "tvd", "skl", "srkl", "taid"):
        entry = METHODS.entry(name) if hasattr(METHODS, "entry") else None
        assert METHODS.get(name) is not None
        if entry is not None:
            assert entry.provenance is not None and entry.provenance.paper
    assert METHODS.get("taid").accepts_topk_teacher and METHODS.get("fkl").accepts_topk_teacher


@pytest.mark.parametrize("cls", [ForwardKL, ReverseKL, GeneralizedJSD, TotalVariation, SkewForwardKL,
                                 SkewReverseKL, TAID])
def test_gradients_stay_finite_with_empty_tail_buckets_and_masked_vocab_rows(cls):
    # a top-k teacher whose kept probabilities sum to 1 (fp16 rounding): the tail bucket is empty although
    # tokens remain; and logits with a -inf (padded) column in both models
    zs = torch.tensor([[[1.0, 2.0, 0.0, 0.5, -math.inf], [0.0] * 4 + [-math.inf]]], requires_grad=True)
    idx = torch.tensor([[[0, 2], [0, 1]]])
    lp = torch.log(torch.tensor([[[0.6, 0.4], [0.5, 0.5]]]))
    sparse = ModelOutput(None, topk=TopKLogits(idx, lp, 5))
    zt = torch.tensor([[[3.0, 0.0, 1.0, 0.2, -math.inf], [0.0] * 4 + [-math.inf]]])
    for teacher in (sparse, ModelOutput(zt)):
        zs.grad = None
        loss = cls()(StepInputs(ModelOutput(zs), teacher, None))["loss"]
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(zs.grad).all(), cls.__name__
        assert zs.grad.abs().sum() > 0


def test_reverse_kl_scores_student_mass_in_an_empty_teacher_tail():
    idx = torch.tensor([[[0, 2], [0, 1]]])
    lp = torch.log(torch.tensor([[[0.6, 0.4], [0.5, 0.5]]]))
    sparse = ModelOutput(None, topk=TopKLogits(idx, lp, 4))
    # a student that puts almost everything on the two tokens outside the teacher's top-2
    zs = torch.tensor([[[-5.0, 5.0, -5.0, 5.0], [0.0] * 4]])
    assert float(ReverseKL()(StepInputs(ModelOutput(zs), sparse, None))["loss"]) > 10.0


def test_nan_student_logits_are_not_silently_masked():
    zs = torch.full((1, 2, 3), float("nan"))
    assert torch.isnan(ReverseKL()(StepInputs(ModelOutput(zs), ModelOutput(torch.zeros(1, 2, 3)), None))["loss"])
