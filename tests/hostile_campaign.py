#!/usr/bin/env python3
"""Hostile-input campaign (issue 14), bounded, for a sanitizer build of `mop`.

Builds small valid inputs in a temporary directory (a 2-layer GGUF model
with a byte-level BPE vocabulary and a ChatML template, a pruned copy, a
trained mixture, instruction data), then runs RUNS seeded mutations of
them, and bad option values for every command, through the CLI:

  gguf      byte flips biased to the header, truncation, huge counts and
            lengths, NaN/Inf/3e38 weights        -> info, ppl, generate
  pruned    the same on the 2:4 file               -> info, ppl
  mixture   header JSON and data mutations         -> eval, gate-stats
  jsonl     broken lines, wrong types, bad UTF-8   -> eval, train
  options   each option of each command's --help with a bad value

A run passes when it exits 0, 1 or 2 (success, clean error, usage error)
within the time limit, prints no sanitizer report, and leaves no
temporary file beside an output path. Any other outcome is printed with the
command and the mutated input kept under --keep, and the script exits 1.

    tests/hostile_campaign.py --mop build-asan/src/cli/mop --runs 300 --seed 1

The Python misuse cases (tests/python/test_misuse.py) run under the same
sanitizer build with --pytest (the ASan runtime preloaded into Python).
"""
import argparse
import json
import os
import pathlib
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPORT = re.compile(r"(AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|"
                    r"runtime error:|ThreadSanitizer)")
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=86"}
BAD_VALUES = ["-1", "0", "-2147483649", "2147483648", "99999999999999999999", "nan", "inf",
              "1e400", "-0", "", "abc", "0x10", "1.5", " 3", "\u00e9"]


# ---------------------------------------------------------------- seed files
def byte_unicode():
    """GPT-2's byte -> printable code point map (byte-level BPE vocabulary)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def tiny_gguf(path, seed=0):
    import gguf
    rng = np.random.default_rng(seed)
    bu = byte_unicode()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["\u0120 t", "h e", "\u0120t he", "i n", "a n"]
    tokens = specials + [bu[b] for b in range(256)] + [m.replace(" ", "") for m in merges]
    ttype = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    d, ff, n_layer, n_head, n_kv = 32, 64, 2, 4, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("hostile-tiny")
    w.add_block_count(n_layer)
    w.add_context_length(128)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(d // n_head)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(ttype)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' "
                        "+ message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}")

    def t(name, *shape):
        w.add_tensor(name, (0.2 * rng.standard_normal(shape)).astype(np.float32))
    t("token_embd.weight", len(tokens), d)
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    hd = d // n_head
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        t(f"blk.{i}.attn_q.weight", d, d)
        t(f"blk.{i}.attn_k.weight", n_kv * hd, d)
        t(f"blk.{i}.attn_v.weight", n_kv * hd, d)
        t(f"blk.{i}.attn_output.weight", d, d)
        t(f"blk.{i}.ffn_gate.weight", ff, d)
        t(f"blk.{i}.ffn_up.weight", ff, d)
        t(f"blk.{i}.ffn_down.weight", d, ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def data_lines(n, seed):
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "red", "blue", "in", "an"]
    return [json.dumps({"task": f"t{i % 2}",
                        "instruction": " ".join(rng.choice(words) for _ in range(6)),
                        "response": " ".join(rng.choice(words) for _ in range(3))})
            for i in range(n)]


def header_len(blob, kind):
    """Bytes of blob worth mutating most: the GGUF header up to its tensor
    data (approximated by the first 8 KiB), or the safetensors JSON header."""
    if kind == "mixture" and len(blob) >= 8:
        return min(len(blob), 8 + struct.unpack("<Q", blob[:8])[0])
    return min(len(blob), 8192)


# ---------------------------------------------------------------- mutations
def mutate_bytes(blob, kind, rng):
    b = bytearray(blob)
    h = header_len(blob, kind)
    op = rng.randrange(6)
    if op == 0:  # flip a few bytes, mostly in the header
        for _ in range(rng.randint(1, 8)):
            hi = h if rng.random() < 0.8 else len(b)
            i = rng.randrange(hi)
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncate
        del b[rng.randrange(len(b)):]
    elif op == 2:  # a huge little-endian count/length somewhere in the header
        i = rng.randrange(max(h - 8, 1))
        b[i:i + 8] = struct.pack("<Q", rng.choice([2**63, 2**64 - 1, 2**32, 2**31 - 1,
                                                     300000000, 0]))
    elif op == 3:  # non-finite or extreme floats in the data
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(h, max(len(b) - 4, h + 1)) & ~3
            b[i:i + 4] = struct.pack("<f", rng.choice([float("nan"), float("inf"), 3e38, -3e38]))
    elif op == 4:  # junk appended or inserted
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:  # a header byte range replaced by a copy of another
        i, j = rng.randrange(h), rng.randrange(h)
        n = rng.randint(1, 32)
        b[i:i + n] = blob[j:j + n]
    return bytes(b)


def mutate_jsonl(lines, rng):
    lines = list(lines)
    i = rng.randrange(len(lines))
    rec = json.loads(lines[i])
    op = rng.randrange(8)
    if op == 0:
        lines[i] = lines[i][:rng.randrange(len(lines[i]))]
    elif op == 1:
        rec[rng.choice(list(rec))] = rng.choice([None, 12, [], {}, 1e308, True])
    elif op == 2:
        del rec[rng.choice(list(rec))]
    elif op == 3:
        rec["instruction"] = "x" * rng.choice([0, 10000, 200000])
    elif op == 4:
        lines[i] = "\xff\xfe" + lines[i]
    elif op == 5:
        rec["response"] = "".join(chr(rng.randrange(1, 0x10FFFF)) for _ in range(40)
                                  ).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    elif op == 6:
        lines[i] = "[" * 10000
    else:
        rec["task"] = "\u0000" + "t" * rng.randint(0, 300)
    if op in (1, 2, 3, 5, 7):
        lines[i] = json.dumps(rec)
    return lines


# ---------------------------------------------------------------- running
class Campaign:
    def __init__(self, a):
        self.a = a
        self.mop = str(pathlib.Path(a.mop).resolve())
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="mop-hostile-"))
        self.keep = pathlib.Path(a.keep)
        self.env = dict(os.environ, **SAN_ENV)
        self.failures = 0
        self.runs = 0
        self.exits = {}
        self.deadline = time.time() + a.seconds

    def call(self, args, inputs=(), outputs=()):
        """One run; True when it passed. inputs: files to keep on failure;
        outputs: paths whose directory must hold no temporary leftovers."""
        self.runs += 1
        try:
            r = subprocess.run([self.mop, *map(str, args)], capture_output=True,
                               timeout=self.a.timeout, env=self.env, cwd=self.dir)
            rc, err = r.returncode, r.stderr.decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            rc, err = "timeout", ""
        self.exits[rc] = self.exits.get(rc, 0) + 1
        if self.a.verbose:
            print(f"rc={rc}: mop {' '.join(map(str, args))}: {err.strip()[-160:]}", flush=True)
        bad = rc not in (0, 1, 2) or REPORT.search(err)
        for o in outputs:
            o = pathlib.Path(o)
            left = [p.name for p in o.parent.glob(o.name + "*") if p.name != o.name]
            if left:
                bad, err = True, err + f"\nleft behind: {left}"
        if bad:
            self.failures += 1
            case = self.keep / f"case{self.failures}"
            case.mkdir(parents=True, exist_ok=True)
            for f in inputs:
                shutil.copy(f, case)
            (case / "command.txt").write_text(" ".join(map(str, args)) + f"\nrc={rc}\n{err}\n")
            print(f"FAIL rc={rc}: mop {' '.join(map(str, args))}\n{err[-2000:]}", flush=True)
        return not bad

    def seeds(self):
        d = self.dir
        tiny_gguf(d / "tiny.gguf")
        (d / "train.jsonl").write_text("\n".join(data_lines(16, 1)) + "\n")
        (d / "text.txt").write_text("the cat sat on the mat. " * 20)
        ok = self.call(["info", d / "tiny.gguf"])
        ok &= self.call(["prune", d / "tiny.gguf", "--pattern", "2:4", "-o", d / "pruned.gguf"])
        ok &= self.call(["train", d / "tiny.gguf", "--data", d / "train.jsonl", "-K", "2", "-P",
                         "2", "--steps", "2", "--batch", "2", "-t", "1", "-o",
                         d / "mixture.safetensors"])
        if not ok or not (d / "pruned.gguf").exists() or not (d / "mixture.safetensors").exists():
            raise SystemExit("hostile_campaign: could not build the seed inputs (see above)")
        self.blobs = {k: (d / f).read_bytes() for k, f in
                      (("gguf", "tiny.gguf"), ("pruned", "pruned.gguf"),
                       ("mixture", "mixture.safetensors"))}
        self.lines = (d / "train.jsonl").read_text().splitlines()

    def one(self, rng):
        d = self.dir
        kind = rng.choice(["gguf", "gguf", "pruned", "mixture", "mixture", "jsonl", "options"])
        if kind in ("gguf", "pruned"):
            f = d / f"m-{kind}.gguf"
            f.write_bytes(mutate_bytes(self.blobs[kind], kind, rng))
            cmd = rng.choice([["info", f], ["ppl", f, d / "text.txt", "--ctx", "32",
                                            "--max-tokens", "64", "-t", "1"],
                              ["generate", f, "--prompt", "the cat", "-n", "4", "-t", "1"]])
            return self.call(cmd, [f])
        if kind == "mixture":
            f = d / "m-mixture.safetensors"
            f.write_bytes(mutate_bytes(self.blobs["mixture"], kind, rng))
            out = d / "gate.csv"
            cmd = rng.choice([["eval", d / "tiny.gguf", "--mixture", f, "--data",
                               d / "train.jsonl", "-t", "1"],
                              ["gate-stats", d / "tiny.gguf", "--mixture", f, "--data",
                               d / "train.jsonl", "-t", "1", "-o", out]])
            return self.call(cmd, [f], [out])
        if kind == "jsonl":
            f = d / "m-data.jsonl"
            f.write_text("\n".join(mutate_jsonl(self.lines, rng)) + "\n", errors="surrogatepass")
            out = d / "m-mix.safetensors"
            cmd = rng.choice([["eval", d / "tiny.gguf", "--data", f, "-t", "1"],
                              ["train", d / "tiny.gguf", "--data", f, "-K", "2", "-P", "2",
                               "--steps", "1", "--batch", "2", "-t", "1", "-o", out]])
            return self.call(cmd, [f], [out])
        return self.bad_option(rng)

    def bad_option(self, rng):
        d = self.dir
        base = {"info": [d / "tiny.gguf"],
                "ppl": [d / "tiny.gguf", d / "text.txt", "--ctx", "32", "--max-tokens", "64"],
                "generate": [d / "tiny.gguf", "--prompt", "the", "-n", "2"],
                "bench": [d / "tiny.gguf", "--prompt-tokens", "4", "--gen-tokens", "2", "-r", "1"],
                "eval": [d / "tiny.gguf", "--mixture", d / "mixture.safetensors", "--data",
                         d / "train.jsonl"],
                "gate-stats": [d / "tiny.gguf", "--mixture", d / "mixture.safetensors", "--data",
                               d / "train.jsonl", "-o", d / "o.csv"],
                "train": [d / "tiny.gguf", "--data", d / "train.jsonl", "-K", "2", "-P", "2",
                          "--steps", "1", "--batch", "2", "-o", d / "o.safetensors"],
                "prune": [d / "tiny.gguf", "--pattern", "2:4", "-o", d / "o.gguf"],
                "fed-sim": [d / "tiny.gguf", "--data", d / "train.jsonl", "--val",
                            d / "train.jsonl", "--clients", "2", "--rounds", "1",
                            "--local-steps", "1", "-K", "2", "-P", "2", "--split", "iid",
                            "-b", "2"]}
        cmd = rng.choice(sorted(base))
        opts = self.options(cmd)
        opt = rng.choice(opts)
        args = [cmd, *base[cmd], opt, rng.choice(BAD_VALUES), "-t", "1"]
        outs = [p for p in base[cmd] if isinstance(p, pathlib.Path) and p.name.startswith("o.")]
        return self.call(args, [], outs)

    def options(self, cmd, _cache={}):
        if cmd not in _cache:
            r = subprocess.run([self.mop, cmd, "--help"], capture_output=True, text=True)
            found = re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*) [A-Z]", r.stdout, re.M)
            _cache[cmd] = [o for o in found if o not in ("--threads",)] or ["--bogus"]
        return _cache[cmd]

    def run(self):
        self.seeds()
        rng = random.Random(self.a.seed)
        for _ in range(self.a.runs):
            if time.time() > self.deadline:
                print(f"time budget of {self.a.seconds} s reached", flush=True)
                break
            self.one(rng)
        print(f"hostile campaign: {self.runs} runs, {self.failures} failures "
              f"(seed {self.a.seed}); exit codes {dict(sorted(self.exits.items(), key=str))}",
              flush=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.failures == 0

    def misuse_pytest(self, libmop_so):
        """tests/python/test_misuse.py against the sanitizer build of the
        library, with the ASan runtime preloaded. On the real model: its
        cases need a generation that does not end at once (a random tiny
        model often emits end-of-generation first)."""
        asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                              text=True).stdout.strip()
        ubsan = subprocess.run(["gcc", "-print-file-name=libubsan.so"], capture_output=True,
                               text=True).stdout.strip()
        env = dict(os.environ, LIBMOP_LIBRARY=str(pathlib.Path(libmop_so).resolve()),
                   LD_PRELOAD=f"{asan} {ubsan}",
                   ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
                   UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(ROOT / "tests/python/test_misuse.py")], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
        tail = (r.stdout + r.stderr)[-3000:]
        print(tail, flush=True)
        ok = r.returncode == 0 and not REPORT.search(r.stdout + r.stderr)
        print(f"misuse under sanitizers: {'ok' if ok else 'FAILED'}", flush=True)
        return ok


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mop", default=str(ROOT / "build-asan/src/cli/mop"),
                   help="the mop binary (a sanitizer build); default build-asan/src/cli/mop")
    p.add_argument("--runs", type=int, default=300, help="mutated runs; default 300")
    p.add_argument("--seconds", type=float, default=300, help="time budget; default 300")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60, help="per run, seconds; default 60")
    p.add_argument("--keep", default="/tmp/mop-hostile-failures",
                   help="where failing inputs are kept")
    p.add_argument("-v", "--verbose", action="store_true", help="print every run")
    p.add_argument("--pytest", metavar="LIBMOP_SO",
                   help="also run tests/python/test_misuse.py against this library")
    a = p.parse_args(argv)
    c = Campaign(a)
    ok = c.run()
    if a.pytest:
        ok &= c.misuse_pytest(a.pytest)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
