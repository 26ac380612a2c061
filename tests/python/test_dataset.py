"""Tests of examples/data/build_dataset.py (the multi-task instruction set).

Needs the Debian corpora (scripts/setup.sh installs them); skipped otherwise.
Four small builds (per-task 50) run as subprocesses, a few seconds each.
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
