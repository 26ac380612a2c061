#!/usr/bin/env python3
"""Inference speed and memory of libmop against llama.cpp on the same F32 GGUF.

Run by hand (not a test):

    .venv/bin/python tests/bench/convert_f32.py          # once: build/SmolLM2-135M-Instruct.F32.gguf
    .venv/bin/python tests/bench/bench_inference.py [--threads 2] [--rounds 3]

Both engines run the same weights (all F32), the same fixed token sequence
(token i = (1000 + 37 i) mod n_vocab, as `mop bench` uses), a 512-token
context, and the same thread count:

- prefill: N prompt tokens in one call, from an empty cache
  (llama.cpp: llm.reset(); llm.eval(tokens); libmop: one mop_ctx_decode);
- decode: the next G tokens one call each, no sampling.

Every measurement runs in a fresh subprocess (libmop: `mop bench --json`;
llama.cpp: this script with --worker llama, through llama-cpp-python), one
warm-up run and --reps measured runs inside; the engines alternate for
--rounds rounds and the table shows medians over all measured runs. Peak RSS
is the child's ru_maxrss from os.wait4, the same measure for both engines.

Goals (issue part 9): prefill >= 1.2x llama.cpp, decode >= 0.9x llama.cpp,
libmop peak RSS <= 1.15 x (F32 weight bytes + F32 KV cache bytes).
"""
import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "build" / "SmolLM2-135M-Instruct.F32.gguf"


def bench_tokens(n, n_vocab):
    return [(1000 + 37 * i) % n_vocab for i in range(n)]


# ---- the llama.cpp side, run in its own process ---------------------------------

def llama_worker(args):
    from llama_cpp import Llama
    t0 = time.perf_counter()
    llm = Llama(model_path=args.model, n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=args.ctx, n_batch=512, logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0
    tokens = bench_tokens(args.prompt_tokens + args.gen_tokens, llm.n_vocab())
    prompt, rest = tokens[:args.prompt_tokens], tokens[args.prompt_tokens:]

    def run_once():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        for tok in rest:
            llm.eval([tok])
        t2 = time.perf_counter()
        return len(prompt) / (t1 - t0), (len(rest) / (t2 - t1)) if rest else 0.0

    run_once()  # warm-up
    prefill, decode = [], []
    for _ in range(args.reps):
        p, d = run_once()
        prefill.append(p)
        decode.append(d)
    print(json.dumps({"prefill_tok_s_all": prefill, "decode_tok_s_all": decode, "load_s": load_s}))


# ---- the driver ------------------------------------------------------------------

def run_child(cmd):
    """Run cmd, return (parsed JSON of its stdout, its peak RSS in bytes)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.stdout.read(), p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"bench_inference: {' '.join(cmd)} failed ({p.returncode}): {err.decode().strip()}")
    return json.loads(out.decode().strip().splitlines()[-1]), ru.ru_maxrss * 1024


def mib(b):
    return b / (1024 * 1024)


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description="libmop vs llama.cpp inference benchmark")
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="F32 GGUF (see convert_f32.py)")
    ap.add_argument("--mop", default=str(ROOT / "build" / "src" / "cli" / "mop"), help="mop binary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3, help="measured runs inside each process")
    ap.add_argument("--rounds", type=int, default=3, help="alternating process pairs")
    ap.add_argument("--json-out", help="also write all numbers to this file")
    ap.add_argument("--worker", choices=["llama"], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker == "llama":
        llama_worker(args)
        return
    if not os.path.exists(args.model):
        sys.exit(f"bench_inference: {args.model} not found; run tests/bench/convert_f32.py first")
    if not os.path.exists(args.mop):
        sys.exit(f"bench_inference: {args.mop} not found; build with meson/ninja first")
    import llama_cpp

    common = ["--threads", str(args.threads), "--prompt-tokens", str(args.prompt_tokens),
              "--gen-tokens", str(args.gen_tokens), "--ctx", str(args.ctx), "--reps", str(args.reps)]
    mop_cmd = [args.mop, "bench", args.model, "--json"] + common
    llama_cmd = [sys.executable, __file__, "--worker", "llama", "--model", args.model] + common

    load_start = os.getloadavg()
    res = {"libmop": {"prefill": [], "decode": [], "rss": []},
           "llama.cpp": {"prefill": [], "decode": [], "rss": []}}
    mop_info = None
    for r in range(args.rounds):
        for engine, cmd in (("libmop", mop_cmd), ("llama.cpp", llama_cmd)) if r % 2 == 0 else \
                           (("llama.cpp", llama_cmd), ("libmop", mop_cmd)):
            out, rss = run_child(cmd)
            res[engine]["prefill"] += out["prefill_tok_s_all"]
            res[engine]["decode"] += out["decode_tok_s_all"]
            res[engine]["rss"].append(rss)
            if engine == "libmop":
                mop_info = out
            print(f"round {r + 1}/{args.rounds} {engine:9s}: prefill "
                  f"{statistics.median(out['prefill_tok_s_all']):8.1f} tok/s, decode "
                  f"{statistics.median(out['decode_tok_s_all']):7.1f} tok/s, peak RSS {mib(rss):6.1f} MiB",
                  file=sys.stderr, flush=True)

    med = {e: {k: (statistics.median(v) if k != "rss" else max(v)) for k, v in d.items()}
           for e, d in res.items()}
    best = {e: {k: max(v) for k, v in d.items()} for e, d in res.items()}
    mop, llama = med["libmop"], med["llama.cpp"]
    weight_bytes, kv_bytes = mop_info["weight_bytes"], mop_info["kv_bytes_f32"]
    rss_budget = 1.15 * (weight_bytes + kv_bytes)
    r_prefill = mop["prefill"] / llama["prefill"]
    r_decode = mop["decode"] / llama["decode"]

    mop_version = subprocess.run([args.mop, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"model: {args.model} ({mib(os.path.getsize(args.model)):.1f} MiB F32 GGUF)")
    print(f"cpu: {cpu_name()}, {os.cpu_count()} logical cores; threads: {args.threads}")
    print(f"engines: {mop_version}, llama-cpp-python {llama_cpp.__version__}")
    print(f"prefill {args.prompt_tokens} tokens, decode {args.gen_tokens} tokens, n_ctx {args.ctx}; "
          f"{args.rounds} rounds x {args.reps} runs per engine, medians; RSS = max over processes")
    print()
    print(f"| {'engine':18s} | {'prefill tok/s':>13s} | {'decode tok/s':>12s} | {'peak RSS MiB':>12s} |")
    print(f"|{'-' * 20}|{'-' * 15}|{'-' * 14}|{'-' * 14}|")
    for name, m in (("libmop", mop), ("llama.cpp", llama)):
        print(f"| {name:18s} | {m['prefill']:13.1f} | {m['decode']:12.1f} | {mib(m['rss']):12.1f} |")
    print(f"| {'libmop / llama.cpp':18s} | {r_prefill:12.2f}x | {r_decode:11.2f}x | "
          f"{mop['rss'] / llama['rss']:11.2f}x |")
    print()
    # On a shared machine the median mixes in other processes' load; the best
    # run of each engine is the closer estimate of its unloaded speed.
    bp = best["libmop"]["prefill"] / best["llama.cpp"]["prefill"]
    bd = best["libmop"]["decode"] / best["llama.cpp"]["decode"]
    print(f"best runs: libmop prefill {best['libmop']['prefill']:.1f}, decode "
          f"{best['libmop']['decode']:.1f}; llama.cpp prefill {best['llama.cpp']['prefill']:.1f}, "
          f"decode {best['llama.cpp']['decode']:.1f} tok/s; ratios {bp:.2f}x prefill, {bd:.2f}x decode")
    load_end = os.getloadavg()
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} "
          f"({os.cpu_count()} cores)" + ("  -- machine busy, medians are noisy"
                                         if max(load_start[0], load_end[0]) > os.cpu_count() else ""))
    print()

    def verdict(ok):
        return "met" if ok else "MISSED"

    print(f"goal prefill >= 1.20x llama.cpp: {r_prefill:.2f}x -> {verdict(r_prefill >= 1.2)}")
    print(f"goal decode  >= 0.90x llama.cpp: {r_decode:.2f}x -> {verdict(r_decode >= 0.9)}")
    print(f"goal libmop peak RSS <= 1.15 x (weights {mib(weight_bytes):.1f} MiB + F32 KV "
          f"{mib(kv_bytes):.1f} MiB) = {mib(rss_budget):.1f} MiB: {mib(mop['rss']):.1f} MiB -> "
          f"{verdict(mop['rss'] <= rss_budget)}")

    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "raw": res, "median": med, "best": best, "weight_bytes": weight_bytes,
                       "kv_bytes_f32": kv_bytes, "ratio_prefill": r_prefill, "ratio_decode": r_decode},
                      f, indent=2)


if __name__ == "__main__":
    main()
