"""Tests of examples/data/build_dataset.py (the multi-task instruction set).

Needs the Debian corpora (scripts/setup.sh installs them); skipped otherwise.
Four small builds (per-task 50) run as subprocesses, a few seconds each; the
hetero task set adds two builds at per-task 60 and one of the five new tasks
at per-task 1000 (about 4 s).
"""
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "data" / "build_dataset.py"
SPLITS = ("train", "validation", "test")
CORPUS_FILES = {   # one file per Debian package the default build reads
    "wordnet-base": "/usr/share/wordnet/data.noun",
    "dict-freedict-eng-fra": "/usr/share/dictd/freedict-eng-fra.index",
    "dict-freedict-eng-deu": "/usr/share/dictd/freedict-eng-deu.index",
    "dict-freedict-eng-spa": "/usr/share/dictd/freedict-eng-spa.index",
    "fortunes": "/usr/share/games/fortunes/wisdom",
    "dict-gcide": "/usr/share/dictd/gcide.index",
}
MISSING = sorted(p for p, f in CORPUS_FILES.items() if not os.path.exists(f))

pytestmark = pytest.mark.skipif(
    bool(MISSING), reason="corpus packages not installed (scripts/setup.sh "
    "installs them): " + " ".join(MISSING))


def run(out, *args, check=True):
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--per-task", "50", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def read_split(out, split):
    with open(out / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def file_bytes(out):
    return {name: (out / name).read_bytes()
            for name in [f"{s}.jsonl" for s in SPLITS] + ["manifest.json"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("dataset")
    run(base / "a", "--seed", "0")
    run(base / "b", "--seed", "0")
    run(base / "c", "--seed", "1")
    return base


def test_tasks_splits_and_fields(built):
    out = built / "a"
    per_task = {}
    for split in SPLITS:
        for rec in read_split(out, split):
            assert set(rec) == {"task", "instruction", "response"}
            for key in rec:
                assert isinstance(rec[key], str) and rec[key].strip() == rec[key] != ""
            assert len(rec["response"]) <= 200
            per_task.setdefault(rec["task"], {s: 0 for s in SPLITS})[split] += 1
    assert len(per_task) >= 6, sorted(per_task)
    for task, counts in per_task.items():
        assert all(counts[s] > 0 for s in SPLITS), (task, counts)
        # per-task 50 with 0.1 / 0.1 fractions: 40 / 5 / 5
        assert counts == {"train": 40, "validation": 5, "test": 5}, (task, counts)


def test_no_instruction_in_two_splits(built):
    seen = {}
    for split in SPLITS:
        instructions = [r["instruction"] for r in read_split(built / "a", split)]
        assert len(instructions) == len(set(instructions)), f"duplicate in {split}"
        for ins in instructions:
            assert ins not in seen, f"{ins!r} in {seen[ins]} and {split}"
            seen[ins] = split


def test_deterministic_for_a_seed(built):
    assert file_bytes(built / "a") == file_bytes(built / "b")


def test_other_seed_gives_other_data(built):
    a, c = file_bytes(built / "a"), file_bytes(built / "c")
    for s in SPLITS:
        assert a[f"{s}.jsonl"] != c[f"{s}.jsonl"], s
    ins_a = {r["instruction"] for r in read_split(built / "a", "train")}
    ins_c = {r["instruction"] for r in read_split(built / "c", "train")}
    assert len(ins_a & ins_c) < len(ins_a) // 2


def test_manifest_matches_files(built):
    out = built / "a"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 0 and manifest["per_task"] == 50
    for split in SPLITS:
        records = read_split(out, split)
        entry = manifest["files"][f"{split}.jsonl"]
        assert entry["records"] == len(records) == manifest["totals"][split]
        digest = hashlib.sha256((out / f"{split}.jsonl").read_bytes()).hexdigest()
        assert entry["sha256"] == digest
        for task, counts in manifest["counts"].items():
            assert counts[split] == sum(r["task"] == task for r in records)
    assert set(manifest["counts"]) == set(manifest["tasks"])
    packages = {s["package"] for s in manifest["sources"]}
    assert set(CORPUS_FILES) <= packages <= set(CORPUS_FILES) | {"fortunes-min"}
    assert all(s["version"] for s in manifest["sources"])


def test_task_subset_and_fractions(tmp_path):
    run(tmp_path, "--tasks", "antonym,translate_es", "--val-frac", "0.2",
        "--test-frac", "0.3")
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"] == {
        t: {"train": 25, "validation": 10, "test": 15}
        for t in ("antonym", "translate_es")}
    recs = read_split(tmp_path, "train")
    assert {r["task"] for r in recs} == {"antonym", "translate_es"}


def test_quotes_come_from_the_fortune_files(built):
    """Both halves occur, in order, in one fortune of the default set (the
    builder drops '-- Author' lines, so the halves need not be adjacent)."""
    fortunes = []
    for path in sorted(pathlib.Path("/usr/share/games/fortunes").iterdir()):
        if path.is_file() and not path.is_symlink() and "." not in path.name:
            text = re.sub(r".\x08", "", path.read_text(encoding="utf-8",
                                                        errors="replace"))
            fortunes += [re.sub(r"\s+", " ", f) for f in re.split(r"^%\n", text,
                                                                 flags=re.M)]
    quotes = [r for s in SPLITS for r in read_split(built / "a", s)
              if r["task"] == "quote"]
    assert len(quotes) == 50
    for r in quotes:
        head = r["instruction"].removeprefix("Complete the quotation: ")
        head = head.removesuffix(" ...")
        assert any(head in f and r["response"] in f[f.index(head) + len(head):]
                   for f in fortunes), r


# ---- parsers on hand-checked inputs (text copied from the Debian files) ----

def load_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import build_dataset
    finally:
        sys.path.pop(0)
    return build_dataset


def test_dictd_base64_numbers():
    bd = load_module()
    assert bd.dictd_number("A") == 0
    assert bd.dictd_number("B") == 1
    assert bd.dictd_number("/") == 63
    assert bd.dictd_number("BA") == 64
    assert bd.dictd_number("c/") == 28 * 64 + 63        # 'c' is digit 28


def test_wordnet_data_line():
    bd = load_module()
    line = ("00001740 00 a 01 able 0 005 = 05200169 n 0000 = 05616246 n 0000 "
            "+ 05616246 n 0101 + 05200169 n 0101 ! 00002098 a 0101 | (usually "
            "followed by `to') having the necessary means or skill or know-how "
            "or authority to do something; \"able to swim\"")
    words, pointers, gloss = bd.WordNet._parse_data_line(line)
    assert words == ["able"]
    assert len(pointers) == 5
    assert pointers[4] == ("!", "00002098", "a", 1, 1)
    assert pointers[0] == ("=", "05200169", "n", 0, 0)
    assert bd.wn_definition(gloss) == ("(usually followed by 'to') having the "
                                       "necessary means or skill or know-how or "
                                       "authority to do something")
    words, _, _ = bd.WordNet._parse_data_line(
        "00002312 00 a 02 abaxial 0 dorsal(p) 4 000 | facing away")
    assert words == ["abaxial", "dorsal"]


def test_wordnet_offsets_are_byte_offsets():
    bd = load_module()
    wn = bd.WordNet("/")
    words, pointers, _ = wn.synset("a", "00001740")
    assert words == ["able"]
    assert wn.synset("a", "00002098")[0] == ["unable"]


def test_freedict_first_translation():
    bd = load_module()
    de = ('apple /\u02c8ap\u0259l/\nApfel <masc> [bot.]  [cook.]\n'
          '      "peel an apple"  - einen Apfel sch\u00e4len\n'
          ' see: {apples}, {toffie apple}\n\n')
    assert bd.freedict_translation(de) == ((1, True, -5), "Apfel")
    fr = "run /r\u028cn/\n1. fonctionner\n2. fuite\n"
    assert bd.freedict_translation(fr)[1] == "fonctionner"
    assert bd.freedict_translation("x /x/\n{see} 12\n") is None


def test_gcide_first_sense():
    bd = load_module()
    abaft = ('Abaft \\A*baft"\\ ([.a]*b[.a]ft"), prep. [Pref. a- on + OE. baft,\n'
             '   baften, biaften, AS. be[ae]ftan; be by + [ae]ftan behind. See\n'
             '   {After}, {Aft}, {By}.] (Naut.)\n'
             '   Behind; toward the stern from; as, abaft the wheelhouse.\n'
             '   [1913 Webster]\n\n   {Abaft the beam}. See under {Beam}.\n')
    assert bd.gcide_sense(abaft) == "Behind; toward the stern from."
    strob = ('Strobilaceous \\Strob`i*la"ceous\\, a. [See {Strobila}.] (Bot.)\n'
             '      (a) Of or pertaining to a strobile or cone.\n'
             '      (b) Producing strobiles.\n          [1913 Webster]\n')
    assert bd.gcide_sense(strob) == "Of or pertaining to a strobile or cone."
    happy = ('Happy \\Hap"py\\ (h[a^]p"p[y^]), a. [Compar. {Happier}\n'
             '   (-p[i^]*[~e]r); superl. {Happiest}.] [From {Hap} chance.]\n'
             '   1. Favored by hap, luck, or fortune; lucky; fortunate;\n'
             '      successful; as, a happy\n      expedient.\n'
             '      [1913 Webster]\n\n   2. Experiencing the effect\n')
    assert bd.gcide_sense(happy) == ("Favored by hap, luck, or fortune; lucky; "
                                     "fortunate; successful.")


def test_missing_corpus_is_one_clear_line(tmp_path):
    proc = run(tmp_path / "out", "--root", str(tmp_path), "--tasks", "gcide,quote",
               check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "apt-get install" in lines[0]
    assert "dict-gcide" in lines[0] and "fortunes" in lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_task_name_is_rejected(tmp_path):
    proc = run(tmp_path, "--tasks", "nonsense", check=False)
    assert proc.returncode != 0
    assert "unknown task" in proc.stderr


# ---- heterogeneous tasks (--task-set hetero) ----

HETERO = ("summarize", "classify_section", "extract", "explain", "code")
HETERO_SET = HETERO + ("definition", "translate_fr", "quote")
# stated bounds on the response length (chars) of each new task: (min, max,
# median range) at --per-task 1000; see examples/data/README.md
LENGTH_BOUNDS = {
    "summarize": (8, 120, (25, 80)),
    "classify_section": (3, 12, (3, 8)),
    "extract": (3, 600, (30, 150)),
    "explain": (60, 600, (120, 400)),
    "code": (20, 600, (70, 250)),
}


def hetero_missing():
    bd = load_module()
    try:
        bd.Dpkg("/")
    except (OSError, bd.BuildError) as e:
        return str(e)
    if not os.path.isfile("/usr/lib/python3.11/os.py"):
        return "no /usr/lib/python3.11"
    return ""


needs_hetero = pytest.mark.skipif(bool(hetero_missing()),
                                  reason="dpkg packages of scripts/setup.sh "
                                  "or Python 3.11 stdlib missing")


def run_n(out, per_task, *args):
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--per-task",
           str(per_task), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def all_records(out):
    return [r for s in SPLITS for r in read_split(out, s)]


@pytest.fixture(scope="module")
def hetero(tmp_path_factory):
    import time
    base = tmp_path_factory.mktemp("hetero")
    run_n(base / "a", 60, "--task-set", "hetero")
    run_n(base / "b", 60, "--task-set", "hetero")
    t0 = time.monotonic()
    run_n(base / "full", 1000, "--tasks", ",".join(HETERO))
    base.joinpath("full_seconds").write_text(str(time.monotonic() - t0))
    return base


@needs_hetero
def test_hetero_deterministic(hetero):
    assert file_bytes(hetero / "a") == file_bytes(hetero / "b")


@needs_hetero
def test_hetero_records_and_splits(hetero):
    out = hetero / "a"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["tasks"] == list(HETERO_SET)
    counts = {}
    seen = {}
    for split in SPLITS:
        for rec in read_split(out, split):
            assert set(rec) == {"task", "instruction", "response"}
            for key in rec:
                assert isinstance(rec[key], str) and rec[key].strip() == rec[key] != ""
            assert "\n\n\n" not in rec["instruction"] + rec["response"]
            limit = 600 if rec["task"] in HETERO else 200
            assert len(rec["response"]) <= limit, rec
            assert len(rec["instruction"]) <= 1500, rec
            assert rec["instruction"] not in seen, (rec, seen.get(rec["instruction"]))
            seen[rec["instruction"]] = split
            counts.setdefault(rec["task"], {s: 0 for s in SPLITS})[split] += 1
    assert counts == {t: {"train": 48, "validation": 6, "test": 6} for t in HETERO_SET}


@needs_hetero
def test_hetero_length_distributions(hetero):
    import statistics
    recs = all_records(hetero / "full")
    assert float((hetero / "full_seconds").read_text()) < 60
    for task, (lo, hi, (mlo, mhi)) in LENGTH_BOUNDS.items():
        lengths = [len(r["response"]) for r in recs if r["task"] == task]
        assert len(lengths) >= 400, (task, len(lengths))
        assert lo <= min(lengths) and max(lengths) <= hi, (task, min(lengths),
                                                           max(lengths))
        assert mlo <= statistics.median(lengths) <= mhi, (task, statistics.median(lengths))
    # the long-answer tasks do use the larger limit
    for task in ("explain", "code"):
        assert sum(len(r["response"]) > 200 for r in recs if r["task"] == task) >= 20


@needs_hetero
def test_hetero_instructions_vary(hetero):
    recs = all_records(hetero / "full")
    words = {"summarize": "synopsis", "classify_section": "section",
             "extract": "extract", "explain": "explain", "code": "python"}
    for task in HETERO:
        ins = [r["instruction"] for r in recs if r["task"] == task]
        starts = {i[:12] for i in ins}
        assert len(starts) >= 3, (task, sorted(starts)[:5])
        named = sum(words[task] in i.lower() for i in ins)
        assert named < 0.9 * len(ins), (task, named, len(ins))


@needs_hetero
def test_classify_labels_closed_and_capped(hetero):
    bd = load_module()
    for name, per_task in (("a", 60), ("full", 1000)):
        labels = [r["response"] for r in all_records(hetero / name)
                  if r["task"] == "classify_section"]
        assert set(labels) <= set(bd.SECTION_LABELS)
        assert len(set(labels)) >= 4
        top = max(labels.count(x) for x in set(labels))
        assert top <= bd.LABEL_CAP * per_task


@needs_hetero
def test_code_responses_are_short_functions(hetero):
    import ast
    recs = [r for r in all_records(hetero / "full") if r["task"] == "code"]
    for r in recs:
        tree = ast.parse(r["response"])
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.FunctionDef), r
        fn = tree.body[0]
        assert ast.get_docstring(fn) is None          # the docstring is the question
        assert r["response"].count("\n") + 1 <= 12
        assert f"{fn.name}(" in r["instruction"], r


@needs_hetero
def test_extract_answers_come_from_the_stanza(hetero):
    recs = [r for r in all_records(hetero / "full") if r["task"] == "extract"]
    kinds = set()
    for r in recs:
        stanza = r["instruction"]
        if ": " in r["response"] and "\n" in r["response"] or \
                r["response"].startswith(("Maintainer:", "Section:")):
            kinds.add(r["response"].split(":")[0])
            for line in r["response"].split("\n"):
                assert re.match(r"^[A-Z][\w-]+: \S", line), r
                assert line in stanza.split("\n"), (line, r)
        else:
            kinds.add("depends")
            dep = next(ln for ln in stanza.split("\n") if ln.startswith("Depends: "))
            for group in r["response"].split(", "):
                for name in group.split(" | "):
                    assert re.search(rf"(?<![\w.+-]){re.escape(name)}(?![\w.+-])",
                                     dep), (name, dep)
    assert kinds == {"Maintainer", "Section", "depends"}


@needs_hetero
def test_summaries_are_dpkg_synopses(hetero):
    status = pathlib.Path("/var/lib/dpkg/status").read_text(encoding="utf-8",
                                                           errors="replace")
    synopses = {re.sub(r"\s+", " ", m).strip()
                for m in re.findall(r"^Description: (.*)$", status, flags=re.M)}
    recs = [r for r in all_records(hetero / "full") if r["task"] == "summarize"]
    assert recs and all(r["response"] in synopses for r in recs)


@needs_hetero
def test_hetero_manifest_sources(hetero):
    bd = load_module()
    manifest = json.loads((hetero / "a" / "manifest.json").read_text(encoding="utf-8"))
    by_task = {}
    for s in manifest["sources"]:
        assert s["version"], s
        by_task.setdefault(s["task"], []).append(s)
    for task in ("summarize", "classify_section", "extract", "explain"):
        dpkg = [s for s in by_task[task] if "packages_sha256" in s]
        assert len(dpkg) == 1 and len(dpkg[0]["packages_sha256"]) == 64
        assert dpkg[0]["files"] == ["/var/lib/dpkg/status"]
        assert dpkg[0]["packages"] >= len(bd.DPKG_ROOTS)
    man = [s for s in by_task["explain"] if "packages_sha256" not in s]
    assert man and all(f.startswith("/usr/share/man/man") for s in man
                       for f in s["files"])
    assert {s["package"] for s in by_task["code"]} <= set(bd.PY_PACKAGES)


def test_dpkg_roots_match_setup_sh():
    bd = load_module()
    text = (ROOT / "scripts" / "setup.sh").read_text()
    listed = re.search(r"APT_PACKAGES=\((.*?)\)", text, re.S).group(1).split()
    assert list(bd.DPKG_ROOTS) == listed


def test_task_sets_and_default():
    bd = load_module()
    assert bd.parse_args(["--out", "x"]).tasks == list(bd.CLASSIC_TASKS)
    assert len(bd.CLASSIC_TASKS) == 9
    assert bd.parse_args(["--out", "x", "--task-set", "hetero"]).tasks == list(HETERO_SET)
    assert bd.parse_args(["--out", "x", "--task-set", "all"]).tasks == list(bd.TASKS)
    assert bd.parse_args(["--out", "x", "--task-set", "hetero", "--tasks",
                          "code"]).tasks == ["code"]
    assert set(bd.TASKS) == set(bd.CLASSIC_TASKS) | set(HETERO)


def test_roff_and_man_sections():
    bd = load_module()
    assert bd.roff_text(r"The \fBls\fP command \- lists \(em \*(C`x\*(C' \e") \
        == "The ls command - lists \u2014 x \\"
    assert bd.roff_request_text(".BR ls (1),") == "ls(1),"
    assert bd.roff_request_text('.B "two words"') == "two words"
    page = "\n".join([
        '.TH FOO 1', '.SH NAME', r'foo \- frobnicate the bar', '.SH SYNOPSIS',
        '.B foo', '[\\fIFILE\\fR]', '.SH DESCRIPTION', r'.\" comment', '.PP',
        r'\fBfoo\fR frobnicates', '.I bars', 'quickly.', '.TP', r'\fB\-x\fR',
        'an option', '.SH SEE ALSO', 'bar(1)'])
    secs = bd.man_sections(page)
    assert [" ".join(p) for p in secs["NAME"]] == ["foo - frobnicate the bar"]
    assert " ".join(secs["DESCRIPTION"][0]) == "foo frobnicates bars quickly."
    assert None in secs["DESCRIPTION"][1]          # the option list is marked


def test_long_description_and_relations():
    bd = load_module()
    desc = ("tiny tool\n first line\n continued here.\n .\n Features:\n"
            "  - one\n  - two")
    assert bd.long_description(desc) == (
        "tiny tool", "first line continued here.\n\nFeatures:\n- one\n- two")
    assert bd.relation_names("libc6 (>= 2.34), a | b:any, python3:any") == [
        ["libc6"], ["a", "b"], ["python3"]]


def test_make_code_drops_the_docstring():
    import ast
    bd = load_module()
    src = ('def add(a, b):\n    """Return the sum of a and b, twice over."""\n'
           '    s = a + b\n\n    return 2 * s\n')
    node = ast.parse(src).body[0]

    class Fake:
        funcs = [("mod", None, node, src.split("\n"))]
    ins, code = bd.make_code(Fake, 0)
    assert code == "def add(a, b):\n    s = a + b\n    return 2 * s"
    assert "Return the sum of a and b, twice over." in ins and "add(a, b)" in ins
