"""The served teacher (distill.llm.served): top-k log-probabilities asked from an OpenAI-compatible completions
server, stored in teacher.cache. A small fake server on loopback checks both position conventions, token-id and
text prompts, retries, the timeout and the tokenizer check exactly; a real llama-cpp-python server serving the
SmolLM2 GGUF of ../shared is checked against the same GGUF scored locally."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from distill.cache import CacheError, TeacherCache, build_teacher_cache, ensure_teacher_cache
from distill.cache.settings import CacheSettings
from distill.llm.served import ServedSettings, ServedTeacher, ServedTeacherError
from distill.tasks.causal_lm.task import CausalLM, LMData

ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.!?"


class CharTokenizer:
    """One token per character of ``alphabet`` (what a Hugging Face tokenizer offers the client, no more)."""

    bos_token_id = None

    def __init__(self, alphabet: str = ALPHABET):
        self.alphabet = alphabet
        self.index = {c: i for i, c in enumerate(alphabet)}

    def __len__(self) -> int:
        return len(self.alphabet)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [self.index[c] for c in text.lower() if c in self.index]}

    def decode(self, ids, **kw) -> str:
        return "".join(self.alphabet[i] for i in ids)

    def batch_decode(self, rows, **kw) -> list[str]:
        return [self.decode(r) for r in rows]


def fake_logprobs(prefix: list[int], vocab: int) -> torch.Tensor:
    """A deterministic toy LM: the log-softmax after ``prefix``."""
    v = torch.arange(vocab, dtype=torch.float64)
    z = 3.0 * torch.sin(1.3 * v + 0.7 * sum(prefix) + len(prefix)) + 0.1 * v
    return torch.log_softmax(z, -1)


class FakeServer:
    """An OpenAI-style /v1/completions on 127.0.0.1 over the toy LM. ``convention``: ``aligned`` (entry i is the
    distribution token i came from, n + 1 entries) or ``shifted`` (llama-cpp-python without BOS: entry i is the
    distribution after token i, n entries); ``fail``: request numbers answered 503; ``hang``: request numbers
    answered only after ``hang_s``; ``server_tok``: the tokenizer behind /tokenize."""

    def __init__(self, convention="aligned", server_tok=None, fail=(), hang=(), hang_s=2.0, keys="text",
                 tokenize=True):
        self.tok = CharTokenizer()
        self.server_tok = server_tok or self.tok
        self.convention, self.fail, self.hang, self.hang_s, self.keys = convention, set(fail), set(hang), hang_s, keys
        self.tokenize = tokenize
        self.count = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/tokenize" and outer.tokenize:
                    return self._send(200, {"tokens": outer.server_tok(body["content"])["input_ids"]})
                if self.path != "/v1/completions":
                    return self._send(404, {"detail": "Not Found"})
                with outer.lock:
                    outer.count += 1
                    n = outer.count
                if n in outer.fail:
                    return self._send(503, {"error": {"message": "busy"}})
                if n in outer.hang:
                    time.sleep(outer.hang_s)
                self._send(200, outer.complete(body))

            def _send(self, code, doc):
                data = json.dumps(doc).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def key(self, i: int) -> str:
        return f"token_id:{i}" if self.keys == "ids" else self.tok.alphabet[i]

    def top(self, prefix, k):
        lp = fake_logprobs(prefix, len(self.tok))
        vals, idx = lp.topk(k)
        return {self.key(int(i)): float(v) for i, v in zip(idx, vals)}

    def complete(self, body):
        prompt = body["prompt"]
        ids = prompt if isinstance(prompt, list) else self.tok(prompt)["input_ids"]
        k = body["logprobs"]
        gen = int(fake_logprobs(ids, len(self.tok)).argmax())
        if not body["echo"]:
            tokens, tops = [self.tok.alphabet[gen]], [self.top(ids, k)]
        elif self.convention == "aligned":
            full = ids + [gen]
            tokens = [self.tok.alphabet[i] for i in full]
            tops = [None] + [self.top(full[:i], k) for i in range(1, len(full))]
        else:
            tokens = [self.tok.alphabet[i] for i in ids]
            tops = [None] + [self.top(ids[: i + 1], k) for i in range(1, len(ids))]
        return {"choices": [{"text": "", "logprobs": {"tokens": tokens, "top_logprobs": tops}}]}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def settings(url, **kw):
    base = {"url": url, "model": "toy", "timeout_s": 5.0, "retries": 2, "backoff_s": 0.0}
    return ServedSettings(**{**base, **kw})


def expected_topk(ids, k, vocab):
    rows = [fake_logprobs(ids[: t + 1], vocab).topk(k) for t in range(len(ids))]
    return [r.indices.tolist() for r in rows], [r.values.tolist() for r in rows]


SENTENCES = ["the quick brown fox jumps.", "a lazy dog sleeps, far away!", "why not?"]


@pytest.mark.parametrize("convention,prompt,keys", [("aligned", "ids", "ids"), ("aligned", "text", "text"),
                                                    ("shifted", "text", "text"), ("shifted", "ids", "text")])
def test_every_position_gets_the_servers_topk_after_it(convention, prompt, keys):
    tok = CharTokenizer()
    with FakeServer(convention, keys=keys) as server:
        teacher = ServedTeacher(settings(server.url, prompt=prompt, concurrency=2), tok, len(tok), k=5)
        rows = [tok(s)["input_ids"] for s in SENTENCES]
        got = teacher.rows(rows, [f"row {i}" for i in range(len(rows))])
    assert teacher.alignment == convention
    for ids, (g_ids, g_lp) in zip(rows, got):
        want_ids, want_lp = expected_topk(ids, 5, len(tok))
        assert g_ids == want_ids
        assert torch.allclose(torch.tensor(g_lp), torch.tensor(want_lp), atol=1e-9)


def lm_data(tok, sentences):
    rows = [tok(s)["input_ids"] for s in sentences]
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return LMData(ids, mask, torch.where(mask.bool(), ids, torch.full_like(ids, -100))), rows


def test_stored_teacher_is_built_from_the_server_and_opens_without_it(tmp_path):
    tok = CharTokenizer()
    task = CausalLM(len(tok))
    data, rows = lm_data(tok, SENTENCES)
    cache_settings = CacheSettings(topk=4, dtype="float32")
    with FakeServer("shifted") as server:
        teacher = ServedTeacher(settings(server.url, prompt="text"), tok, len(tok), k=4)
        build_teacher_cache(tmp_path / "c", teacher, task, data, cache_settings, batch_size=2)
    # the server is gone: the same config opens the stored teacher (offline fingerprint) and training reads it
    offline = ServedTeacher(settings(server.url, prompt="text"), tok, len(tok), k=4)
    cache = ensure_teacher_cache(tmp_path / "c", offline, task, data, cache_settings, build="if_missing")
    assert offline.client.requests == 0
    batch = task.fetch(data, torch.arange(3))
    top = cache(batch, task).topk
    for r, ids in enumerate(rows):
        want_ids, want_lp = expected_topk(ids, 4, len(tok))
        n = len(ids)
        assert top.indices[r, :n].tolist() == want_ids
        assert torch.allclose(top.logprobs[r, :n], torch.tensor(want_lp, dtype=torch.float32), atol=1e-6)
        tail = 1 - sum(math.exp(v) for v in want_lp[0])
        assert abs(float(top.tail_mass()[r, 0]) - tail) < 1e-5
        if n < data.input_ids.shape[1]:  # padding: a uniform stand-in, finite
            assert torch.allclose(top.logprobs[r, n:], torch.full_like(top.logprobs[r, n:], -math.log(len(tok))))
    # another served model is another teacher: refused, naming what differs
    other = ServedTeacher(ServedSettings(url=server.url, model="other"), tok, len(tok), k=4)
    with pytest.raises(CacheError, match=r"stale cache, built for something else: teacher \("):
        ensure_teacher_cache(tmp_path / "c", other, task, data, cache_settings, build="never")


def test_a_failed_request_is_retried_and_a_hanging_one_times_out():
    tok = CharTokenizer()
    # request 1 (the probe) fails with 503, request 4 hangs past the timeout: both are retried
    with FakeServer("aligned", fail={1}, hang={4}, hang_s=3.0) as server:
        teacher = ServedTeacher(settings(server.url, timeout_s=0.5, retries=2, concurrency=1), tok, len(tok), k=3)
        start = time.perf_counter()
        got = teacher.rows([tok("hello world")["input_ids"]], ["row 0"])
        took = time.perf_counter() - start
    assert teacher.client.retried == 2
    assert got[0][0] == expected_topk(tok("hello world")["input_ids"], 3, len(tok))[0]
    assert took < 2.5  # the hanging answer was not waited for


def test_a_server_that_keeps_failing_or_is_not_there_gives_one_line():
    tok = CharTokenizer()
    with FakeServer("aligned", hang=set(range(1, 10)), hang_s=2.0) as server:
        teacher = ServedTeacher(settings(server.url, timeout_s=0.3, retries=1), tok, len(tok), k=3)
        start = time.perf_counter()
        with pytest.raises(ServedTeacherError, match=r"failed after 2 tries: no answer within timeout_s = 0.3 s") as e:
            teacher.rows([[1, 2, 3]], ["row 0"])
        assert time.perf_counter() - start < 1.5
        assert "\n" not in str(e.value)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    teacher = ServedTeacher(settings(f"http://127.0.0.1:{port}/v1", retries=1), tok, len(tok), k=3)
    with pytest.raises(ServedTeacherError, match=r"^teacher\.served\.url: POST .* failed after 2 tries: cannot reach"):
        teacher.rows([[1, 2, 3]], ["row 0"])


def test_a_server_with_another_tokenizer_is_refused():
    tok = CharTokenizer()
    other = CharTokenizer(ALPHABET[::-1])  # same size, other ids
    with FakeServer("aligned", server_tok=other) as server:
        teacher = ServedTeacher(settings(server.url), tok, len(tok), k=3)
        want = (r"tokenizer is not the student's \(data.tokenizer, 31 tokens\).*first difference at token 0 "
                r"\('t' in data.tokenizer\): server id 11, data.tokenizer id 19")
        with pytest.raises(ServedTeacherError, match=want) as e:
            teacher.rows([[1, 2]], ["row 0"])
        assert "\n" not in str(e.value)
    # no /tokenize: the echoed tokens of the probe tell (here 'x' is outside the server's alphabet)
    with FakeServer("aligned", tokenize=False) as server:
        server.tok = CharTokenizer(ALPHABET.replace("x", "#"))
        teacher = ServedTeacher(settings(server.url, prompt="text"), tok, len(tok), k=3)
        with pytest.raises(ServedTeacherError, match="server's tokens for the probe text are not the student's"):
            teacher.rows([[1, 2]], ["row 0"])


def test_served_settings_in_a_config_are_checked():
    from distill.config import ConfigError, parse_config

    raw = {"task": "causal_lm", "output_dir": "run", "data": {"tokenizer": "tok.gguf", "text": "input.txt"},
           "student": {"arch": "llama"},
           "teacher": {"served": {"url": "http://127.0.0.1:8080/v1", "model": "smollm2"},
                       "cache": {"path": "teacher_cache", "topk": 16}},
           "methods": [{"name": "fkl"}], "train": {"epochs": 1}}
    cfg = parse_config(raw)
    assert cfg.teacher.served.model == "smollm2" and cfg.teacher.served.retries == 3
    # where the server is and how it is asked are no part of a resumed run's identity; the model is
    from distill.experiment import run_identity

    moved = json.loads(json.dumps(raw))
    moved["teacher"]["served"].update(url="http://127.0.0.2:9000/v1", timeout_s=5, concurrency=16)
    assert run_identity(parse_config(moved)) == run_identity(cfg)
    moved["teacher"]["served"]["model"] = "other"
    assert run_identity(parse_config(moved))["teacher.served.model"] == '"other"'
    bad = json.loads(json.dumps(raw))
    del bad["teacher"]["cache"]["topk"]
    with pytest.raises(ConfigError, match=r"^teacher\.cache\.topk: required with teacher\.served"):
        parse_config(bad)
    bad = json.loads(json.dumps(raw))
    bad["teacher"]["path"] = "teacher.gguf"
    with pytest.raises(ConfigError, match=r"^teacher\.path: the served teacher is the server's model"):
        parse_config(bad)
    bad = json.loads(json.dumps(raw))
    bad["teacher"]["served"]["url"] = "127.0.0.1:8080"
    with pytest.raises(ConfigError, match="url must be an http"):
        parse_config(bad)
    bad = json.loads(json.dumps(raw))
    bad["teacher"]["served"]["timeout"] = 5
    with pytest.raises(ConfigError, match="timeout"):
        parse_config(bad)


# -- a real llama.cpp server (llama-cpp-python's, the optional extra 'served') ----------------------------------
GGUF = ("models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")


class LlamaTokenizerAdapter:
    """The GGUF's own tokenizer through llama_cpp (vocab only: loads in a moment), offering what the client uses."""

    bos_token_id = None

    def __init__(self, path):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)

    def __len__(self) -> int:
        return self.llm.n_vocab()

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": self.llm.tokenize(text.encode(), add_bos=False, special=False)}

    def decode(self, ids, **kw):
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def batch_decode(self, rows, **kw):
        return [self.decode(r) for r in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def llama_server(shared):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'distill[served]')")
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server extra is not installed "
                                                       "(pip install 'llama-cpp-python[server]')")
    gguf = shared(*GGUF)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--n_threads_batch", "1",
                             "--model_alias", "smollm2",
                             "--verbose", "False"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the llama.cpp server exited: {proc.stderr.read().decode()[-500:]}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the llama.cpp server did not answer within 60 s")
            time.sleep(0.3)
        yield url, gguf
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_real_llama_cpp_server_gives_the_ggufs_own_topk(llama_server, shared, tmp_path):
    import llama_cpp

    url, gguf = llama_server
    tok = LlamaTokenizerAdapter(gguf)
    text = shared("data", "tinyshakespeare", "input.txt").read_text()[:2000]
    ids = tok(text)["input_ids"]
    rows = [ids[i * 16:(i + 1) * 16] for i in range(3)]
    stable = [r for r in rows if tok(tok.decode(r))["input_ids"] == r]  # text prompts: rows that encode back
    assert len(stable) >= 2
    k = 8
    task = CausalLM(len(tok))
    data, _ = lm_data_ids(stable)
    teacher = ServedTeacher(ServedSettings(url=url, model="smollm2", prompt="text", timeout_s=120, concurrency=2),
                            tok, len(tok), k=k)
    build_teacher_cache(tmp_path / "c", teacher, task, data, CacheSettings(topk=k), batch_size=2)
    assert teacher.alignment == "shifted"  # llama-cpp-python, a model without BOS
    top = TeacherCache(tmp_path / "c")(task.fetch(data, torch.arange(len(stable))), task).topk

    mappable = set(teacher.text.by_text().values())  # special tokens have no text in the answers: dropped
    local = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=1, n_threads_batch=1, logits_all=True,
                            verbose=False)
    for r, row in enumerate(stable):
        local.reset()
        local.eval(row)
        logp = torch.log_softmax(torch.tensor(local.scores[: len(row)], dtype=torch.float64), -1)
        for t in range(len(row)):
            got = [(int(i), float(v)) for i, v in zip(top.indices[r, t], top.logprobs[r, t]) if v > -math.inf]
            values, idx = logp[t].topk(k)
            assert got[0][0] == int(idx[0]), (r, t)  # the same most likely token
            for i, v in got:  # every stored value is the GGUF's own log-probability of that token
                assert abs(v - float(logp[t, i])) < 2e-3, (r, t, i)
            kept = {i for i, _ in got}
            floor = min(v for _, v in got)
            missing = [int(i) for i, v in zip(idx, values) if int(i) in mappable and int(i) not in kept
                       and float(v) > floor + 2e-3]
            assert not missing, (r, t, missing)  # no more likely (and nameable) token was left out
            assert len(got) >= k - sum(int(i) not in mappable for i in idx)
    # a student whose tokenizer is not the GGUF's is refused
    char_teacher = ServedTeacher(ServedSettings(url=url, model="smollm2", prompt="text"), CharTokenizer(), 31, k=3)
    with pytest.raises(ServedTeacherError, match="tokenizer is not the student's"):
        char_teacher.rows([[1, 2, 3]], ["row 0"])


def lm_data_ids(rows):
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return LMData(ids, mask, torch.where(mask.bool(), ids, torch.full_like(ids, -100))), rows


