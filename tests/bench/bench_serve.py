#!/usr/bin/env python3
"""Throughput and latency of `mop serve` with the official `openai` client.

Not a test: prints a markdown table (and --json) for docs/PERFORMANCE.md.
For each number of concurrent clients (--clients, default 1,4,16) and each
case, the same total number of requests (--requests) is sent, every client
sending its share back to back:

  (a) one-mixture   every client uses the same mixture
  (b) own-mixture   client i uses mixture i (as many mixtures as clients)
  (c) base          the base model, no mixture

Requests are greedy completions of a fixed prompt with max_tokens set, so
every request makes the same number of tokens unless the model stops early
(the generated count is what is summed). Throughput = generated tokens / wall
time of the whole case; latency = one request's wall time at the client,
queueing included; p50/p99 by the nearest-rank method over the requests.

The server is started here on 127.0.0.1 (--port 0) with the given workers
(sequences in its continuous batch) and threads; mixtures are made through the bindings (random, K x P given by
--experts/--prompt-len) in a temporary folder.

--llama-server PATH adds the peer: llama.cpp's own server (built from the
sources that llama-cpp-python's sdist vendors) on the same GGUF, with as many
parallel slots as --workers (continuous batching, --ctx tokens per slot),
--threads threads and OMP_WAIT_POLICY=PASSIVE, measured on case (c) after
libmop, with the same client and requests; the table gives its tok/s and
libmop's ratio.

    LIBMOP_BUILD_DIR=build .venv/bin/python tests/bench/bench_serve.py \\
        $(scripts/model-path.sh) --workers 16 --threads 1 [--llama-server PATH]
"""
import socket
import urllib.request
import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bindings" / "python"))


def pct(values, q):
    v = sorted(values)
    return v[max(0, math.ceil(q / 100 * len(v)) - 1)]


def start_server(mop, model, mixdir, workers, threads, ctx, lru):
    cmd = [str(mop), "serve", model, "--mixtures", str(mixdir), "--port", "0",
           "--workers", str(workers), "--threads", str(threads), "--ctx", str(ctx),
           "--queue", "256", "--lru", str(lru), "--timeout", "600"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    url = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode(errors="replace")
        if not line:
            break
        if "listening on " in line:
            url = line.split("listening on ", 1)[1].strip()
            break
    if not url:
        proc.kill()
        raise SystemExit("the server did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, url


def start_llama_server(exe, model, workers, threads, ctx):
    """llama.cpp's server on a free 127.0.0.1 port; waits for /health."""
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([exe, "-m", model, "--host", "127.0.0.1", "--port", str(port),
                             "-np", str(workers), "-c", str(ctx * workers), "-t", str(threads),
                             "-tb", str(threads), "--cont-batching", "--no-webui"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("llama-server did not become healthy")


def run_case(client, names, n_clients, n_requests, prompt, max_tokens):
    """names[i] is client i's model. Returns (tokens, wall seconds, latencies)."""
    per = [n_requests // n_clients + (1 if i < n_requests % n_clients else 0)
           for i in range(n_clients)]
    lat, toks = [], []
    lock = threading.Lock()

    def one_client(i):
        for _ in range(per[i]):
            t0 = time.perf_counter()
            r = client.completions.create(model=names[i], prompt=prompt, max_tokens=max_tokens,
                                          temperature=0)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                toks.append(r.usage.completion_tokens)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_clients) as ex:
        list(ex.map(one_client, range(n_clients)))
    return sum(toks), time.perf_counter() - t0, lat


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--build-dir", default=os.environ.get("LIBMOP_BUILD_DIR", str(ROOT / "build")))
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=16, help="requests per case (default 16)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--prompt", default="The history of the city of Paris begins")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--llama-server", help="llama.cpp's server binary: the peer on case (c)")
    a = ap.parse_args()
    os.environ.setdefault("LIBMOP_LIBRARY", str(pathlib.Path(a.build_dir) / "libmop.so"))
    import libmop
    import openai

    clients = [int(c) for c in a.clients.split(",")]
    n_mix = max(clients)
    with tempfile.TemporaryDirectory() as tmp:
        with libmop.Model(a.model, n_threads=1) as m:
            for i in range(n_mix):
                with libmop.Mixture(m, n_experts=a.experts, prompt_len=a.prompt_len,
                                    seed=1000 + i) as x:
                    x.save(pathlib.Path(tmp) / f"bench{i:02d}.safetensors")
        mop = pathlib.Path(a.build_dir) / "src" / "cli" / "mop"
        proc, url = start_server(mop, a.model, tmp, a.workers, a.threads, a.ctx, n_mix)
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                   timeout=600)
            base = client.models.list().data[0].id
            # warm-up: every mixture is loaded and prepared once
            run_case(client, [f"bench{i:02d}" for i in range(n_mix)], n_mix, 2 * n_mix,
                     a.prompt, 1)
            rows = []
            for n in clients:
                cases = {"(a) one mixture": ["bench00"] * n,
                         "(b) own mixture": [f"bench{i:02d}" for i in range(n)],
                         "(c) base model": [base] * n}
                for case, names in cases.items():
                    tok, wall, lat = run_case(client, names, n, a.requests, a.prompt,
                                              a.max_tokens)
                    row = dict(clients=n, case=case, requests=len(lat), tokens=tok, wall_s=wall,
                               tok_per_s=tok / wall, p50_s=pct(lat, 50), p99_s=pct(lat, 99))
                    rows.append(row)
                    print(f"{n:>2} clients {case:<16} {row['tok_per_s']:7.1f} tok/s  "
                          f"p50 {row['p50_s']:6.2f} s  p99 {row['p99_s']:6.2f} s", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    peer = {}
    if a.llama_server:
        proc, url = start_llama_server(a.llama_server, a.model, a.workers, a.threads, a.ctx)
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                   timeout=600)
            run_case(client, ["peer"], 1, 2, a.prompt, 1)          # warm-up
            for n in clients:
                tok, wall, lat = run_case(client, ["peer"] * n, n, a.requests, a.prompt,
                                          a.max_tokens)
                peer[n] = dict(clients=n, tokens=tok, wall_s=wall, tok_per_s=tok / wall,
                               p50_s=pct(lat, 50), p99_s=pct(lat, 99))
                print(f"{n:>2} clients llama.cpp server {peer[n]['tok_per_s']:7.1f} tok/s  "
                      f"p50 {peer[n]['p50_s']:6.2f} s  p99 {peer[n]['p99_s']:6.2f} s", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    print("\n| clients | case | requests | tokens | tok/s | p50 s | p99 s | llama.cpp server |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        p = peer.get(r["clients"]) if r["case"].startswith("(c)") else None
        ref = (f"{p['tok_per_s']:.1f} tok/s, p50 {p['p50_s']:.2f} s, p99 {p['p99_s']:.2f} s "
               f"(libmop {r['tok_per_s'] / p['tok_per_s']:.2f}x)" if p else
               "not measured" if not a.llama_server else "-")
        print(f"| {r['clients']} | {r['case']} | {r['requests']} | {r['tokens']} | "
              f"{r['tok_per_s']:.1f} | {r['p50_s']:.2f} | {r['p99_s']:.2f} | {ref} |")
    for n in clients:
        by = {r["case"][:3]: r for r in rows if r["clients"] == n}
        print(f"{n} clients: (b)/(a) = {by['(b)']['tok_per_s'] / by['(a)']['tok_per_s']:.2f}, "
              f"(a)/(c) = {by['(a)']['tok_per_s'] / by['(c)']['tok_per_s']:.2f}")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(dict(args=vars(a), rows=rows,
                                                        llama_server=list(peer.values())),
                                                   indent=1))


if __name__ == "__main__":
    main()
