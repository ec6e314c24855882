"""Dense2MoE (row 11): the split is exact, Taylor scores and the balance / feature losses against hand values,
parameter counts, which parameters each stage trains (the dense teacher never), and the tiny pipeline end to end."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.config import ConfigError
from distill.pipelines.methods.dense2moe import (
    MoEFFN,
    balance_loss,
    distil_layer,
    expert_entropy,
    feature_loss,
    moefy_mlp,
    neuron_scores,
    split_neurons,
    taylor_scores,
)
from distill.pipelines.pipeline import PipelineError, load_pipeline, load_stage, parse_pipeline, run_pipeline

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pipelines" / "tiny_dense2moe.yaml"


class SwiGLU(nn.Module):
    """A Llama-style MLP: down(silu(gate x) * up x)."""

    def __init__(self, d: int, hidden: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)
        self.act_fn = F.silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_converted_ffn_equals_the_dense_one_with_every_expert_at_weight_one():
    mlp = SwiGLU(8, 16)
    s_idx, e_idx = split_neurons(torch.rand(16), 16, 4, 4, generator=torch.Generator().manual_seed(1))
    ffn = moefy_mlp(mlp, s_idx, e_idx, k=4)
    ffn.gates = lambda x: torch.ones(*x.shape[:-1], 4)  # k = n, every gate weight 1
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(ffn(x), mlp(x), atol=1e-5, rtol=0)
    ffn.gates = MoEFFN.gates.__get__(ffn)  # the real router: top-2 of 4 no longer equals the dense FFN
    ffn.active_k = 2
    assert not torch.allclose(ffn(x), mlp(x), atol=1e-3)


def test_split_puts_the_best_neurons_in_the_shared_expert_and_deals_the_rest_equally():
    scores = torch.tensor([0.1, 5.0, 0.3, 4.0, 0.2, 0.9, 3.0, 0.0])
    shared, experts = split_neurons(scores, 8, 2, 3, generator=torch.Generator().manual_seed(0))
    assert shared.tolist() == [1, 3]
    assert [len(e) for e in experts] == [2, 2, 2]
    assert sorted(torch.cat([shared, *experts]).tolist()) == list(range(8))
    _, contiguous = split_neurons(scores, 8, 2, 3, mode="contiguous")
    assert [e.tolist() for e in contiguous] == [[5, 6], [2, 4], [0, 7]]  # ranks 3-4 (6, 5), 5-6 (2, 4), 7-8 (0, 7)
    with pytest.raises(ValueError, match="do not split"):
        split_neurons(scores, 8, 3, 3)


class FixedGradModel(nn.Module):
    """model.model.layers[0].mlp with 2x2 weights; loss = sum(W * C) per weight, so dL/dW = C exactly."""

    def __init__(self):
        super().__init__()
        mlp = SwiGLU(2, 2)
        with torch.no_grad():
            mlp.gate_proj.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
            mlp.up_proj.weight.copy_(torch.tensor([[0.0, 1.0], [-1.0, 2.0]]))
            mlp.down_proj.weight.copy_(torch.tensor([[2.0, -1.0], [1.0, 1.0]]))
        self.model = SimpleNamespace(layers=[SimpleNamespace(mlp=mlp)])
        self.mlp = mlp
        self.c = {"gate": torch.tensor([[0.5, 1.0], [-1.0, 2.0]]), "up": torch.tensor([[3.0, -1.0], [1.0, 1.0]]),
                  "down": torch.tensor([[1.0, 2.0], [-0.5, 1.0]])}

    def forward(self, input_ids, labels=None):
        m = self.mlp
        loss = ((m.gate_proj.weight * self.c["gate"]).sum() + (m.up_proj.weight * self.c["up"]).sum()
                + (m.down_proj.weight * self.c["down"]).sum())
        return SimpleNamespace(loss=loss)


def test_taylor_score_of_a_neuron_matches_the_hand_computed_sum_of_abs_w_times_g():
    model = FixedGradModel()
    scores = taylor_scores(model, [torch.zeros(1, 3, dtype=torch.long)] * 2, [0])  # two batches: summed
    # neuron 0: gate row |1*.5|+|-2*1| = 2.5; up row |0*3|+|1*-1| = 1; down column |2*1|+|1*-.5| = 2.5 -> 6
    # neuron 1: gate |3*-1|+|.5*2| = 4; up |-1*1|+|2*1| = 3; down |-1*2|+|1*1| = 3 -> 10
    assert scores[0].tolist() == pytest.approx([2 * 6.0, 2 * 10.0])
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert neuron_scores(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3, 2)).tolist() == [9.0, 9.0]


def test_balance_loss_is_one_for_uniform_routing_and_matches_a_hand_case():
    n = 4
    probs = torch.full((8, n), 1 / n)
    topk = torch.tensor([[0, 1], [2, 3]] * 4)
    assert float(balance_loss(probs, topk, n)) == pytest.approx(1.0)
    assert expert_entropy(topk, n) == pytest.approx(math.log(4))
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    # F = [1, 0] (both tokens to expert 0), P = [0.65, 0.35] -> 2 * 0.65
    assert float(balance_loss(probs, torch.tensor([[0], [0]]), 2)) == pytest.approx(1.3)
    assert expert_entropy(torch.tensor([[0], [0]]), 2) == 0.0


def test_feature_loss_is_the_squared_error_normalised_by_the_teacher_energy():
    t = torch.tensor([[1.0, 2.0], [2.0, 0.0]])  # E||t||^2 = (5 + 4) / 2 = 4.5
    s = torch.tensor([[0.0, 2.0], [2.0, 1.0]])  # E||t - s||^2 = (1 + 1) / 2 = 1
    assert float(feature_loss(s, t)) == pytest.approx(1 / 4.5)


def test_parameter_counts_total_kept_and_active_fraction_is_the_papers():
    mlp = SwiGLU(8, 16)
    s_idx, e_idx = split_neurons(torch.rand(16), 16, 4, 12, generator=torch.Generator().manual_seed(0))
    ffn = moefy_mlp(mlp, s_idx, e_idx, k=2)  # 4 shared + 12 x 1, top-2: (4 + 2) / 16 = 37.5 %
    experts = sum(p.numel() for p in ffn.parameters()) - ffn.router.weight.numel()
    assert experts == sum(p.numel() for p in mlp.parameters())
    assert ffn.active_parameters() / (3 * 8 * 16) == pytest.approx(0.375)


def test_each_stage_trains_its_own_parameters_and_never_the_dense_teacher():
    mlp = SwiGLU(8, 16)
    dense = {k: v.clone() for k, v in mlp.state_dict().items()}
    s_idx, e_idx = split_neurons(torch.rand(16), 16, 4, 4, generator=torch.Generator().manual_seed(0))
    ffn = moefy_mlp(mlp, s_idx, e_idx, k=2)
    x = torch.randn(64, 8)
    y = mlp(x).detach()
    before = {k: v.clone() for k, v in ffn.state_dict().items()}
    distil_layer(ffn, x, y, "shared", 3, 16, 1e-2, generator=torch.Generator().manual_seed(0))
    after1 = {k: v.clone() for k, v in ffn.state_dict().items()}
    changed1 = {k for k in before if not torch.equal(before[k], after1[k])}
    assert changed1 == {"gate_s.weight", "up_s.weight", "down_s.weight"}
    assert ffn.active_k == 0
    distil_layer(ffn, x, y, "routed", 3, 16, 1e-2, generator=torch.Generator().manual_seed(0))
    changed2 = {k for k in after1 if not torch.equal(after1[k], ffn.state_dict()[k])}
    assert changed2 == {"gate_r.weight", "up_r.weight", "down_r.weight", "router.weight"}
    assert ffn.active_k == 2
    # the router gets a gradient from the balance term and from the output; the teacher none
    ffn.zero_grad()
    out = ffn(x)
    (feature_loss(out, y) + balance_loss(ffn.last_probs, ffn.last_topk, ffn.n)).backward()
    assert ffn.router.weight.grad is not None and ffn.router.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in mlp.parameters())
    assert all(torch.equal(v, dense[k]) for k, v in mlp.state_dict().items())


def test_bad_pipeline_options_are_refused_naming_the_key(tmp_path):
    base = {"model": {"random_llama": {"hidden_size": 16}}, "text": "x.txt", "layers": [0]}
    with pytest.raises((PipelineError, ConfigError), match="shared"):
        parse_pipeline({"output_dir": str(tmp_path), "stages": [
            {"name": "s", "kind": "dense2moe_scores", "options": base},
            {"name": "c", "kind": "dense2moe_convert", "inputs": {"scores": "s"},
             "options": {"experts": 4, "top_k": 2}}]})
    with pytest.raises((PipelineError, ConfigError), match="gguf"):
        parse_pipeline({"output_dir": str(tmp_path), "stages": [
            {"name": "s", "kind": "dense2moe_scores", "options": {**base, "model": {}}}]})
    load_pipeline(REPO / "configs" / "pipelines" / "dense2moe_smollm2.yaml")  # the shipped recipe validates


def test_tiny_pipeline_runs_and_reports(tmp_path, shared):
    shared("data", "tinyshakespeare", "input.txt")
    pipe = load_pipeline(TINY, [f"output_dir={tmp_path / 'out'}"])
    run_pipeline(pipe, log=lambda m: None)
    art = load_stage(tmp_path / "out", "convert")
    meta = art.meta
    assert meta["active_fraction"] == pytest.approx((12 + 2 * 3) / 48)
    assert math.isfinite(meta["perplexity"]) and 0 <= meta["agreement"] <= 1
    assert len(meta["expert_entropy"]) == 1 and 0 < meta["expert_entropy"][0] <= meta["ln_experts"] + 1e-6
    ffn = art.table("ffn")
    assert ffn["router"].shape == (1, 12, 16) and ffn["gate_s"].shape == (1, 12, 16)


def test_gate_flags_keep_k_experts_and_renormalise_as_asked():
    mlp = SwiGLU(8, 16)
    s_idx, e_idx = split_neurons(torch.rand(16), 16, 4, 4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 8)
    plain = moefy_mlp(mlp, s_idx, e_idx, k=2, router_std=1.0)
    g = plain.gates(x)
    probs = plain.router(x).softmax(-1)
    assert ((g > 0).sum(-1) == 2).all()
    torch.testing.assert_close(g.sum(-1), probs.topk(2, -1).values.sum(-1))  # unrenormalised: < 1
    renorm = moefy_mlp(mlp, s_idx, e_idx, k=2, router_std=1.0, renormalise=True)
    torch.testing.assert_close(renorm.gates(x).sum(-1), torch.ones(5))
    after = moefy_mlp(mlp, s_idx, e_idx, k=2, router_std=1.0, softmax_after_topk=True)
    torch.testing.assert_close(after.gates(x), renorm.gates(x))  # softmax over the kept logits = renormalised
