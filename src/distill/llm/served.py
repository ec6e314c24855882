"""A served teacher: the top-k next-token log-probabilities of a teacher behind an OpenAI-compatible completions
endpoint (vLLM, SGLang, llama-cpp-python's server), asked for the student's own token sequences.

How a row is scored: one ``POST {url}/completions`` with ``echo: true``, ``max_tokens: 1`` and ``logprobs: k``.
The legacy completions answer then holds, for every prompt token, the server's top-k log-probabilities
(``choices[0].logprobs.top_logprobs``, a dict ``{token: logprob}`` per token, ``null`` for the first). Two
conventions exist, and the client finds out once, on a probe, which one the server follows:

* ``aligned`` (the OpenAI convention; vLLM, SGLang, llama-cpp-python for models that add a BOS): entry i is the
  distribution token i was drawn from, so the distribution *after* prompt token t (what a causal-LM store keeps
  at position t) is entry t + 1, and the generated token's entry closes the row (n + 1 entries for n tokens);
* ``shifted`` (llama-cpp-python for models that add no BOS, such as SmolLM2): entry i is the distribution after
  token i, entry 0 is blanked and no entry is given for the generated token (n entries); position 0 is then asked
  separately (the first token alone, without echo: the generated token's entry is the distribution after it).

The probe tells them apart by comparing entry 1 with the distributions after the probe's first token and after its
first two tokens, each asked without echo (their meaning is the same on every server).

The prompt is sent as token ids (``prompt: ids``; vLLM and SGLang accept a list of ints) or as the decoded text
(``prompt: text``; llama-cpp-python's server takes only text): then each row's echoed tokens must be the student's
tokens, or the row is refused (decoding a block cut mid-word and encoding it again does not always give the same
ids: 64 of 2,664 tinyshakespeare blocks of 128 SmolLM2 tokens do not). Answer keys are mapped to vocabulary ids
through the student's tokenizer (the text of every id, in the context of a plain token); ``token_id:N`` keys (vLLM's
``return_tokens_as_token_ids``) are read as ids. A key that several ids share, or none, is dropped: its mass joins
the tail (1 - sum of the kept probabilities), never another token.

Before the first row the server's tokenizer is compared with the student's on a probe text (through ``/tokenize``
or ``/extras/tokenize`` where the server has one, and through the echoed probe tokens in any case); a different
tokenizer is refused in one line naming the first differing token.

The answers go into the run's stored teacher (``teacher.cache`` with ``topk``, :mod:`distill.cache`): the
:class:`ServedTeacher` is the teacher source the cache is built from, and training reads the cache, so a run
resumes without the server. The standard library's ``urllib`` is the HTTP client (no extra package).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import ConfigDict, Field

from distill.core.batch import Batch
from distill.core.outputs import ModelOutput
from distill.core.topk import TopKLogits

#: a text both tokenizers must split into the same ids (letters, digits, punctuation, accents, a dash)
PROBE_TEXT = "The quick brown fox, 1,234 naïve cafés — Straße!\nEnd."


#: the top-k (ids, log-probabilities) after each token of a row
Scored = tuple[list[list[int]], list[list[float]]]


class ServedTeacherError(ValueError):
    """The server could not be reached, refused a request, or answered something the client cannot use."""


@dataclass(frozen=True)
class ServedSettings:
    """``teacher.served``: an OpenAI-compatible completions server (``url``: its base URL, the one ending in
    ``/v1``; requests go to ``{url}/completions``) serving the teacher ``model``. ``prompt``: send token ids or
    the decoded text; ``concurrency``: requests in flight at once (the server batches them); ``timeout_s``: seconds a
    request may wait for the server; ``retries``: further tries after a failed request (connection error, timeout,
    HTTP 429 or 5xx), waiting ``backoff_s`` x 2^try between them; ``api_key_env``: the environment variable holding
    a bearer token, if the server wants one; ``extra``: more fields for every request body (e.g.
    ``return_tokens_as_token_ids: true`` for vLLM). How many log-probabilities are asked per position is
    ``teacher.cache.topk``."""

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    url: Annotated[str, Field(min_length=1, max_length=2000)]
    model: Annotated[str, Field(min_length=1, max_length=500)]
    prompt: Literal["ids", "text"] = "ids"
    concurrency: Annotated[int, Field(ge=1, le=256)] = 4
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    backoff_s: Annotated[float, Field(ge=0, le=60)] = 0.5
    api_key_env: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http(s) URL with a host, such as http://127.0.0.1:8000/v1; got "
                             f"{self.url!r}")
        clash = sorted(set(self.extra) & {"model", "prompt", "echo", "logprobs", "max_tokens", "stream"})
        if clash:
            raise ValueError(f"extra: {clash} are set by the client itself")


# -- HTTP ------------------------------------------------------------------------------------------------------
class _Retryable(Exception):
    pass


class Client:
    """JSON POSTs to the server with a timeout and retries (connection errors, timeouts, HTTP 429 and 5xx)."""

    def __init__(self, settings: ServedSettings, sleep: Any = time.sleep):
        self.settings = settings
        self.base = settings.url.rstrip("/")
        self._sleep = sleep
        self.requests = 0
        self.retried = 0

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        env = self.settings.api_key_env
        if env:
            key = os.environ.get(env)
            if not key:
                raise ServedTeacherError(f"teacher.served.api_key_env: the environment variable {env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _once(self, url: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=self._headers(), method="POST")
        self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _error_text(e)
            if e.code == 429 or e.code >= 500:
                raise _Retryable(f"HTTP {e.code}: {detail}") from None
            raise ServedTeacherError(f"teacher.served: {url} refused the request (HTTP {e.code}: {detail})") from None
        except TimeoutError:
            raise _Retryable(f"no answer within timeout_s = {self.settings.timeout_s:g} s") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                raise _Retryable(f"no answer within timeout_s = {self.settings.timeout_s:g} s") from None
            raise _Retryable(f"cannot reach the server ({reason})") from None
        except (ConnectionError, OSError) as e:  # reset or closed mid-answer
            raise _Retryable(f"connection lost ({type(e).__name__}: {e})") from None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise _Retryable(f"the answer is not JSON ({raw[:80]!r})") from None

    def post(self, path: str, body: dict[str, Any], retry: bool = True, url: str | None = None) -> Any:
        """POST ``body`` to ``{url}{path}`` (or to the full ``url``); ``retry=False``: one try, None when it
        fails."""
        url = url if url is not None else self.base + path
        tries = self.settings.retries + 1 if retry else 1
        last = ""
        for attempt in range(tries):
            try:
                return self._once(url, body)
            except _Retryable as e:
                last = str(e)
                if attempt + 1 < tries:
                    self.retried += 1
                    self._sleep(self.settings.backoff_s * 2 ** attempt)
        if not retry:
            return None
        raise ServedTeacherError(f"teacher.served.url: POST {url} failed after {tries} tries: {last}")

    def post_optional(self, url: str, body: dict[str, Any]) -> Any:
        """One try at the full ``url``; None on any refusal or failure (an endpoint the server may not have)."""
        try:
            return self.post("", body, retry=False, url=url)
        except ServedTeacherError:
            return None


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read().decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - the status code is the message then
        raw = ""
    try:
        doc = json.loads(raw)
        msg = doc.get("error", doc.get("detail", doc)) if isinstance(doc, dict) else doc
        if isinstance(msg, dict):
            msg = msg.get("message", msg)
        raw = str(msg)
    except (json.JSONDecodeError, AttributeError):
        pass
    return " ".join(raw.split())[:300] or str(e.reason)


# -- the student's tokens as the server writes them --------------------------------------------------------------
class TokenText:
    """The text of every vocabulary id (decoded after a plain anchor token, so a leading space survives the
    sentencepiece convention of dropping it at the start) and the reverse map; ids whose text is shared with
    another id, empty, or a partial UTF-8 character cannot be told apart by text and map to nothing."""

    def __init__(self, tokenizer: Any, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)
        self._by_text: dict[str, int] | None = None

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def by_text(self) -> dict[str, int]:
        if self._by_text is None:
            anchor = self.encode("a")[:1]
            head = self.decode(anchor)
            counts: dict[str, int] = {}
            first: dict[str, int] = {}
            texts = self.tokenizer.batch_decode([anchor + [i] for i in range(self.vocab_size)],
                                                skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for i, t in enumerate(texts):
                piece = t[len(head):] if t.startswith(head) else None
                if not piece or "\ufffd" in piece:
                    continue
                counts[piece] = counts.get(piece, 0) + 1
                first.setdefault(piece, i)
            self._by_text = {t: i for t, i in first.items() if counts[t] == 1}
        return self._by_text

    def key_id(self, key: str) -> int | None:
        if key.startswith("token_id:"):
            try:
                i = int(key[len("token_id:"):])
            except ValueError:
                return None
            return i if 0 <= i < self.vocab_size else None
        return self.by_text().get(key)

    def pieces(self, ids: Sequence[int]) -> list[str | None]:
        """Each token's text in the context of those before it; None where it is no whole text (a partial
        UTF-8 character, or nothing) and so cannot be compared."""
        out: list[str | None] = []
        prev = ""
        for i in range(len(ids)):
            cur = self.decode(ids[: i + 1])
            piece = cur[len(prev):] if cur.startswith(prev) else None
            out.append(piece if piece and "\ufffd" not in piece and "\ufffd" not in cur else None)
            prev = cur
        return out


# -- the teacher source ------------------------------------------------------------------------------------------
class ServedTeacher:
    """A teacher source (``source(batch, task, taps) -> ModelOutput``) that asks the server of ``settings`` for
    the top-``k`` log-probabilities of every position of each batch row and returns them as a
    :class:`~distill.core.topk.TopKLogits` (position t: the distribution after token t, as a causal LM's logits
    at t; padding positions get a uniform stand-in that the loss masks). Nothing is asked before the first batch,
    so a stored teacher built from it opens without the server (:meth:`fingerprint` is offline)."""

    def __init__(self, settings: ServedSettings, tokenizer: Any, vocab_size: int, k: int, sleep: Any = time.sleep):
        if not 1 <= k <= vocab_size:
            raise ValueError(f"k must be in [1, {vocab_size}], got {k}")
        self.settings = settings
        self.k = int(k)
        self.vocab_size = int(vocab_size)
        self.text = TokenText(tokenizer, vocab_size)
        self.client = Client(settings, sleep=sleep)
        self.alignment: Literal["aligned", "shifted"] | None = None
        self.dropped = 0  # answer entries that mapped to no single vocabulary id (their mass went to the tail)

    def __repr__(self) -> str:
        return f"ServedTeacher({self.settings.url!r}, model={self.settings.model!r}, top-{self.k})"

    def fingerprint(self) -> str:
        """What identifies the teacher in a stored teacher's fingerprint: the served model's name (not where it is
        served, so a cache built from one host serves a run that names the model on another)."""
        return f"served:{self.settings.model}"

    def to(self, *args: object, **kwargs: object) -> ServedTeacher:
        return self

    def eval(self) -> ServedTeacher:
        return self

    # requests
    def _prompt(self, ids: Sequence[int]) -> list[int] | str:
        return [int(i) for i in ids] if self.settings.prompt == "ids" else self.text.decode(ids)

    def _complete(self, ids: Sequence[int], echo: bool) -> dict[str, Any]:
        body = {**self.settings.extra, "model": self.settings.model, "prompt": self._prompt(ids), "max_tokens": 1,
                "temperature": 0.0, "echo": echo, "logprobs": self.k, "stream": False}
        answer = self.client.post("/completions", body)
        try:
            lp = answer["choices"][0]["logprobs"]
            tops, tokens = lp["top_logprobs"], lp["tokens"]
            if not isinstance(tops, list) or not isinstance(tokens, list):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise ServedTeacherError(f"teacher.served: {self.client.base}/completions answered without "
                                     "choices[0].logprobs.top_logprobs (the legacy completions log-probabilities); "
                                     f"got {json.dumps(answer)[:200]}") from None
        return {"tops": tops, "tokens": [str(t) for t in tokens]}

    def _after(self, ids: Sequence[int]) -> dict[str, float]:
        """The distribution after ``ids`` (the generated token's entry, asked without echo)."""
        tops = self._complete(ids, echo=False)["tops"]
        if not tops or not isinstance(tops[0], dict):
            raise ServedTeacherError("teacher.served: the server gave no log-probabilities for a generated token")
        return tops[0]

    def _entry(self, top: Any, where: str) -> tuple[list[int], list[float]]:
        """An answer entry as (ids, logprobs), the k largest first, keys that map to no single id dropped."""
        if not isinstance(top, dict):
            raise ServedTeacherError(f"teacher.served: no log-probabilities at {where}")
        pairs: dict[int, float] = {}
        for key, value in top.items():
            i = self.text.key_id(str(key))
            if i is None or value is None:
                if not self.dropped:  # once: special tokens and partial characters have no text of their own
                    print(f"note: teacher.served: the answer key {key!r} at {where} maps to no single id of "
                          "data.tokenizer; such entries are dropped, their mass joining the tail", file=sys.stderr)
                self.dropped += 1
                continue
            v = float(value)
            if not math.isfinite(v) and v != -math.inf:
                raise ServedTeacherError(f"teacher.served: log-probability {value!r} at {where}")
            pairs[i] = max(v, pairs.get(i, -math.inf))
        best = sorted(pairs.items(), key=lambda kv: -kv[1])[: self.k]
        if best and best[0][1] > 1e-3:
            raise ServedTeacherError(f"teacher.served: log-probability {best[0][1]:.4g} > 0 at {where}: the server's "
                                     "values are not log-probabilities")
        return [i for i, _ in best], [v for _, v in best]

    # checks
    def check_tokenizer(self) -> None:
        """Refuse a server whose tokenizer is not the student's, and find out how it aligns prompt entries."""
        probe = self.text.encode(PROBE_TEXT)
        body = {"model": self.settings.model, "input": PROBE_TEXT, "content": PROBE_TEXT, "prompt": PROBE_TEXT,
                "add_special_tokens": False, "add_special": False}
        for path in ("/tokenize", "/extras/tokenize"):  # vLLM, llama.cpp / llama-cpp-python; either is optional
            for base in _roots(self.client.base):
                got = self.client.post_optional(base + path, body)
                tokens = got.get("tokens") if isinstance(got, dict) else None
                if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens):
                    bos = getattr(self.text.tokenizer, "bos_token_id", None)
                    if tokens[:1] == [bos] and probe[:1] != [bos]:
                        tokens = tokens[1:]
                    self._compare(tokens, probe, f"{base}{path}")
                    break
            else:
                continue
            break
        answer = self._complete(probe, echo=True)
        n = len(probe)
        self._check_echo(answer["tokens"][:n], probe, "the probe text")
        tops = answer["tops"]
        if len(probe) < 3 or len(tops) not in (n, n + 1):
            raise ServedTeacherError(f"teacher.served: {len(tops)} log-probability entries for a prompt of {n} "
                                     f"tokens (expected {n} or {n + 1})")
        entry1 = self._entry(tops[1], "probe position 1")
        one = self._entry(self._after(probe[:1]), "the probe's first token")
        two = self._entry(self._after(probe[:2]), "the probe's first two tokens")
        if len(tops) == n + 1 and _close(entry1, one):
            self.alignment = "aligned"
        elif len(tops) == n and _close(entry1, two):
            self.alignment = "shifted"
        else:
            raise ServedTeacherError("teacher.served: cannot tell which position the server's prompt "
                                     f"log-probabilities belong to ({len(tops)} entries for {n} tokens; entry 1 "
                                     "matches neither the distribution after the first token nor after two)")

    def _compare(self, server: list[int], student: list[int], where: str) -> None:
        if server == student:
            return
        i = next((j for j, (a, b) in enumerate(zip(server, student)) if a != b), min(len(server), len(student)))
        ours = repr(self.text.decode(student[i:i + 1])) if i < len(student) else "(end)"
        raise ServedTeacherError(
            f"teacher.served: the server's tokenizer is not the student's (data.tokenizer, {self.vocab_size} tokens): "
            f"{where} splits the probe text into {len(server)} tokens, data.tokenizer into {len(student)}; first "
            f"difference at token {i} ({ours} in data.tokenizer): server id {server[i] if i < len(server) else '-'}, "
            f"data.tokenizer id {student[i] if i < len(student) else '-'}")

    def _check_echo(self, echoed: list[str], ids: Sequence[int], what: str) -> None:
        ours = self.text.pieces(ids)
        bad = len(echoed) != len(ids)
        at = min(len(echoed), len(ids))
        if not bad:
            for i, (a, b) in enumerate(zip(echoed, ours)):
                if b is not None and a != "" and a != b:
                    bad, at = True, i
                    break
        if bad:
            theirs = echoed[at] if at < len(echoed) else "(end)"
            mine = ours[at] if at < len(ours) else "(end)"
            hint = (" (the text of these ids is encoded to other ids: send token ids, teacher.served.prompt: ids, to a "
                    "server that takes them)" if self.settings.prompt == "text" else "")
            raise ServedTeacherError(f"teacher.served: the server's tokens for {what} are not the student's: "
                                     f"{len(echoed)} tokens for {len(ids)}; first difference at token {at}: server "
                                     f"{theirs!r}, data.tokenizer {mine!r}{hint}")

    # scoring
    def score(self, ids: Sequence[int], row: str = "a row") -> Scored:
        """Top-k (ids, logprobs) after each token of ``ids`` (one entry per token)."""
        if self.alignment is None:
            self.check_tokenizer()
        n = len(ids)
        answer = self._complete(ids, echo=True)
        self._check_echo(answer["tokens"][:n], ids, row)
        tops = answer["tops"]
        if self.alignment == "aligned":
            if len(tops) < n + 1:
                raise ServedTeacherError(f"teacher.served: {len(tops)} entries for {row} of {n} tokens (expected "
                                         f"{n + 1})")
            entries = [tops[t + 1] for t in range(n)]
        else:
            if len(tops) != n:
                raise ServedTeacherError(f"teacher.served: {len(tops)} entries for {row} of {n} tokens (expected {n})")
            entries = [self._after(ids[:1]), *tops[1:n]]
        out = [self._entry(e, f"{row}, position {t}") for t, e in enumerate(entries)]
        return [o[0] for o in out], [o[1] for o in out]

    def rows(self, rows: Sequence[Sequence[int]], names: Sequence[str]) -> list[Scored]:
        """:meth:`score` of every row, ``concurrency`` requests in flight at once."""
        if self.alignment is None:
            self.check_tokenizer()
        workers = min(self.settings.concurrency, max(len(rows), 1))
        if workers == 1:
            return [self.score(r, nm) for r, nm in zip(rows, names)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self.score, rows, names))

    @torch.no_grad()
    def __call__(self, batch: Batch, task: Any, taps: Sequence[str] = ()) -> ModelOutput:
        if taps:
            raise ValueError(f"a served teacher gives no features; requested {list(taps)}")
        ids, mask = batch.inputs["input_ids"].cpu(), batch.inputs["attention_mask"].cpu()
        b, length = ids.shape
        index = batch.indices.tolist() if batch.indices is not None else list(range(b))
        rows, names = [], []
        for r in range(b):
            n = int(mask[r].ne(0).sum())
            if n == 0 or not bool(mask[r, :n].ne(0).all()):
                raise ValueError(f"row {index[r]}: a served teacher needs right-padded rows with at least one token")
            rows.append(ids[r, :n].tolist())
            names.append(f"row {index[r]}")
        scored = self.rows(rows, names)
        out_ids = torch.arange(self.k).expand(b, length, self.k).clone()  # padding: a uniform stand-in
        out_lp = torch.full((b, length, self.k), -math.log(self.vocab_size))
        for r, (top_ids, top_lp) in enumerate(scored):
            for t, (i_list, v_list) in enumerate(zip(top_ids, top_lp)):
                i_row, v_row = _fill(i_list, v_list, self.k)
                out_ids[r, t] = torch.tensor(i_row)
                out_lp[r, t] = torch.tensor(v_row)
        return ModelOutput(None, topk=TopKLogits(out_ids, out_lp, self.vocab_size))  # type: ignore[arg-type]


def _fill(ids: list[int], values: list[float], k: int) -> tuple[list[int], list[float]]:
    """Exactly k distinct ids: fewer answers are completed with unused ids of probability 0 (-inf)."""
    if len(ids) >= k:
        return ids[:k], values[:k]
    used = set(ids)
    extra = [i for i in range(k + len(ids)) if i not in used][: k - len(ids)]
    return ids + extra, values + [-math.inf] * len(extra)


def _close(a: tuple[list[int], list[float]], b: tuple[list[int], list[float]], tol: float = 0.05) -> bool:
    if not a[0] or not b[0] or a[0][0] != b[0][0]:
        return False
    common = [(va, b[1][b[0].index(i)]) for i, va in zip(a[0][:5], a[1][:5]) if i in b[0]]
    return len(common) >= min(3, len(a[0]), len(b[0])) and all(abs(x - y) <= tol for x, y in common)


def _roots(base: str) -> list[str]:
    """The server's base URL and, when it ends in /v1, the root without it (where native endpoints live)."""
    return [base[: -len("/v1")], base] if base.endswith("/v1") else [base]

