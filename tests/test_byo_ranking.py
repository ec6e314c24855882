"""Bring-your-own ranking collections: BEIR's layout as downloaded (corpus.jsonl, queries.jsonl, qrels/test.tsv with
its header row), MS MARCO-style TSV; broken files refused with the key, the file and the line."""

from __future__ import annotations

import json

import pytest
import yaml

from distill.config import ConfigError, parse_config
from distill.text.ir_data import FormatError, load_collection, read_qrels, read_tsv_texts

DOCS = {"d1": "lift on a wing", "d2": "shock wave drag", "d3": "laminar boundary layer"}
QUERIES = {"q1": "wing lift", "q2": "boundary layer"}


def beir(tmp_path, qrels_lines):
    (tmp_path / "qrels").mkdir(exist_ok=True)
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n"
                                                   for k, v in DOCS.items()))
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n"
                                                    for k, v in QUERIES.items()))
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(qrels_lines))
    return tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl", tmp_path / "qrels" / "test.tsv"


def test_beir_qrels_with_their_header_row_load(tmp_path):
    coll = load_collection(*beir(tmp_path, ["q1\td1\t1\n", "q2\td3\t2\n"]))
    assert coll.qrels == {"q1": {"d1": 1}, "q2": {"d3": 2}} and coll.docs == DOCS and coll.queries == QUERIES
    # a non-numeric grade after the first line is still an error naming the line
    (tmp_path / "bad.tsv").write_text("q1\td1\t1\nq2\td3\thigh\n")
    with pytest.raises(FormatError, match=r"bad\.tsv, line 2: grade 'high' is not a number"):
        read_qrels(tmp_path / "bad.tsv")


def test_jsonl_records_without_an_id_or_with_a_null_text_are_refused_naming_the_line(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"_id": "a", "text": "x"}\n{"title": "t", "text": "y"}\n'
                                      '{"_id": "c", "text": "z"}\n')
    with pytest.raises(FormatError, match=r"c\.jsonl, line 2: no '_id' \(or 'id'\)"):
        read_tsv_texts(tmp_path / "c.jsonl")
    (tmp_path / "n.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": null}\n')
    with pytest.raises(FormatError, match=r"n\.jsonl, line 2: 'text' is NoneType"):
        read_tsv_texts(tmp_path / "n.jsonl")


def ranking_cfg(tmp_path, **data):
    raw = {"task": "ranking", "data": data, "student": {"arch": "static"}, "methods": [{"name": "margin_mse"}],
           "teacher": {"scores": "scores.tsv"}}
    return parse_config(yaml.safe_load(yaml.safe_dump(raw)), base_dir=tmp_path)


def test_ranking_errors_name_the_key_file_and_line(tmp_path):
    from distill.tasks.ranking.data import load_ranking_collection

    docs, queries, _ = beir(tmp_path, [])
    (tmp_path / "q.txt").write_text("q1 0 d1 1\nq2 0 d9 1\n")
    for fmt in ("auto", "jsonl"):
        cfg = ranking_cfg(tmp_path, docs=docs.name, queries=queries.name, qrels="q.txt", format=fmt)
        with pytest.raises(ConfigError, match=r"^data\.qrels: .*q\.txt, line 2: judged documents not in .*\['d9'\]"):
            load_ranking_collection(cfg)
    (tmp_path / "q.txt").write_text("1 0 d1 1\n2 0 d3 1\n")  # ids that never match the queries' q1, q2
    with pytest.raises(ConfigError, match=r"^data\.qrels: .*q\.txt: none of its query ids"):
        load_ranking_collection(ranking_cfg(tmp_path, docs=docs.name, queries=queries.name, qrels="q.txt"))
    (tmp_path / "d.tsv").write_text("d1\tlift\nd2\ta\tb\tc\n")
    with pytest.raises(ConfigError, match=r"^data\.docs: .*d\.tsv, line 2: expected 'id<TAB>text'"):
        load_ranking_collection(ranking_cfg(tmp_path, docs="d.tsv", queries=queries.name, qrels="q.txt"))


def test_queries_a_score_file_leaves_unscored_are_reported_not_dropped_silently(tmp_path):
    from distill.tasks.ranking.data import load_ranking_collection, training_groups

    docs, queries, qrels = beir(tmp_path, ["q1\td1\t1\n", "q2\td3\t1\n"])
    cfg = ranking_cfg(tmp_path, docs=docs.name, queries=queries.name, qrels="qrels/test.tsv", num_negatives=1)
    coll = load_ranking_collection(cfg)
    scores = {("q1", "d1"): 2.0, ("q1", "d2"): 0.5, ("q2", "d3"): 1.0}  # q2 has no scored negative
    with pytest.warns(UserWarning, match=r"teacher\.scores: 1 of 2 training queries .* e\.g\. 'q2'"):
        groups = training_groups(cfg, coll, scores)
    assert len(groups) == 1
    with pytest.raises(ConfigError, match=r"^teacher\.scores: 2 of 2 training queries .*no training groups"):
        training_groups(cfg, coll, {("q1", "d1"): 2.0, ("q2", "d3"): 1.0})
