"""MS MARCO passage-ranking training files and the teacher score files published for them, read as streams.

Training data (tab-separated UTF-8; a ``.gz`` suffix is read through gzip):

- ``collection.tsv``: ``pid<TAB>passage`` (8.8M lines) and ``queries.train.tsv``: ``qid<TAB>query``. They are
  streamed once and only the texts the training groups name are kept (:func:`fill_texts`), so the collection is
  never held whole, let alone twice;
- triples by id, ``qidpidtriples.train.full.tsv``: ``qid<TAB>pid_pos<TAB>pid_neg``;
- triples by text, ``triples.train.small.tsv``: ``query<TAB>positive passage<TAB>negative passage``;
- sentence-transformers' hard negatives, ``msmarco-hard-negatives.jsonl.gz``: one JSON object a line,
  ``{"qid": 867436, "pos": [5238393], "neg": {"bm25": [...], "<system>": [...]}}``.

Teacher scores (a stored teacher, served without running it):

- per triple, the layout of Hofstaetter et al. (2020)'s published files
  (``bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv``): ``score_pos<TAB>score_neg<TAB>qid<TAB>pid_pos<TAB>
  pid_neg``, one line per training triple (the README of sebastian-hofstaetter/neural-ranking-kd);
- per pair: ``qid pid score`` lines (tabs or spaces), or JSONL ``{"qid": .., "pid": .., "score": ..}`` or
  ``{"qid": .., "scores": {"<pid>": score, ...}}`` (the shape of sentence-transformers' cross-encoder score dict,
  ``scores[qid][pid]``, written one query a line).

Pickles (sentence-transformers' ``cross-encoder-ms-marco-MiniLM-L-6-v2-scores.pkl.gz``) are refused, never loaded:
loading one can run code. Every error names the file and the line.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import sys
from array import array
from collections.abc import Container, Iterator, Sequence
from pathlib import Path

from distill.core.safe_pickle import UnsafeFileError, is_pickle_file
from distill.text.ir_data import FormatError


def refuse_pickle(path: Path) -> None:
    if is_pickle_file(path):
        raise UnsafeFileError(path, "a Python pickle; distill never loads pickles (loading one can run code). Convert "
                                    "it once, where you trust the file, to JSONL lines {\"qid\": ..., \"pid\": ..., "
                                    "\"score\": ...} or TSV lines 'qid<TAB>pid<TAB>score', and give that file")


def lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, line without its end)`` of a UTF-8 text file (gzip when named ``*.gz``), streamed. Only
    ``\\n`` ends a line (a stray ``\\r`` or Unicode separator inside a passage does not split it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    refuse_pickle(path)
    n = 0
    try:
        if path.name.lower().endswith(".gz"):
            fh = gzip.open(path, "rt", encoding="utf-8", newline="\n")
        else:
            fh = path.open(encoding="utf-8", newline="\n")
        with fh:
            for n, line in enumerate(fh, 1):
                yield n, line.rstrip("\r\n")
    except UnicodeDecodeError:
        raise FormatError(f"{path}, line {n + 1}: not UTF-8 text") from None
    except (EOFError, gzip.BadGzipFile) as e:
        raise FormatError(f"{path}, line {n + 1}: the gzip stream is damaged or cut short ({e})") from None


def first_fields(path: Path, sep: str | None, comments: bool = False) -> list[str]:
    """The fields of the first non-blank line (not a ``#`` comment when ``comments``)."""
    for _, line in lines(path):
        if line.strip() and not (comments and line.lstrip().startswith("#")):
            return line.split(sep)
    raise FormatError(f"{path}: the file is empty")


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def header_line(path: Path, sep: str | None, numeric: Sequence[int] | None) -> tuple[int, str] | None:
    """``(line number, line)`` of the file's first non-blank line when it is clearly a header row, else None.

    ``numeric``: the positions of the fields that hold numbers in this layout (MS MARCO's ids, scores): the line
    is a header when none of them is a number on it and all of them are on the next non-blank line (``qid<TAB>
    query`` above ``1048585<TAB>what is ...``). ``None`` (triples of ids or of texts): every field of the first line
    is one word that is not a number (``query<TAB>positive<TAB>negative``) and the next line holds ids (every field
    a number) or texts (some field with a space). A file whose ids are not numbers has no header found this way:
    its first line is read as data."""
    head: list[tuple[int, str]] = []
    for n, line in lines(path):
        if line.strip():
            head.append((n, line))
            if len(head) == 2:
                break
    if len(head) < 2:
        return None
    (n, first), (_, second) = head
    a = [f.strip() for f in first.split(sep)]
    b = [f.strip() for f in second.split(sep)]
    if len(a) != len(b):
        return None
    if numeric is None:
        words = all(_WORD.fullmatch(f) for f in a)
        return (n, first) if words and (all(_is_number(f) for f in b) or any(" " in f for f in b)) else None
    if not numeric or max(numeric) >= len(a):
        return None
    if all(not _is_number(a[i]) for i in numeric) and all(_is_number(b[i]) for i in numeric):
        return n, first
    return None


def skip_header(path: Path, sep: str | None, numeric: Sequence[int] | None) -> int:
    """The line number of the file's header row (:func:`header_line`; 0 when there is none), said on stderr."""
    found = header_line(path, sep, numeric)
    if found is None:
        return 0
    n, text = found
    print(f"note: {path}, line {n}: a header row ({text[:80]!r}), skipped", file=sys.stderr)
    return n


def _is_json(path: Path) -> bool:
    return path.name.lower().removesuffix(".gz").endswith((".jsonl", ".json"))


# -- teacher scores ----------------------------------------------------------------------------------------------
SCORE_LAYOUTS = ("auto", "pairs", "triples", "jsonl")
PAIR_LINE = "'qid pid score' (3 fields)"
TRIPLE_LINE = "'score_pos score_neg qid pid_pos pid_neg' (5 fields)"


def score_layout(path: Path, layout: str = "auto") -> str:
    """``pairs``, ``triples`` or ``jsonl``: given, or ``auto`` by the name (``.jsonl``/``.json``) and then by the
    number of fields of the first line (3: pairs, 5: per-triple)."""
    if layout != "auto":
        return layout
    if _is_json(path):
        return "jsonl"
    fields = first_fields(path, None, comments=True)
    if fields[0].startswith("{"):
        return "jsonl"
    if len(fields) not in (3, 5):
        raise FormatError(f"{path}, line 1: expected {PAIR_LINE} or {TRIPLE_LINE}, got {len(fields)} fields")
    return "pairs" if len(fields) == 3 else "triples"


def _number(path: Path, n: int, value: object, what: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise FormatError(f"{path}, line {n}: {what} {value!r} is not a number") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise FormatError(f"{path}, line {n}: {what} {value!r} is not a finite number")
    return x


def iter_triple_scores(path: Path) -> Iterator[tuple[int, str, str, str, float, float]]:
    """``(line, qid, pid_pos, pid_neg, score_pos, score_neg)`` of a per-triple score file (a header row skipped)."""
    header = skip_header(path, None, (0, 1))
    for n, line in lines(path):
        parts = line.split()
        if not parts or parts[0].startswith("#") or n == header:
            continue
        if len(parts) != 5:
            hint = (" (this reader takes the id file, *_ids.tsv, not the one expanded with texts)"
                    if len(line.split("\t")) == 5 else "")
            raise FormatError(f"{path}, line {n}: expected {TRIPLE_LINE}, got {len(parts)} fields{hint}")
        sp, sn = _number(path, n, parts[0], "score_pos"), _number(path, n, parts[1], "score_neg")
        yield n, parts[2], parts[3], parts[4], sp, sn


def _json_object(path: Path, n: int, line: str) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}, line {n}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(rec, dict):
        raise FormatError(f"{path}, line {n}: expected a JSON object, got {type(rec).__name__}")
    return rec


def _ident(path: Path, n: int, rec: dict, keys: Sequence[str]) -> str:
    value = next((rec[k] for k in keys if k in rec), None)
    if value is None or isinstance(value, (bool, float, dict, list)) or str(value).strip() == "":
        raise FormatError(f"{path}, line {n}: no {keys[0]!r} (a string or integer id); its keys: {sorted(rec)[:8]}")
    return str(value).strip()


def iter_pair_scores(path: Path, layout: str = "auto") -> Iterator[tuple[int, str, str, float]]:
    """``(line, qid, pid, score)`` of every scored pair of a score file in any layout (a per-triple line gives
    two pairs)."""
    layout = score_layout(path, layout)
    if layout == "triples":
        for n, q, p, neg, sp, sn in iter_triple_scores(path):
            yield n, q, p, sp
            yield n, q, neg, sn
        return
    header = skip_header(path, None, (2,)) if layout == "pairs" else 0
    for n, line in lines(path):
        if n == header:
            continue
        if layout == "jsonl":
            if not line.strip():
                continue
            rec = _json_object(path, n, line)
            q = _ident(path, n, rec, ("qid", "query_id"))
            if "scores" in rec:
                if not isinstance(rec["scores"], dict):
                    raise FormatError(f"{path}, line {n}: 'scores' must be an object {{pid: score}}")
                for p, s in rec["scores"].items():
                    yield n, q, str(p).strip(), _number(path, n, s, f"score of pid {p!r}")
            else:
                p = _ident(path, n, rec, ("pid", "docid", "doc_id"))
                if "score" not in rec:
                    raise FormatError(f"{path}, line {n}: no 'score' (expected {{\"qid\", \"pid\", \"score\"}} or "
                                      f"{{\"qid\", \"scores\": {{pid: score}}}})")
                yield n, q, p, _number(path, n, rec["score"], "score")
            continue
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 3:
            raise FormatError(f"{path}, line {n}: expected {PAIR_LINE}, got {len(parts)} fields")
        yield n, parts[0], parts[1], _number(path, n, parts[2], "score")


def read_pair_scores(path: str | Path, layout: str = "auto",
                     keep: Container[tuple[str, str]] | None = None) -> dict[tuple[str, str], float]:
    """``{(qid, pid): score}`` of a score file (a later line wins); with ``keep``, only those pairs are kept, so a
    file of 160M scores costs the memory of the pairs training uses."""
    scores: dict[tuple[str, str], float] = {}
    for _, q, p, s in iter_pair_scores(Path(path), layout):
        if keep is None or (q, p) in keep:
            scores[(q, p)] = s
    return scores


# -- training groups -----------------------------------------------------------------------------------------------
class GroupTable:
    """Training groups as they are read: query and passage ids mapped to dense indices (the line of the source
    file where each was first seen is kept for error messages), one row of indices per group."""

    def __init__(self, size: int, source: Path):
        self.size = size
        self.source = source
        self.qmap: dict[str, int] = {}
        self.dmap: dict[str, int] = {}
        self.qline = array("q")
        self.dline = array("q")
        self.qrows = array("i")
        self.drows = array("i")
        self.lines = array("q")

    def __len__(self) -> int:
        return len(self.qrows)

    @staticmethod
    def _index(table: dict[str, int], seen: array, key: str, n: int) -> int:
        i = table.get(key)
        if i is None:
            i = table[key] = len(table)
            seen.append(n)
        return i

    def add(self, n: int, qid: str, docids: Sequence[str]) -> None:
        if len(docids) != self.size:
            raise ValueError(f"a group of {len(docids)} passages, the table holds groups of {self.size}")
        self.qrows.append(self._index(self.qmap, self.qline, qid, n))
        for d in docids:
            self.drows.append(self._index(self.dmap, self.dline, d, n))
        self.lines.append(n)


def triples_layout(path: Path, layout: str = "auto") -> str:
    """``ids`` or ``texts``: given, or ``auto`` by the first line (three tab-separated fields; ids when none of
    them holds a space)."""
    if layout != "auto":
        return layout
    found = header_line(path, "\t", None)
    header, fields, first = found[0] if found else 0, [], 1
    for first, line in lines(path):
        if line.strip() and first != header:
            fields = line.split("\t")
            break
    if not fields:
        raise FormatError(f"{path}: the file is empty")
    if len(fields) != 3:
        raise FormatError(f"{path}, line {first}: expected 3 tab-separated fields (qid, pid_pos, pid_neg or query, "
                          f"positive, negative), got {len(fields)}")
    return "ids" if all(f.strip() and len(f.split()) == 1 for f in fields) else "texts"


def iter_triples(path: Path) -> Iterator[tuple[int, str, str, str]]:
    """``(line, a, b, c)`` of a tab-separated triples file (ids or texts; blank lines and a header row skipped)."""
    header = skip_header(path, "\t", None)
    for n, line in lines(path):
        if not line.strip() or n == header:
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise FormatError(f"{path}, line {n}: expected 3 tab-separated fields, got {len(parts)}")
        a, b, c = (p.strip() for p in parts)
        if not (a and b and c):
            raise FormatError(f"{path}, line {n}: an empty field")
        yield n, a, b, c


def read_triples(path: Path, limit: int | None) -> GroupTable:
    """The first ``limit`` triples (all without; reading stops there) of ``qid<TAB>pid_pos<TAB>pid_neg`` or
    ``query<TAB>positive<TAB>negative`` lines. Texts are their own keys, so each distinct text is kept once: the 40M
    lines of ``triples.train.small.tsv`` hold about 0.5M queries and their passages once each."""
    table = GroupTable(2, path)
    for n, q, p, neg in iter_triples(path):
        if limit is not None and len(table) >= limit:
            break
        table.add(n, q, (p, neg))
    if not len(table):
        raise FormatError(f"{path}: no triples")
    return table


def read_scored_triples(path: Path, limit: int | None) -> tuple[GroupTable, array]:
    """A per-triple score file read as the training triples themselves: the groups and their (score_pos,
    score_neg), row by row."""
    table = GroupTable(2, path)
    scores = array("f")
    for n, q, p, neg, sp, sn in iter_triple_scores(path):
        if limit is not None and len(table) >= limit:
            break
        table.add(n, q, (p, neg))
        scores.extend((sp, sn))
    if not len(table):
        raise FormatError(f"{path}: no scored triples")
    return table, scores


def read_hard_negatives(path: Path, num_negatives: int, systems: Sequence[str] | None, seed: int,
                        limit: int | None, max_positives: int | None) -> tuple[GroupTable, list[str]]:
    """Groups from sentence-transformers' hard-negatives JSONL: for each query, one group per positive (the first
    ``max_positives`` in file order) with ``num_negatives`` negatives drawn (seeded) from the union of the
    ``systems``' lists (all systems by default), the query's positives left out. Returns the table and the qids
    left out for too few negatives."""
    rng = random.Random(seed)
    table = GroupTable(1 + num_negatives, path)
    wanted = set(systems) if systems is not None else None
    seen_systems: set[str] = set()
    short: list[str] = []
    for n, line in lines(path):
        if limit is not None and len(table) >= limit:
            break
        if not line.strip():
            continue
        rec = _json_object(path, n, line)
        q = _ident(path, n, rec, ("qid",))
        pos, neg = rec.get("pos"), rec.get("neg")
        if not isinstance(pos, list) or not isinstance(neg, dict):
            raise FormatError(f"{path}, line {n}: expected {{\"qid\": .., \"pos\": [pid, ...], \"neg\": {{system: "
                              f"[pid, ...]}}}}; its keys: {sorted(rec)[:8]}")
        positives = [str(p) for p in pos][:max_positives]
        seen_systems.update(neg)
        pool: dict[str, None] = {}
        for system, pids in neg.items():
            if wanted is not None and system not in wanted:
                continue
            if not isinstance(pids, list):
                raise FormatError(f"{path}, line {n}: neg[{system!r}] is {type(pids).__name__}, not a list of pids")
            pool.update((str(p), None) for p in pids)
        every_pos = {str(p) for p in pos}
        candidates = [p for p in pool if p not in every_pos]
        if not positives or len(candidates) < num_negatives:
            short.append(q)
            continue
        for p in positives:
            if limit is not None and len(table) >= limit:
                break
            table.add(n, q, (p, *rng.sample(candidates, num_negatives)))
    if wanted is not None and not wanted & seen_systems:
        raise FormatError(f"{path}: none of the systems {sorted(wanted)} names negatives; the file's systems: "
                          f"{sorted(seen_systems)[:12]}")
    if wanted is not None and wanted - seen_systems:  # a misspelt name would silently narrow the negatives
        read = "the lines read" if limit is not None else "any line"
        raise FormatError(f"{path}: no system {sorted(wanted - seen_systems)} in {read}; the file's systems: "
                          f"{sorted(seen_systems)[:12]}")
    return table, short


def _text_of(path: Path, n: int, line: str, what: str) -> str:
    """The text of an ``id<TAB>text`` or ``id<TAB>title<TAB>text`` line (title and text joined)."""
    parts = line.split("\t")
    if len(parts) == 2:
        return parts[1].strip()
    if len(parts) == 3:
        return " ".join(f"{parts[1]} {parts[2]}".split())
    raise FormatError(f"{path}, line {n}: expected '{what}<TAB>text' or '{what}<TAB>title<TAB>text', got "
                      f"{len(parts)} tab-separated fields")


def fill_texts(path: Path, wanted: dict[str, int], what: str) -> list[str]:
    """The texts of the ids in ``wanted`` (id -> position) from an ``id<TAB>text`` (or ``id<TAB>title<TAB>text``)
    file, read as a stream: lines of other ids are skipped unparsed, and reading stops once every wanted id is
    found; a header row (``pid<TAB>passage``) is skipped. Raises ``KeyError(first missing id, number missing)``
    when the file lacks some (the caller names where they were needed)."""
    texts: list[str | None] = [None] * len(wanted)
    found = 0
    header = skip_header(path, "\t", (0,))
    for n, line in lines(path):
        if n == header:
            continue
        tab = line.find("\t")
        if tab < 0:
            if line.strip():
                raise FormatError(f"{path}, line {n}: expected '{what}<TAB>text', found no tab")
            continue
        i = wanted.get(line[:tab].strip())
        if i is None:
            continue
        text = _text_of(path, n, line, what)
        if texts[i] is not None:
            raise FormatError(f"{path}, line {n}: {what} {line[:tab].strip()!r} appears twice")
        texts[i] = text
        found += 1
        if found == len(texts):
            break  # every wanted text is read; the rest of the file is not needed
    if found < len(texts):
        missing = next(k for k, i in wanted.items() if texts[i] is None)
        raise KeyError(missing, len(texts) - found)
    return texts  # type: ignore[return-value]


# -- evaluation files ---------------------------------------------------------------------------------------------
def _keyed_lines(path: Path, what: str) -> Iterator[tuple[int, str, str]]:
    """``(line number, id, line)`` of each non-blank line of an ``id<TAB>...`` file, a header row skipped; a line
    without a tab is refused with its number."""
    header = skip_header(path, "\t", (0,))
    for n, line in lines(path):
        if n == header or not line.strip():
            continue
        tab = line.find("\t")
        if tab < 0:
            raise FormatError(f"{path}, line {n}: expected '{what}<TAB>text', found no tab")
        yield n, line[:tab].strip(), line


def read_id_texts(path: Path, keep: Container[str] | None = None, what: str = "qid") -> dict[str, str]:
    """``{id: text}`` of an ``id<TAB>text`` (or ``id<TAB>title<TAB>text``) file in file order (queries.dev.tsv),
    only the ids in ``keep`` when given; a header row is skipped, an id given twice is refused."""
    out: dict[str, str] = {}
    for n, key, line in _keyed_lines(path, what):
        if keep is not None and key not in keep:
            continue
        if key in out:
            raise FormatError(f"{path}, line {n}: {what} {key!r} appears twice")
        out[key] = _text_of(path, n, line, what)
    return out


def read_passages(path: Path, must: set[str], extra: int | None) -> dict[str, str]:
    """A subset of a collection (``pid<TAB>passage``), streamed: every pid in ``must`` and the first ``extra``
    other passages in file order (every passage when None); reading stops once both are had. Raises
    ``KeyError(first missing pid, number missing)`` when a pid of ``must`` is not in the file."""
    out: dict[str, str] = {}
    others = 0
    found = 0
    for n, key, line in _keyed_lines(path, "pid"):
        wanted = key in must
        if not wanted and extra is not None and others >= extra:
            if found == len(must):
                break
            continue
        if key in out:
            raise FormatError(f"{path}, line {n}: pid {key!r} appears twice")
        out[key] = _text_of(path, n, line, "pid")
        found += wanted
        others += not wanted
    if found < len(must):
        missing = sorted(must - out.keys())
        raise KeyError(missing[0], len(missing))
    return out


CANDIDATE_LINE = "'qid<TAB>pid<TAB>query<TAB>passage' (4 fields, MS MARCO's top1000.dev)"


def read_candidates(path: Path, keep: Container[str] | None = None, max_queries: int | None = None
                    ) -> tuple[dict[str, str], dict[str, str], dict[str, list[str]]]:
    """A re-ranking file, MS MARCO's ``top1000.dev`` (``qid<TAB>pid<TAB>query<TAB>passage``, each query's candidate
    passages, e.g. BM25's top 1000), streamed: ``(query texts, passage texts, candidate pids of each query)``, each
    text once. Only the qids in ``keep`` (all when None), at most the first ``max_queries`` of them in file order;
    every line is still checked, and a malformed one is refused with its number."""
    queries: dict[str, str] = {}
    passages: dict[str, str] = {}
    cands: dict[str, list[str]] = {}
    header = skip_header(path, "\t", (0, 1))
    for n, line in lines(path):
        if n == header or not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 4:
            raise FormatError(f"{path}, line {n}: expected {CANDIDATE_LINE}, got {len(parts)} fields")
        qid, pid, query, passage = (p.strip() for p in parts)
        if not (qid and pid and query and passage):
            raise FormatError(f"{path}, line {n}: an empty field (expected {CANDIDATE_LINE})")
        if keep is not None and qid not in keep:
            continue
        if qid not in cands:
            if max_queries is not None and len(cands) >= max_queries:
                continue
            cands[qid] = []
            queries[qid] = query
        cands[qid].append(pid)
        passages.setdefault(pid, passage)
    return queries, passages, cands


QRELS_LINE = "'qid 0 pid grade' (TREC, MS MARCO's qrels.dev.tsv), 'qid pid grade' or 'qid pid'"


def read_qrels_file(path: Path) -> dict[str, dict[str, int]]:
    """Relevance judgments ``{qid: {pid: grade}}``: TREC/MS MARCO ``qid 0 pid grade`` lines, ``qid pid grade``, or
    ``qid pid`` pairs (each relevant, grade 1); tabs or spaces; a header row skipped. Grades <= 0: not relevant."""
    width = len(first_fields(path, None, comments=True))
    numeric = {4: (3,), 3: (2,), 2: (0, 1)}.get(width)
    header = skip_header(path, None, numeric) if numeric else 0
    qrels: dict[str, dict[str, int]] = {}
    for n, line in lines(path):
        parts = line.split()
        if not parts or parts[0].startswith("#") or n == header:
            continue
        if len(parts) == 4:
            qid, _, pid, grade = parts
        elif len(parts) == 3:
            qid, pid, grade = parts
        elif len(parts) == 2:
            (qid, pid), grade = parts, "1"
        else:
            raise FormatError(f"{path}, line {n}: expected {QRELS_LINE}, got {len(parts)} fields")
        g = _number(path, n, grade, "grade")
        if g != int(g):
            raise FormatError(f"{path}, line {n}: grade {grade!r} is not a whole number")
        qrels.setdefault(qid, {})[pid] = max(int(g), 0)
    if not qrels:
        raise FormatError(f"{path}: no judgments")
    return qrels
