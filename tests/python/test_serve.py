"""`mop serve`: the official `openai` client against a server started here.

The server runs on 127.0.0.1 on a free port (--port 0; the port is read from
its "listening on" line) with SmolLM2-135M (the model every Python test
uses; there is no tiny generated model with a tokenizer and chat template)
and four small mixtures made through the bindings. References are the
bindings' own sequential generation (mop_generate / mop_mixture_generate),
greedy, tokenized as the server does (BOS when the model asks for it; chat
through the model's template with control tokens parsed).

Bounds: every request has a timeout, the server's start is bounded, the soak
is 200 requests in at most 60 s, and RSS growth over the soak stays below
SOAK_RSS_BOUND.
"""
import http.client
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_bindings_core import import_libmop

libmop = import_libmop()
openai = pytest.importorskip("openai")

N_MIX = 4
CTX = 512
MAX_TOKENS = 64
SOAK_REQUESTS = 200
SOAK_SECONDS = 60
SOAK_RSS_BOUND = 16 * 1024 * 1024  # bytes of RSS growth allowed after warm-up

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):",
           "The three primary colors are", "Water boils at", "My favourite fruit is",
           "In 1492, Columbus", "The quick brown fox"]


@pytest.fixture(scope="module")
def mop(build_dir):
    path = build_dir / "src" / "cli" / "mop"
    if not path.exists():
        pytest.skip(f"{path} not built")
    r = subprocess.run([str(path), "serve", "--help"], capture_output=True, timeout=30)
    if r.returncode != 0:
        pytest.skip("this build has no `mop serve` (libmicrohttpd missing): "
                    + r.stderr.decode(errors="replace").strip())
    return path


@pytest.fixture(scope="module")
def model(model_path):
    with libmop.Model(model_path, n_threads=1) as m:
        yield m


@pytest.fixture(scope="module")
def ctx(model):
    with libmop.Context(model, n_ctx=CTX, n_batch=CTX, n_threads=1) as c:
        yield c


@pytest.fixture(scope="module")
def mixture_dir(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("mixtures")
    for i in range(N_MIX):
        # different shapes and seeds, so the replies differ between mixtures
        with libmop.Mixture(model, n_experts=2 + i % 2, prompt_len=2 + i, gate_hidden=8,
                            seed=100 + i) as m:
            m.save(d / f"mix{i}.safetensors")
    (d / "README.txt").write_text("not a mixture")  # ignored: not *.safetensors
    (d / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # left out
    return d


class Server:
    def __init__(self, mop, model_path, mixture_dir, *extra):
        self.cmd = [str(mop), "serve", model_path, "--mixtures", str(mixture_dir), "--port", "0",
                    "--workers", "2", "--threads", "1", "--ctx", str(CTX), "--queue", "64",
                    "--max-tokens", str(MAX_TOKENS), "--timeout", "60",
                    *map(str, extra)]  # given twice, the later value wins
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.log = []
        deadline = time.monotonic() + 120
        self.url = None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode(errors="replace")
            if not line:
                break
            self.log.append(line)
            if "listening on " in line:
                self.url = line.split("listening on ", 1)[1].strip()
                break
        if not self.url:
            self.proc.kill()
            raise AssertionError("server did not start: " + "".join(self.log))
        # keep reading stderr so the pipe never fills
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace"))

    def client(self, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0,
                             timeout=kw.pop("timeout", 120), **kw)

    def rss(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("server did not exit after SIGTERM: " + "".join(self.log))
        self.reader.join(timeout=5)
        return rc


@pytest.fixture(scope="module")
def server(mop, model_path, mixture_dir):
    s = Server(mop, model_path, mixture_dir)
    yield s
    rc = s.stop()
    assert rc == 0, "".join(s.log)
    assert "stopped" in "".join(s.log)


@pytest.fixture(scope="module")
def mixtures(model, mixture_dir):
    ms = {f"mix{i}": libmop.Mixture.load(model, mixture_dir / f"mix{i}.safetensors")
          for i in range(N_MIX)}
    yield ms
    for m in ms.values():
        m.close()


def base_name(model_path):
    name = os.path.basename(model_path)
    return name[:-5] if name.endswith(".gguf") else name


def reference(model, ctx, mixtures, name, text, max_tokens, chat=False):
    """Greedy ids and text the way the server makes them, generated sequentially."""
    if chat:
        text = model.chat_format([{"role": "user", "content": text}])
    ids = model.tokenize(text, add_bos=True, special=chat)
    if name in mixtures:
        out = mixtures[name].generate(ctx, ids, max_tokens, temperature=0)
    else:
        out = ctx.generate(ids, max_tokens, temperature=0)
    return len(ids), out, model.detokenize(out)


def post(url, path, body, headers=None, timeout=60):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def assert_openai_error(body, status, code):
    assert status == code, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and "param" in err and "code" in err


# ---- the endpoints ------------------------------------------------------------------

def test_models_lists_base_and_mixtures(server, model_path):
    ids = [m.id for m in server.client().models.list().data]
    assert ids == [base_name(model_path)] + [f"mix{i}" for i in range(N_MIX)]
    assert "broken" not in ids
    assert any("skipping" in line and "broken" in line for line in server.log)
    assert server.client().models.retrieve("mix2").id == "mix2"
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("nope")


def test_health(server):
    with urllib.request.urlopen(server.url + "/health", timeout=30) as r:
        body = json.loads(r.read())
    assert r.status == 200 and body["status"] == "ok"
    assert body["queued"] >= 0 and body["running"] >= 0


@pytest.mark.parametrize("name", ["base", "mix1"])
def test_completion_matches_sequential(server, model, ctx, mixtures, model_path, name):
    name = base_name(model_path) if name == "base" else name
    r = server.client().completions.create(model=name, prompt=PROMPTS[0], max_tokens=12,
                                           temperature=0)
    n_prompt, ids, text = reference(model, ctx, mixtures, name, PROMPTS[0], 12)
    assert r.object == "text_completion" and r.model == name
    assert r.choices[0].text == text
    assert r.choices[0].finish_reason == ("length" if len(ids) == 12 else "stop")
    assert r.usage.prompt_tokens == n_prompt
    assert r.usage.completion_tokens == len(ids)
    assert r.usage.total_tokens == n_prompt + len(ids)


def test_chat_and_stream(server, model, ctx, mixtures):
    msg = "What is the capital of France? Answer in one word."
    client = server.client()
    r = client.chat.completions.create(model="mix0", messages=[{"role": "user", "content": msg}],
                                       max_tokens=24, temperature=0)
    n_prompt, ids, text = reference(model, ctx, mixtures, "mix0", msg, 24, chat=True)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == text
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == len(ids)
    assert r.choices[0].finish_reason == ("length" if len(ids) == 24 else "stop")

    chunks = list(client.chat.completions.create(
        model="mix0", messages=[{"role": "user", "content": msg}], max_tokens=24, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == r.choices[0].finish_reason and all(f is None for f in finals[:-1])
    assert chunks[-1].usage.completion_tokens == len(ids) and not chunks[-1].choices
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed

    # completions stream too, and the raw bytes are SSE ending with [DONE]
    pieces = [c.choices[0].text for c in client.completions.create(
        model="mix0", prompt=PROMPTS[1], max_tokens=10, temperature=0, stream=True)]
    assert "".join(pieces) == reference(model, ctx, mixtures, "mix0", PROMPTS[1], 10)[2]
    req = urllib.request.Request(server.url + "/v1/completions", method="POST", data=json.dumps(
        {"model": "mix0", "prompt": "Hi", "max_tokens": 3, "stream": True}).encode())
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read().decode()
        assert resp.headers["Content-Type"] == "text/event-stream"
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_stop_strings_and_sampling(server, model, ctx, mixtures):
    client = server.client()
    _, _, full = reference(model, ctx, mixtures, "mix2", PROMPTS[3], 24)
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    r = client.completions.create(model="mix2", prompt=PROMPTS[3], max_tokens=24, temperature=0,
                                  stop=[stop, "\u00a7never"])
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="mix2", prompt=PROMPTS[3], max_tokens=24, temperature=0, stop=stop, stream=True))
    assert streamed == r.choices[0].text
    # a stop string across a token boundary (end of one word, space, start of
    # the next), plain and streamed
    if len(words[1]) >= 2 and len(words[2]) >= 2:
        stop2 = words[1][-2:] + " " + words[2][:2]
        r2 = client.completions.create(model="mix2", prompt=PROMPTS[3], max_tokens=24,
                                       temperature=0, stop=stop2)
        assert r2.choices[0].text == full[:full.index(stop2)]
        s2 = "".join(c.choices[0].text for c in client.completions.create(
            model="mix2", prompt=PROMPTS[3], max_tokens=24, temperature=0, stop=stop2,
            stream=True))
        assert s2 == r2.choices[0].text
    # seeded sampling repeats; top_p accepted
    a = [client.completions.create(model="mix2", prompt=PROMPTS[4], max_tokens=8,
                                   temperature=0.9, top_p=0.9, seed=7).choices[0].text
         for _ in range(2)]
    assert a[0] == a[1]


# ---- errors -------------------------------------------------------------------------

def test_unknown_mixture_is_404(server):
    with pytest.raises(openai.NotFoundError) as e:
        server.client().completions.create(model="no-such-mixture", prompt="x", max_tokens=2)
    assert e.value.status_code == 404
    assert e.value.body["code"] == "model_not_found"
    for name in ["../mix0", "/etc/passwd", ".hidden", "mix0.safetensors", "x" * 300, "mix0/.."]:
        status, body = post(server.url, "/v1/completions", {"model": name, "prompt": "x"})
        assert_openai_error(body, status, 404)


def test_bad_bodies_are_400(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="mix0", prompt="x", temperature=5)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="mix0", messages=[])
    with pytest.raises(openai.BadRequestError):  # above the server's --max-tokens
        client.completions.create(model="mix0", prompt="x", max_tokens=MAX_TOKENS + 1)
    for body in [b"", b"{", b"[1, 2]", b"null", b'{"model": 1}', b'{"model": "mix0"}',
                 b'{"model": "mix0", "prompt": 3}', b'{"model": "mix0", "prompt": "x"} trailing',
                 b'{"model": "mix0", "prompt": "x", "max_tokens": -1}',
                 b'{"model": "mix0", "prompt": "x", "max_tokens": 1.5}',
                 b'{"model": "mix0", "prompt": "x", "top_p": 0}',
                 b'{"model": "mix0", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}',
                 b'{"model": "mix0", "prompt": "x", "n": 2}',
                 b'{"model": "mix0", "prompt": "\xff\xfe"}',
                 b'{"model": "mix0", "prompt": ""}',
                 b'[' * 100000]:
        status, resp = post(server.url, "/v1/completions", body)
        assert_openai_error(resp, status, 400)
    status, resp = post(server.url, "/v1/chat/completions",
                        {"model": "mix0", "messages": [{"role": "wizard", "content": "x"}]})
    assert_openai_error(resp, status, 400)


def test_limits(server):
    # over-long prompt: 400 naming the context
    status, body = post(server.url, "/v1/completions",
                        {"model": "mix3", "prompt": "word " * (CTX + 10), "max_tokens": 1})
    assert_openai_error(body, status, 400)
    assert "--ctx" in body["error"]["message"]
    # body too large: 413 from the Content-Length alone, before the body is read ...
    host, port = server.url.rsplit("/", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sk:
        sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                   b"application/json\r\nContent-Length: 2000000000\r\n\r\n")
        head, _, rest = sk.makefile("rb").read().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert_openai_error(json.loads(rest), 413, 413)
    # ... and from the bytes when the body comes in chunks
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/completions", body=iter([b" " * 65536] * 40),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    r = conn.getresponse()
    assert_openai_error(json.loads(r.read()), r.status, 413)
    conn.close()
    # unknown route, wrong method
    status, body = post(server.url, "/v2/nothing", {})
    assert_openai_error(body, status, 404)
    req = urllib.request.Request(server.url + "/v1/completions", method="GET")
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("GET /v1/completions succeeded")
    except urllib.error.HTTPError as e:
        assert e.code == 405
        assert "error" in json.loads(e.read())


def test_hostile_input_does_not_crash(server):
    rng = random.Random(0)
    paths = ["/v1/completions", "/v1/chat/completions"]
    samples = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))) for _ in range(60)]
    samples += [b'{"model": "mix0", "messages": [{"role": "user", "content": [{"type": "image"}]}]}',
                b'{"model": "mix0", "messages": [{"role": "user", "content": "\\u0000x"}], '
                b'"max_tokens": 1}',
                b'{"model": "mix0", "prompt": "x", "seed": 1e300}',
                b'{"model": "mix0", "prompt": "x", "max_tokens": 1e20}',
                b'{"model": "mix0", "prompt": "x", "stop": ""}',
                b'{"model": "' + b"a" * 5000 + b'", "prompt": "x"}',
                b'{"model": "mix0", "prompt": "x", "stream": "yes"}',
                b'{"model": "mix0", "prompt": "x"' + b', "a": 1' * 5000 + b"}"]
    for i, body in enumerate(samples):
        status, resp = post(server.url, paths[i % 2], body, timeout=120)
        # "\u0000x" reads as "" (cJSON ends strings at NUL): a valid request
        assert (200 if b"u0000" in body else 400) <= status < 500, (body, status, resp)
        assert ("error" in resp) == (status != 200)
    with urllib.request.urlopen(server.url + "/health", timeout=30) as r:
        assert r.status == 200


# ---- concurrency, soak, shutdown ------------------------------------------------------

def test_concurrent_clients_match_sequential(server, model, ctx, mixtures):
    jobs = [(f"mix{i % N_MIX}", PROMPTS[i]) for i in range(8)]
    expect = [reference(model, ctx, mixtures, name, p, 16)[2] for name, p in jobs]
    client = server.client()

    def one(job):
        name, p = job
        return client.completions.create(model=name, prompt=p, max_tokens=16,
                                         temperature=0).choices[0].text

    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(one, jobs))
    assert got == expect
    # the four mixtures really differ from one another on one prompt
    outs = {reference(model, ctx, mixtures, f"mix{i}", PROMPTS[2], 16)[2] for i in range(N_MIX)}
    assert len(outs) > 1


def test_full_batch_with_small_lru_matches_sequential(mop, model_path, mixture_dir, model, ctx,
                                                      mixtures):
    # one batch of 8 sequences: 4 mixtures and the base model at once, mixed
    # reply lengths (sequences leave at different steps, queued ones join),
    # some streamed, with --lru 2 so the running mixtures outnumber the
    # loaded ones (a mixture in use is never evicted)
    base = base_name(model_path)
    jobs = [(f"mix{i % N_MIX}" if i % 5 != 4 else base, PROMPTS[i % len(PROMPTS)], 4 + 3 * (i % 4),
             i % 3 == 0) for i in range(12)]
    expect = [reference(model, ctx, mixtures, name, p, n)[2] for name, p, n, _ in jobs]
    s = Server(mop, model_path, mixture_dir, "--batch", "8", "--lru", "2")
    try:
        client = s.client()

        def one(job):
            name, p, n, stream = job
            if not stream:
                return client.completions.create(model=name, prompt=p, max_tokens=n,
                                                 temperature=0).choices[0].text
            return "".join(c.choices[0].text for c in client.completions.create(
                model=name, prompt=p, max_tokens=n, temperature=0, stream=True))

        with ThreadPoolExecutor(len(jobs)) as ex:
            got = list(ex.map(one, jobs))
        assert got == expect
    finally:
        assert s.stop() == 0, "".join(s.log)
    assert "batch of 8 sequences" in "".join(s.log)


def test_soak_rss_bounded(server):
    client = server.client()

    # short requests: a few prompt tokens, one generated token (the machine
    # these run on is shared; the point is many requests, not long ones)
    def one(i):
        kind = i % 3
        if kind == 0:
            return client.completions.create(model=f"mix{i % N_MIX}", prompt=PROMPTS[i % 8],
                                             max_tokens=1, temperature=0).usage.completion_tokens
        if kind == 1:
            return client.chat.completions.create(
                model=f"mix{i % N_MIX}", messages=[{"role": "system", "content": ""},
                                                   {"role": "user", "content": "Hi"}],
                max_tokens=1, temperature=0).usage.completion_tokens
        return sum(1 for _ in client.completions.create(
            model=f"mix{i % N_MIX}", prompt=PROMPTS[i % 8], max_tokens=1, stream=True))

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(one, range(20)))  # warm-up: every worker has every mixture loaded
        rss0 = server.rss()
        t0 = time.monotonic()
        results = list(ex.map(one, range(SOAK_REQUESTS)))
        dt = time.monotonic() - t0
    rss1 = server.rss()
    print(f"soak: {SOAK_REQUESTS} requests in {dt:.1f} s, RSS {rss0 / 1e6:.1f} -> "
          f"{rss1 / 1e6:.1f} MB")
    assert len(results) == SOAK_REQUESTS and all(r >= 1 for r in results)
    assert dt < SOAK_SECONDS, f"{SOAK_REQUESTS} requests took {dt:.1f} s"
    assert rss1 - rss0 < SOAK_RSS_BOUND, f"RSS grew {(rss1 - rss0) / 1e6:.1f} MB ({dt:.1f} s)"


def test_mixture_added_while_running(server, model, ctx, mixture_dir):
    # a file dropped into DIR is found when a request names it
    with libmop.Mixture(model, n_experts=2, prompt_len=3, gate_hidden=8, seed=999) as m:
        m.save(mixture_dir / "late.safetensors.tmp")
        os.replace(mixture_dir / "late.safetensors.tmp", mixture_dir / "late.safetensors")
        expect = model.detokenize(m.generate(ctx, model.tokenize(PROMPTS[5], add_bos=True), 8,
                                             temperature=0))
    client = server.client()
    r = client.completions.create(model="late", prompt=PROMPTS[5], max_tokens=8, temperature=0)
    assert r.choices[0].text == expect
    assert "late" in [x.id for x in client.models.list().data]
    # a file that does not load is a server-side error naming the mixture
    status, body = post(server.url, "/v1/completions", {"model": "broken", "prompt": "x"})
    assert_openai_error(body, status, 500)
    assert "broken" in body["error"]["message"]


def test_sigterm_drains_running_requests(mop, model_path, mixture_dir):
    s = Server(mop, model_path, mixture_dir, "--workers", "1", "--queue", "0")
    try:
        client = s.client()
        it = client.completions.create(model="mix1", prompt=PROMPTS[1], max_tokens=40,
                                       temperature=0, stream=True)
        first = next(iter(it))  # the request is running
        # one worker, no queue: a second request now is refused with 429
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="mix0", prompt="x", max_tokens=1)
        s.proc.send_signal(signal.SIGTERM)
        rest = list(it)
        pieces = [first] + rest
        assert pieces[-1].choices[0].finish_reason in ("length", "stop")
        assert sum(len(p.choices[0].text) > 0 for p in pieces) > 5  # it ran to its end
        assert s.proc.wait(timeout=60) == 0
    finally:
        rc = s.stop()
    assert rc == 0
    log = "".join(s.log)
    assert "draining" in log and "stopped" in log


def test_timeout_is_504(mop, model_path, mixture_dir):
    # --timeout 1 and a request that cannot finish in a second here: a long
    # prompt and 256 tokens (the deadline is checked at every token)
    s = Server(mop, model_path, mixture_dir, "--timeout", "1", "--ctx", "2048",
               "--max-tokens", "256")
    try:
        prompt = " ".join(["the cat sat on the mat"] * 200)
        status, body = post(s.url, "/v1/completions", {"model": "mix0", "prompt": prompt,
                                                       "max_tokens": 256, "temperature": 0})
        assert_openai_error(body, status, 504)
        assert body["error"]["code"] == "timeout" and "--timeout" in body["error"]["message"]
        # streaming: the error arrives as an event, then [DONE]
        req = urllib.request.Request(s.url + "/v1/completions", method="POST", data=json.dumps(
            {"model": "mix0", "prompt": prompt, "max_tokens": 256, "stream": True}).encode())
        with urllib.request.urlopen(req, timeout=60) as resp:
            events = [e for e in resp.read().decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["error"]["code"] == "timeout"
    finally:
        assert s.stop() == 0


def test_usage_and_start_errors(mop, model_path, tmp_path):
    def run(*args):
        r = subprocess.run([str(mop), "serve", *map(str, args)], capture_output=True, timeout=120)
        return r.returncode, r.stderr.decode(errors="replace")

    for args in [[], ["--port", "70000", model_path], ["--workers", "0", model_path],
                 ["--ctx", "1", model_path], [model_path, "--bogus"]]:
        rc, err = run(*args)
        assert rc == 2 and err.count("\n") == 1 and "mop serve" in err, (args, err)
    rc, err = run(model_path, "--mixtures", tmp_path / "missing", "--port", "0")
    assert rc == 1 and "cannot open the mixtures folder" in err, err
    rc, err = run(tmp_path / "missing.gguf", "--port", "0")
    assert rc == 1 and err.startswith("mop: "), err
