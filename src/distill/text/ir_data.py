"""Retrieval test collections: documents, queries and graded judgments, read from the formats users bring.

Supported formats:

- the SMART files of Cranfield as distributed (``cran.all.1400``, ``cran.qry``, ``cranqrel``; fields ``.I``,
  ``.T``, ``.A``, ``.B``, ``.W``), with the collection's quirk handled: ``cranqrel`` numbers the queries by their
  1-based *position* in ``cran.qry``, not by their ``.I`` number, and its grades run 1 (most relevant) to 4
  (least), -1 meaning not relevant;
- TREC qrels (``qid 0 docid grade``, larger grade = more relevant) and the three-column ``qid docid grade`` form;
- TSV queries and collections as in MS MARCO (``id<TAB>text``), and TSV/JSONL with a title column.

Every reader fails with the file and the line that could not be read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class FormatError(ValueError):
    """A retrieval file that cannot be read; the message names the file and the line."""


@dataclass
class RetrievalCollection:
    """``docs`` and ``queries`` map ids to text; ``qrels[qid][docid]`` is a gain (> 0 relevant, larger better)."""

    docs: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    titles: dict[str, str] = field(default_factory=dict)

    def subset_queries(self, qids: list[str]) -> RetrievalCollection:
        missing = [q for q in qids if q not in self.queries]
        if missing:
            raise KeyError(f"queries not in the collection: {missing[:5]}")
        return RetrievalCollection(self.docs, {q: self.queries[q] for q in qids},
                                   {q: self.qrels.get(q, {}) for q in qids}, self.titles)

    def judged_queries(self) -> list[str]:
        """Queries with at least one relevant document, in collection order."""
        return [q for q in self.queries if any(g > 0 for g in self.qrels.get(q, {}).values())]


def _lines(path: Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 text ({e})") from None


def read_smart(path: str | Path) -> list[dict[str, str]]:
    """Records of a SMART file: each starts with ``.I <id>``; fields are ``.X`` markers followed by text lines.

    Returns ``[{"id": ..., "T": ..., "W": ..., ...}]`` in file order, whitespace-normalised."""
    path = Path(path)
    records: list[dict[str, str]] = []
    current: dict[str, list[str]] | None = None
    field_name: str | None = None
    for lineno, line in enumerate(_lines(path), 1):
        if line.startswith(".I"):
            parts = line.split()
            if len(parts) != 2:
                raise FormatError(f"{path}, line {lineno}: expected '.I <id>', got {line!r}")
            if current is not None:
                records.append({k: " ".join(" ".join(v).split()) for k, v in current.items()})
            current = {"id": [parts[1]]}
            field_name = None
        elif len(line) >= 2 and line[0] == "." and line[1].isalpha() and line[2:].strip() == "":
            if current is None:
                raise FormatError(f"{path}, line {lineno}: field {line.strip()!r} before the first '.I' record")
            field_name = line[1]
            current.setdefault(field_name, [])
        else:
            if current is None or field_name is None:
                if line.strip():
                    raise FormatError(f"{path}, line {lineno}: text outside a field ({line[:40]!r})")
                continue
            current[field_name].append(line)
    if current is not None:
        records.append({k: " ".join(" ".join(v).split()) for k, v in current.items()})
    if not records:
        raise FormatError(f"{path}: no '.I' records found (is this a SMART file?)")
    return records


def read_qrels(path: str | Path, *, cranfield_grades: bool = False) -> dict[str, dict[str, int]]:
    """TREC qrels (``qid iter docid grade``) or three columns (``qid docid grade``), whitespace-separated.

    With ``cranfield_grades`` the Cranfield codes are converted to gains: 1..4 -> 4..1 (gain = 5 - code), and
    codes <= 0 or > 4 become 0 (not relevant). Otherwise grades are taken as gains (<= 0: not relevant). A header
    row (BEIR's ``query-id corpus-id score``) is skipped."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in enumerate(_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 4:
            qid, _, docid, grade = parts
        elif len(parts) == 3:
            qid, docid, grade = parts
        else:
            raise FormatError(f"{path}, line {lineno}: expected 'qid 0 docid grade' or 'qid docid grade', "
                              f"got {len(parts)} fields: {line!r}")
        try:
            g = int(float(grade))
        except ValueError:
            if not qrels and lineno == first_line(path) and not grade.lstrip("-").replace(".", "", 1).isdigit():
                continue  # a header row, as BEIR's qrels/*.tsv start with ("query-id corpus-id score")
            raise FormatError(f"{path}, line {lineno}: grade {grade!r} is not a number") from None
        if cranfield_grades:
            g = 5 - g if 1 <= g <= 4 else 0
        qrels.setdefault(qid, {})[docid] = max(g, 0)
    return qrels


def first_line(path: Path) -> int:
    """The number of the first non-blank line of a text file (1-based)."""
    for lineno, line in enumerate(_lines(path), 1):
        if line.strip():
            return lineno
    return 1


def read_tsv_texts(path: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """``id<TAB>text`` (MS MARCO queries / collection) or ``id<TAB>title<TAB>text``; also JSONL with ``_id`` or
    ``id``, ``text`` and optional ``title`` (BEIR). Returns (texts, titles)."""
    path = Path(path)
    texts: dict[str, str] = {}
    titles: dict[str, str] = {}
    jsonl = path.suffix == ".jsonl"
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                rec = json.loads(line)
                ident = rec.get("_id", rec.get("id"))
                text = rec["text"]
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise FormatError(f"{path}, line {lineno}: expected a JSON object with '_id' and 'text' "
                                  f"({e})") from None
            if ident is None or str(ident).strip() == "":
                raise FormatError(f"{path}, line {lineno}: no '_id' (or 'id'); its keys: {sorted(rec)[:8]}")
            if not isinstance(text, str):
                raise FormatError(f"{path}, line {lineno}: 'text' is {type(text).__name__}, not a string")
            key = str(ident)
            title = rec.get("title") or ""
            title = title if isinstance(title, str) else str(title)
        else:
            parts = line.split("\t")
            if len(parts) == 2:
                key, text, title = parts[0], parts[1], ""
            elif len(parts) == 3:
                key, title, text = parts
            else:
                raise FormatError(f"{path}, line {lineno}: expected 'id<TAB>text' or 'id<TAB>title<TAB>text', "
                                  f"got {len(parts)} tab-separated fields")
        key = key.strip()
        if key in texts:
            raise FormatError(f"{path}, line {lineno}: id {key!r} appears twice")
        texts[key] = " ".join(f"{title} {text}".split()) if title else text.strip()
        if title:
            titles[key] = title.strip()
    if not texts:
        raise FormatError(f"{path}: no records")
    return texts, titles


def load_cranfield(folder: str | Path) -> RetrievalCollection:
    """Cranfield as shipped: ``cran.all.1400``, ``cran.qry``, ``cranqrel`` in ``folder``.

    Query ids are renumbered ``1..225`` by position in ``cran.qry``, which is how ``cranqrel`` refers to them
    (their ``.I`` numbers skip values); grades become gains ``5 - code``. A document's text is its ``.W`` field
    (which repeats the title); titles are kept apart for pseudo-queries."""
    folder = Path(folder)
    docs_raw = read_smart(folder / "cran.all.1400")
    docs = {r["id"]: r.get("W", "") or r.get("T", "") for r in docs_raw}
    titles = {r["id"]: r.get("T", "") for r in docs_raw if r.get("T")}
    queries = {str(i): r.get("W", "") for i, r in enumerate(read_smart(folder / "cran.qry"), 1)}
    qrels = read_qrels(folder / "cranqrel", cranfield_grades=True)
    unknown_q = sorted(set(qrels) - set(queries), key=int)
    if unknown_q:
        raise FormatError(f"{folder / 'cranqrel'}: query numbers {unknown_q[:5]} exceed the {len(queries)} queries "
                          "of cran.qry")
    return RetrievalCollection(docs, queries, qrels, titles)


def load_collection(docs: str | Path, queries: str | Path, qrels: str | Path) -> RetrievalCollection:
    """A collection from common files: docs and queries as TSV/JSONL (MS MARCO / BEIR), qrels in TREC form."""
    doc_texts, titles = read_tsv_texts(docs)
    query_texts, _ = read_tsv_texts(queries)
    judged = read_qrels(qrels)
    check_qrels(qrels, judged, doc_texts, query_texts, str(docs), str(queries))
    return RetrievalCollection(doc_texts, query_texts, judged, titles)


def check_qrels(path: str | Path, judged: dict[str, dict[str, int]], docs: dict[str, str], queries: dict[str, str],
                docs_name: str, queries_name: str) -> None:
    """Every judged document must be in the collection (the first offending line is named); at least one judged
    query must be among the queries (ids that never match, e.g. ``1`` against ``q1``, would train on nothing)."""
    unknown = sorted({d for q in judged.values() for d in q} - set(docs))
    if unknown:
        line = next((n for n, text in enumerate(_lines(Path(path)), 1)
                     if len(text.split()) in (3, 4) and text.split()[-2] in unknown), None)
        where = f", line {line}" if line else ""
        raise FormatError(f"{path}{where}: judged documents not in {docs_name}: {unknown[:5]}"
                          f"{f' ({len(unknown)} in all)' if len(unknown) > 5 else ''}")
    if judged and not set(judged) & set(queries):
        raise FormatError(f"{path}: none of its query ids ({sorted(judged)[:3]} ...) is in {queries_name} "
                          f"({list(queries)[:3]} ...)")
