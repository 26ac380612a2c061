#!/usr/bin/env python3
"""Build a multi-task instruction dataset from Debian-packaged corpora.

Each record is one JSON object per line: {"task", "instruction", "response"}.
Tasks come from WordNet (definition, synonym, antonym, hypernym), FreeDict
(translate_fr, translate_de, translate_es), fortunes (quote) and GCIDE
(gcide): the "classic" set, the default.  The heterogeneous tasks
(--task-set hetero|all) answer in other formats and lengths: summarize,
classify_section and extract from the dpkg database, explain from man pages,
code from the Python standard library.  The output is a pure function of the seed, the options and the
installed corpora: re-running gives the same bytes.

    python examples/data/build_dataset.py --out data/mop --seed 0 --per-task 1000
    python examples/data/build_dataset.py --out data/mop-hetero --task-set hetero

Writes OUT/train.jsonl, OUT/validation.jsonl, OUT/test.jsonl and
OUT/manifest.json (counts, sources with Debian package versions, sha256).
See examples/data/README.md.
"""
import argparse
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys

MAX_RESPONSE = 200      # characters; longer responses are shortened or dropped
SPLITS = ("train", "validation", "test")

# ---------------------------------------------------------------- sources --

WORDNET_DIR = "usr/share/wordnet"
DICTD_DIR = "usr/share/dictd"
FORTUNE_DIR = "usr/share/games/fortunes"
WN_POS = (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv"))

# source name -> (Debian package, files relative to the root)
SOURCES = {
    "wordnet": ("wordnet-base",
                [f"{WORDNET_DIR}/{kind}.{name}" for _, name in WN_POS
                 for kind in ("index", "data")]),
    "freedict-eng-fra": ("dict-freedict-eng-fra",
                         [f"{DICTD_DIR}/freedict-eng-fra.index",
                          f"{DICTD_DIR}/freedict-eng-fra.dict.dz"]),
    "freedict-eng-deu": ("dict-freedict-eng-deu",
                         [f"{DICTD_DIR}/freedict-eng-deu.index",
                          f"{DICTD_DIR}/freedict-eng-deu.dict.dz"]),
    "freedict-eng-spa": ("dict-freedict-eng-spa",
                         [f"{DICTD_DIR}/freedict-eng-spa.index",
                          f"{DICTD_DIR}/freedict-eng-spa.dict.dz"]),
    "fortunes": ("fortunes", [f"{FORTUNE_DIR}/wisdom"]),
    "gcide": ("dict-gcide", [f"{DICTD_DIR}/gcide.index",
                             f"{DICTD_DIR}/gcide.dict.dz"]),
    # the packages' own files (man pages) are listed per task in the manifest
    "dpkg": ("dpkg", ["var/lib/dpkg/status"]),
    "python-stdlib": ("libpython3.11-stdlib", ["usr/lib/python3.11/os.py"]),
}

# fortune files that are not quotations (drawings); the offensive set lives
# in the fortunes-off package under off/, which is never read.
FORTUNE_SKIP = {"ascii-art"}
FORTUNE_PACKAGES = ("fortunes", "fortunes-min")


def progress(msg):
    print(f"[build_dataset] {msg}", file=sys.stderr, flush=True)


class BuildError(Exception):
    pass


# ------------------------------------------------------------ text helpers --

_WS = re.compile(r"\s+")


def collapse(text):
    return _WS.sub(" ", text).strip()


def shorten(text, limit=MAX_RESPONSE):
    """Cut text to at most limit chars at a clause boundary, or return None."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    for sep in ("; ", ". ", ", "):
        cut = head.rfind(sep)
        if cut >= limit // 3:
            return head[:cut + 1] if sep == ". " else head[:cut].rstrip(" ,;")
    return None


def article(word):
    return "an" if word[:1].lower() in "aeiou" else "a"


_WORD_OK = re.compile(r"^[A-Za-z][A-Za-z' -]{0,38}[A-Za-z]$")


def clean_word(word):
    """A headword fit for an instruction: letters, spaces, hyphens, <= 3 words."""
    word = collapse(word)
    if not _WORD_OK.match(word) or len(word.split()) > 3:
        return None
    return word


# -------------------------------------------------------------- WordNet ----
# wndb(5): data.* lines are
#   offset lex_filenum ss_type w_cnt(hex) {word lex_id(hex)} p_cnt
#   {ptr_symbol offset pos source/target(hex4)} [frames] | gloss
# index.* lines are
#   lemma pos synset_cnt p_cnt {ptr_symbol} sense_cnt tagsense_cnt {offset}
# with the synset offsets ordered by sense frequency.  License lines of both
# start with two spaces.

class WordNet:
    """Lazy reader: synset_offset is the byte offset of the line in data.*."""

    def __init__(self, root):
        self.data = {}      # pos -> bytes of data.<pos>
        self.cache = {}     # (pos, offset) -> (words, pointers, gloss)
        self.index = []     # (lemma, pos, [offsets]) of sense-tagged lemmas
        for pos, name in WN_POS:
            path = os.path.join(root, WORDNET_DIR, f"data.{name}")
            progress(f"reading {path}")
            with open(path, "rb") as f:
                self.data[pos] = f.read()
            path = os.path.join(root, WORDNET_DIR, f"index.{name}")
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("  "):
                        continue
                    field = line.split()
                    n_synsets, n_ptrs = int(field[2]), int(field[3])
                    # tagsense_cnt > 0: the lemma occurs in the sense-tagged
                    # corpus, which keeps to words in ordinary use
                    if int(field[5 + n_ptrs]) == 0:
                        continue
                    offsets = field[6 + n_ptrs:6 + n_ptrs + n_synsets]
                    self.index.append((field[0], pos, offsets))

    def synset(self, pos, offset):
        key = (pos, offset)
        if key not in self.cache:
            data = self.data[pos]
            start = int(offset)
            line = data[start:data.index(b"\n", start)].decode("utf-8", "replace")
            if not line.startswith(offset + " "):
                raise BuildError(f"WordNet data.{dict(WN_POS)[pos]}: no synset "
                                 f"at byte offset {offset}")
            self.cache[key] = self._parse_data_line(line)
        return self.cache[key]

    @staticmethod
    def _parse_data_line(line):
        body, _, gloss = line.partition(" | ")
        field = body.split()
        w_cnt = int(field[3], 16)
        words = []
        for i in range(w_cnt):
            word = field[4 + 2 * i]
            word = re.sub(r"\((a|p|ip)\)$", "", word)   # adjective markers
            words.append(word.replace("_", " "))
        k = 4 + 2 * w_cnt
        p_cnt = int(field[k])
        pointers = []
        for i in range(p_cnt):
            sym, off, ppos, st = field[k + 1 + 4 * i:k + 5 + 4 * i]
            pointers.append((sym, off, "a" if ppos == "s" else ppos,
                             int(st[:2], 16), int(st[2:], 16)))
        return words, pointers, gloss.strip()

    @staticmethod
    def find(words, lemma):
        """1-based position of lemma among the synset's words, or 0."""
        key = lemma.replace("_", " ").lower()
        for i, w in enumerate(words):
            if w.lower() == key:
                return i + 1
        return 0


def wn_definition(gloss):
    """The definition part of a gloss, without the quoted examples."""
    text = gloss.replace("`", "'")
    cut = text.find('"')
    if cut >= 0:
        text = text[:cut]
    text = collapse(text).rstrip(" ;:,")
    if len(text.split()) < 2:
        return None
    return shorten(text)


def wn_entries(wn, pos_filter=None):
    """Candidate keys for the WordNet tasks: index entries, in file order."""
    return [e for e in wn.index if not pos_filter or e[1] in pos_filter]


def first_sense(wn, entry):
    lemma, pos, offsets = entry
    if not clean_word(lemma.replace("_", " ")):
        return None
    words, pointers, gloss = wn.synset(pos, offsets[0])
    i = WordNet.find(words, lemma)
    if i == 0:
        return None
    return words, pointers, gloss, words[i - 1], i


POS_NAME = {"n": "noun", "v": "verb", "a": "adjective", "r": "adverb"}


def make_definition(wn, entry):
    sense = first_sense(wn, entry)
    if not sense:
        return None
    _, _, gloss, word, _ = sense
    d = wn_definition(gloss)
    if not d:
        return None
    return f'Define the word "{word}" ({POS_NAME[entry[1]]}).', d


def make_synonym(wn, entry):
    sense = first_sense(wn, entry)
    if not sense:
        return None
    words, _, _, word, _ = sense
    low = word.lower()
    for w in words:
        wl = w.lower()
        if wl != low and low not in wl and wl not in low and clean_word(w):
            return f'Give a synonym of the word "{word}".', w
    return None


def make_antonym(wn, entry):
    lemma, pos, offsets = entry
    if not clean_word(lemma.replace("_", " ")):
        return None
    for off in offsets:
        words, pointers, _ = wn.synset(pos, off)
        i = WordNet.find(words, lemma)
        for sym, toff, tpos, src, tgt in pointers:
            if sym == "!" and src == i and tgt > 0:
                twords = wn.synset(tpos, toff)[0]
                if tgt <= len(twords) and clean_word(twords[tgt - 1]):
                    return (f'Give an antonym of the word "{words[i - 1]}".',
                            twords[tgt - 1])
    return None


def make_hypernym(wn, entry):
    sense = first_sense(wn, entry)
    if not sense:
        return None
    _, pointers, _, word, _ = sense
    if word[:1].isupper():          # proper nouns have instance hypernyms
        return None
    for sym, toff, tpos, _, _ in pointers:
        if sym == "@":
            hyper = wn.synset(tpos, toff)[0][0]
            if clean_word(hyper) and hyper.lower() != word.lower():
                return f"What kind of thing is {article(word)} {word}?", hyper
    return None


# --------------------------------------------------------------- dictd -----
# dictd .index lines: headword TAB offset TAB length, numbers in dictd's
# base64 (A-Z a-z 0-9 + /, most significant digit first).  .dict.dz is a
# dictzip file, which plain gzip decompresses.

_B64 = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def dictd_number(text):
    value = 0
    for c in text:
        value = value * 64 + _B64[c]
    return value


class Dictd:
    """Index lines are kept raw; a headword's entries are adjacent lines
    (the index is sorted), and the key of a headword is its first line."""

    def __init__(self, root, name):
        base = os.path.join(root, DICTD_DIR, name)
        progress(f"reading {base}.index and {base}.dict.dz")
        with open(base + ".index", encoding="utf-8", errors="replace") as f:
            self.lines = f.read().split("\n")
        with gzip.open(base + ".dict.dz") as f:
            self.data = f.read()

    def keys(self):
        return range(len(self.lines))

    def head(self, i):
        return self.lines[i].partition("\t")[0]

    def group(self, i):
        """(headword, its entry texts) if line i is the headword's first
        index line, else None."""
        head = self.head(i)
        if "\t" not in self.lines[i] or head.startswith(("00database",
                                                          "00-database")):
            return None
        low = head.lower()
        j = i - 1               # neighbours that sort together (case aside)
        while j >= 0 and self.head(j).lower() == low:
            if self.head(j) == head:
                return None
            j -= 1
        rows = [i]
        j = i + 1
        while j < len(self.lines) and self.head(j).lower() == low:
            if self.head(j) == head:
                rows.append(j)
            j += 1
        out = []
        for r in rows:
            field = self.lines[r].split("\t")
            off, length = dictd_number(field[1]), dictd_number(field[2])
            out.append(self.data[off:off + length].decode("utf-8", "replace"))
        return head, out


# FreeDict eng-xxx entries: "headword /ipa/ [<pos>]\ntranslation line\n"
# followed (eng-deu) by indented example lines, "Synonym:", "Note:", "see:".
_TAG = re.compile(r"<[^>]*>|\[[^\]]*\]|\([^)]*\)")
_TRANSLATION_OK = re.compile(r"^[^\W\d_][^\d{}<>\[\]/=]*$")


def freedict_translation(entry):
    lines = entry.split("\n")
    if len(lines) < 2:
        return None
    m = re.search(r"/([^/]*)/", lines[0])
    ipa_len = len(m.group(1)) if m else 99
    first = lines[1]
    has_tag = "<" in first and "<pl>" not in first    # plural forms: skip
    first = re.sub(r"^\s*1\.\s*", "", first)
    first = _TAG.sub(" ", first)
    first = collapse(first.split(",")[0].split(";")[0])
    examples = sum(1 for ln in lines[2:] if ln.startswith("      \""))
    if not first or len(first) > 40 or len(first.split()) > 3 \
            or not _TRANSLATION_OK.match(first):
        return None
    # preference: most usage examples (main sense), a lemma entry with a
    # part-of-speech or gender tag, the shortest pronunciation (eng-fra and
    # eng-spa attach phrase entries to their first word, with longer IPA).
    return (examples, has_tag, -ipa_len), first


def make_translation(lang, need_tag):
    """need_tag: only entries whose translation carries a <pos>/<gender> tag
    (eng-deu lists inflected forms as separate, untagged entries)."""
    def make(dic, key):
        got = dic.group(key)
        word = got and clean_word(got[0])
        if not word or word != word.lower():
            return None
        best = None
        for entry in got[1]:
            cand = freedict_translation(entry)
            if cand and need_tag and not cand[0][1]:
                continue
            if cand and (best is None or cand[0] > best[0]):
                best = cand
        if not best or best[1].lower() == word:
            return None
        kind = "word" if " " not in word else "phrase"
        return f'Translate the English {kind} "{word}" into {lang}.', best[1]
    return make


# GCIDE entries: 'Head \\Pro*nun"ci*a`tion\\ (pron), pos. [etym.] (Domain.)\n
#   1. Sense; as, example.\n   [1913 Webster]\n ...'.  We keep the first sense.
_GC_SOURCE = re.compile(r"\[(?:1913 Webster|Webster 1913 Suppl\.|PJC|WordNet[^\]]*|"
                        r"[^\]]*\+PJC)\]")
_GC_LABEL = re.compile(r"\[(?:Obs|R|Colloq|Archaic|Poetic|Prov\. Eng|Local|Slang|"
                       r"Scot|Eng|U\. S|Vulgar|Rare|Law|Cant|Humorous)"
                       r"[^\]]{0,20}\]")


def skip_group(text, i):
    """Index just past the balanced [...] or (...) group starting at text[i]."""
    close = {"[": "]", "(": ")"}[text[i]]
    depth = 0
    for j in range(i, len(text)):
        if text[j] == text[i]:
            depth += 1
        elif text[j] == close:
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


def gcide_sense(entry):
    text = entry.replace("\r", "")
    m = re.search(r"\n\s+1\.\s", text)
    if m:
        body = text[m.end():]
    else:
        # skip 'Head \\pron\\ (pron), pos.' then any [etym.] / (Domain.) groups
        m = re.match(r"[^\n\\]*\\[^\\]*\\[^,\n]*,[^\[\(\n]*", text)
        if not m:
            return None
        i = m.end()
        while True:
            while i < len(text) and text[i] in " \n\t":
                i += 1
            if i < len(text) and (text[i] == "[" or text[i] == "("
                                  and text[i + 1:i + 2].isupper()):
                i = skip_group(text, i)
            else:
                break
        body = text[i:]
    body = re.split(r"\n\s*\n|\[1913 Webster|\[Webster 1913|\[PJC\]|\n\s+2\.\s", body)[0]
    body = re.sub(r"^\s*(\([A-Z][^)]{0,30}\)\s*)+", "", body)  # (Naut.) etc.
    sub = re.match(r"\s*\(a\)\s*", body)
    if sub:
        body = body[sub.end():]
    body = re.split(r"\s\(b\)\s|\s--\s", body)[0]          # (b) ..., -- n. ...
    body = _GC_SOURCE.sub(" ", body)
    body = _GC_LABEL.sub(" ", body)
    body = re.sub(r"\s--[A-Z].*$", "", body, flags=re.S)      # --Author.
    body = re.sub(r";\s*as,.*$", "", body, flags=re.S)        # ; as, example
    body = re.sub(r"\s*See\s+\{[^}]*\}.*$", "", body, flags=re.S)
    body = re.sub(r"\{([^}]*)\}", r"\1", body)
    body = collapse(body).rstrip(" ;:,")
    if re.search(r"[\[\]\\{}\"|]|\bSyn\.|^Note:", body):
        return None
    if len(body.split()) < 3 or not body[:1].isalpha() \
            or re.match(r"(Same as|See|Alt\. of|Variant of)\b", body):
        return None
    if not body.endswith("."):
        body += "."
    body = body[0].upper() + body[1:]
    return shorten(body)


def make_gcide(dic, key):
    got = dic.group(key)
    word = got and clean_word(got[0])
    if not word:
        return None
    for entry in got[1][:3]:
        # sub-entries ("prairie dog") are indexed to their main entry
        if collapse(entry.split("\\")[0]).lower() != word.lower():
            continue
        sense = gcide_sense(entry)
        if sense:
            return f'What does "{word.lower()}" mean (Webster 1913)?', sense
    return None


# ------------------------------------------------------------- fortunes ----

class Fortunes:
    def __init__(self, root):
        self.dir = os.path.join(root, FORTUNE_DIR)
        progress(f"reading {self.dir}")
        self.files = []
        self.quotes = []
        # only the default set: files of fortunes and fortunes-min when dpkg
        # knows them (other packages may add files to the same directory)
        owned = set().union(*(dpkg_files(p) for p in FORTUNE_PACKAGES))
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if name in FORTUNE_SKIP or "." in name or not os.path.isfile(path) \
                    or os.path.islink(path):
                continue
            if owned and root == "/" and path not in owned:
                continue
            self.files.append(name)
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            for item in re.split(r"^%\n", text, flags=re.M):
                self.quotes.append(item)

    def keys(self):
        return list(range(len(self.quotes)))


def make_quote(fort, key):
    text = re.sub(r".\x08", "", fort.quotes[key])        # overstriking
    lines = [ln for ln in text.split("\n")
             if not re.match(r"^\s*--\s", ln)]            # attribution lines
    if any(ln.startswith(("\t\t", "        ")) for ln in lines):
        return None                                       # layout-dependent
    text = collapse(" ".join(lines))
    if not 40 <= len(text) <= 2 * MAX_RESPONSE or "\ufffd" in text:
        return None
    good = sum(c.isalnum() or c.isspace() for c in text)
    if good < 0.85 * len(text) or re.search(r"[<>|_~^{}\[\]\\*]|https?:|www\.",
                                            text):
        return None                                       # art, IRC, code, URLs
    if len(re.findall(r"(?:^|\s)[A-Z][\w.]*:\s", text)) >= 2:
        return None                                       # dialogue
    words = text.split(" ")
    if len(words) < 8:
        return None
    # split at the word boundary nearest the middle, by characters
    best, pos = 0, 0
    for i in range(3, len(words) - 2):
        left = len(" ".join(words[:i]))
        if best == 0 or abs(left - len(text) / 2) < abs(pos - len(text) / 2):
            best, pos = i, left
    first, second = " ".join(words[:best]), " ".join(words[best:])
    if len(second) > MAX_RESPONSE:
        return None
    return f"Complete the quotation: {first} ...", second


# ------------------------------------------------- heterogeneous tasks ----
# Tasks whose answers differ in format and length (Dolly-15k style:
# summarization, classification, information extraction, open QA, code).
# Their sources are the dpkg database, manual pages and the Python standard
# library, restricted to what scripts/setup.sh installs (see DPKG_ROOTS) so
# that the pools do not depend on whatever else the machine has installed.

DPKG_STATUS = "var/lib/dpkg/status"
DPKG_INFO = "var/lib/dpkg/info"
PY_STDLIB = "usr/lib/python3.11"
PY_PACKAGES = ("libpython3.11-minimal", "libpython3.11-stdlib")
HETERO_MAX_RESPONSE = 600
MAX_INSTRUCTION = 1500

# The APT_PACKAGES of scripts/setup.sh (a test checks that they agree): the
# dpkg-based tasks read these packages and their Depends/Pre-Depends closure.
DPKG_ROOTS = (
    "build-essential meson ninja-build pkg-config clang "
    "libopenblas-dev libopenblas0 libcmocka-dev libsodium-dev libcjson-dev libpcre2-dev "
    "python3-venv python3-pip python3-torch python3-numpy python3-matplotlib python3-scipy "
    "abigail-tools libclang-rt-14-dev cmake "
    "wordnet-base dict-freedict-eng-fra dict-freedict-eng-deu dict-freedict-eng-spa "
    "fortunes dict-gcide "
    "libopenmpi-dev openmpi-bin").split()

# closed label set of classify_section (Debian archive sections; packages of
# other sections are not used for that task)
SECTION_LABELS = ("admin", "devel", "fonts", "interpreters", "libdevel", "libs",
                  "misc", "net", "perl", "python", "science", "text", "utils",
                  "x11")
LABEL_CAP = 0.4     # a label takes at most this fraction of min(per-task, pool)


def parse_stanzas(text):
    """deb822 paragraphs as dicts; continuation lines kept with their '\n'."""
    out = []
    for para in text.split("\n\n"):
        fields, key = {}, None
        for line in para.split("\n"):
            if not line:
                continue
            if line[0] in " \t":
                if key:
                    fields[key] += "\n" + line
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            out.append(fields)
    return out


def relation_names(field):
    """'a (>= 1), b | c:any' -> [['a'], ['b', 'c']]"""
    groups = []
    for part in field.split(","):
        alts = [a.strip().split(" ")[0].split(":")[0] for a in part.split("|")]
        alts = [a for a in alts if a]
        if alts:
            groups.append(alts)
    return groups


class Dpkg:
    """The installed packages of DPKG_ROOTS and their dependency closure,
    read from ROOT/var/lib/dpkg (no dpkg-query, so --root works)."""

    def __init__(self, root):
        self.root = root
        path = os.path.join(root, DPKG_STATUS)
        progress(f"reading {path}")
        with open(path, encoding="utf-8", errors="replace") as f:
            stanzas = parse_stanzas(f.read())
        installed = {}
        for s in stanzas:
            if "Package" in s and s.get("Status", "").endswith(" installed"):
                installed[s["Package"]] = s   # multi-arch duplicates: last wins
        provides = {}
        for name in sorted(installed):
            for alts in relation_names(installed[name].get("Provides", "")):
                provides.setdefault(alts[0], []).append(name)
        missing = sorted(p for p in DPKG_ROOTS if p not in installed)
        if missing:
            raise BuildError(f"packages of scripts/setup.sh not installed: "
                             f"apt-get install -y {' '.join(missing)}")
        seen, todo = set(), list(DPKG_ROOTS)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            s = installed[name]
            for key in ("Pre-Depends", "Depends"):
                for alts in relation_names(s.get(key, "")):
                    # first alternative that is installed (directly or as a
                    # virtual package's first provider in name order)
                    for a in alts:
                        if a in installed:
                            todo.append(a)
                            break
                        if a in provides:
                            todo.append(provides[a][0])
                            break
        self.packages = [installed[n] for n in sorted(seen)]
        self.by_name = {s["Package"]: s for s in self.packages}
        blob = "".join(f"{s['Package']}={s.get('Version', '')}\n"
                       for s in self.packages)
        self.digest = hashlib.sha256(blob.encode()).hexdigest()
        self.man_pages = None

    def keys(self):
        return list(range(len(self.packages)))

    def files(self, package):
        s = self.by_name[package]
        for name in (package, f"{package}:{s.get('Architecture', '')}"):
            path = os.path.join(self.root, DPKG_INFO, f"{name}.list")
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    return [ln.rstrip("\n") for ln in f if ln.strip()]
        return []

    def source_entry(self, task, files):
        return {"task": task, "package": "dpkg", "version": dpkg_version("dpkg"),
                "files": files,
                "packages": len(self.packages),
                "packages_sha256": self.digest,
                "selection": "scripts/setup.sh APT_PACKAGES + Depends/"
                             "Pre-Depends closure (sha256 of sorted "
                             "'name=version' lines)"}


def long_description(desc):
    """(synopsis, long text) of a Description field; paragraphs joined with a
    blank line, lines of a paragraph joined by spaces unless verbatim
    (indented by two or more spaces, e.g. lists)."""
    synopsis, _, rest = desc.partition("\n")
    paras, cur = [], []
    for line in rest.split("\n"):
        if not line.strip():
            continue
        body = line[1:]
        if body.strip() == ".":
            if cur:
                paras.append(cur)
            cur = []
        elif body.startswith(" "):
            cur.append("\n" + collapse(body))
        else:
            cur.append(" " + collapse(body))
    if cur:
        paras.append(cur)
    text = "\n\n".join("".join(p).strip() for p in paras)
    return collapse(synopsis), text.strip()


SUMMARIZE_TEMPLATES = (
    "{text}\n\nSum this up in one line.",
    "Give a one-line synopsis of this software package:\n\n{text}",
    "In a short phrase, what is the package described below?\n\n{text}",
    "Write a catalogue headline (a few words, no full stop) for:\n\n{text}",
)


def pick(templates, *key):
    """A template chosen by a seeded RNG of the example's key (so the choice
    does not depend on the order in which examples are drawn)."""
    return templates[random.Random("/".join(map(str, key))).randrange(len(templates))]


def make_summarize(dp, key):
    s = dp.packages[key]
    synopsis, text = long_description(s.get("Description", ""))
    if len(text) < 80 or len(synopsis) < 8 or len(text) > 1200:
        return None
    ins = pick(SUMMARIZE_TEMPLATES, "summarize", s["Package"]).format(text=text)
    return ins, synopsis


CLASSIFY_TEMPLATES = (
    "Which Debian archive section does this package belong to? Answer with "
    "one of: {labels}.\n\n{text}",
    "{text}\n\nClassify the package above into a Debian section ({labels}). "
    "Reply with the section only.",
    "Label: {labels}\nPackage: {synopsis}\n{text}\nLabel?",
    "Debian sorts its packages into sections such as {some}. Where would "
    "this one go?\n\n{synopsis}. {text}",
)


def make_classify(dp, key):
    s = dp.packages[key]
    section = s.get("Section", "").rpartition("/")[2]
    if section not in SECTION_LABELS:
        return None
    synopsis, text = long_description(s.get("Description", ""))
    if len(text) < 40 or len(text) > 1200:
        return None
    rng = random.Random(f"classify/{s['Package']}")
    some = sorted(rng.sample(SECTION_LABELS, 5))
    some = ", ".join(some[:-1]) + " or " + some[-1]
    ins = pick(CLASSIFY_TEMPLATES, "classify", s["Package"]).format(
        labels=", ".join(SECTION_LABELS), some=some, synopsis=synopsis, text=text)
    return ins, section


EXTRACT_FIELDS = ("Package", "Version", "Architecture", "Maintainer",
                  "Installed-Size", "Depends", "Section", "Priority", "Homepage")
# question kind -> (templates, fields answered as 'key: value' lines, or None
# for the list of dependency names)
EXTRACT_QUESTIONS = (
    (("{stanza}\n\nWho maintains {pkg}, and which version is this? Answer as "
      "'key: value' lines.",
      "From the control data below, give the Maintainer and Version fields "
      "as key: value lines.\n\n{stanza}",
      "{stanza}\n\nMaintainer and version?"), ("Maintainer", "Version")),
    (("{stanza}\n\nWhat does {pkg} depend on? List the package names, "
      "comma-separated, without version constraints.",
      "Name the packages that {pkg} needs, according to this record (names "
      "only; alternatives as 'a | b'):\n\n{stanza}",
      "{stanza}\n\nDependencies of {pkg} (names only)?"), None),
    (("{stanza}\n\nGive the Section, Architecture and Homepage of {pkg}, one "
      "'key: value' line each.",
      "Pull out the section, architecture and home page from this package "
      "record, as key: value lines.\n\n{stanza}"),
     ("Section", "Architecture", "Homepage")),
)


def extract_keys(dp):
    return [(i, q) for i in range(len(dp.packages))
            for q in range(len(EXTRACT_QUESTIONS))]


def make_extract(dp, key):
    i, q = key
    s = dp.packages[i]
    templates, fields = EXTRACT_QUESTIONS[q]
    shown = [f for f in EXTRACT_FIELDS if s.get(f)]
    stanza = "\n".join(f"{f}: {collapse(s[f])}" for f in shown)
    stanza += f"\nDescription: {long_description(s.get('Description', ''))[0]}"
    if fields is None:
        groups = relation_names(s.get("Depends", ""))
        if not groups:
            return None
        response = ", ".join(" | ".join(alts) for alts in groups)
    else:
        if any(not s.get(f) for f in fields):
            return None
        response = "\n".join(f"{f}: {collapse(s[f])}" for f in fields)
    ins = pick(templates, "extract", s["Package"], q).format(
        stanza=stanza, pkg=s["Package"])
    return ins, response


# ------------------------------------------------------------ man pages ----
# man(7) roff, minimally: the NAME line and the first DESCRIPTION paragraph.
# Font escapes and most requests are stripped; pages that are only a '.so'
# link, symbolic links, and mdoc(7) pages are skipped.

_ROFF_NAMED = {"em": "\u2014", "en": "\u2013", "aq": "'", "dq": '"', "lq": '"',
               "rq": '"', "oq": "'", "cq": "'", "bu": "\u2022", "co": "\u00a9",
               "rg": "\u00ae", "hy": "-", "mi": "-", "ti": "~", "ha": "^",
               "rs": "\\", "ga": "`", "tm": "\u2122", "pl": "+", "mu": "\u00d7",
               "de": "\u00b0", "sc": "\u00a7", "Fo": "\u00ab", "Fc": "\u00bb"}
_ROFF_ESC = re.compile(r"""\\(?:f(?:\[[^\]]*\]|\(..|.)|\((..)|\[([^\]]*)\]|
                           \*(?:\(..|\[[^\]]*\]|.)|[sS][+-]?\d+|[hvw]'[^']*'|
                           n(?:\(..|\[[^\]]*\]|.)|(.))""", re.X)


def roff_text(line):
    """Text of one roff input line with escapes resolved or removed."""
    line = re.sub(r'\\".*$', "", line)            # comment

    def esc(m):
        named = m.group(1) or m.group(2)
        if named is not None:
            return _ROFF_NAMED.get(named, "")
        c = m.group(3)
        if c is None:
            return ""                              # fonts, strings, sizes
        return {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ",
                "'": "'", "`": "`", ".": "."}.get(c, "")
    return _ROFF_ESC.sub(esc, line)


def roff_request_text(line):
    """Text carried by a font request (.B x, .BR a b, ...), or None if the
    line is another request."""
    m = re.match(r"^[.'](\w+)\s*(.*)$", line)
    if not m:
        return None
    req, args = m.groups()
    if req in ("B", "I", "SM", "SB"):
        return args.replace('"', "")
    if req in ("BR", "RB", "IR", "RI", "BI", "IB"):
        parts = re.findall(r'"([^"]*)"|(\S+)', args)
        return "".join(a or b for a, b in parts)
    return None


def man_sections(text):
    """{SECTION NAME: [paragraphs]} of a man(7) page; paragraphs are lists of
    text lines, broken at .PP/.LP/.P/.sp/.TP/.IP/.HP/.RS and blank lines."""
    sections, name, paras, cur = {}, None, [], []
    fill = True

    def flush():
        nonlocal cur
        if cur:
            paras.append(cur)
        cur = []
    for raw in text.split("\n"):
        if raw.startswith((".SH", "'SH")):
            flush()
            if name is not None:
                sections.setdefault(name, paras)
            name = roff_text(raw[3:]).strip().strip('"').upper()
            paras = []
            continue
        if name is None:
            continue
        if raw.startswith((".", "'")):
            req = raw[1:].split(" ")[0].strip()
            if req in ("nf", "EX"):
                flush()
                fill = False
            elif req in ("fi", "EE"):
                fill = True
            t = roff_request_text(raw)
            if t is not None:
                cur.append(roff_text(t))
            elif req in ("PP", "LP", "P", "sp", "TP", "IP", "HP", "RS", "RE",
                         "SS", "INDENT", "UNINDENT", "TQ", "nf", "fi", "EX",
                         "EE", "br", ""):
                flush()
                if req in ("TP", "IP", "HP", "SS", "TQ"):
                    cur.append(None)       # marks an option list / sub-head
            continue
        if not raw.strip():
            flush()
            continue
        cur.append(roff_text(raw) if fill else None)
    flush()
    if name is not None:
        sections.setdefault(name, paras)
    return sections


def man_page(path):
    """(name line, description) of a man(7) page, or None."""
    try:
        with gzip.open(path) as f:
            text = f.read().decode("utf-8", "replace")
    except (OSError, EOFError):
        return None
    if re.match(r"\s*\.so\s", text) or re.search(r"^\.(Dd|Sh)\b", text, re.M):
        return None
    secs = man_sections(text)
    names = secs.get("NAME")
    desc = secs.get("DESCRIPTION")
    if not names or not desc or None in names[0]:
        return None
    name_line = collapse(" ".join(names[0]))
    m = re.match(r"^([\w.+\-, ]+?)\s+[-\u2013\u2014]+\s+(\S.*)$", name_line)
    if not m or len(name_line) > 150:
        return None
    out = ""
    for para in desc:
        if None in para:            # option lists, sub-headings, verbatim
            break
        p = collapse(" ".join(para))
        if not p:
            continue
        if len(out) + len(p) + 1 > HETERO_MAX_RESPONSE:
            if not out:
                out = shorten_sentences(p, HETERO_MAX_RESPONSE)
            break
        out = f"{out} {p}".strip()
        if len(out) >= 150:
            break
    if not out or len(out) < 60 or "\ufffd" in out or "\\" in out:
        return None
    return name_line, m.group(1), out


def shorten_sentences(text, limit):
    """text cut at the last sentence end within limit, or ''."""
    head = text[:limit]
    cut = max(head.rfind(". "), head.rfind(".\n"))
    return head[:cut + 1] if cut >= limit // 4 else ""


MAN_SECTIONS = "13578"     # commands, functions, files, overviews, admin


def man_keys(dp):
    """Sorted man pages (sections MAN_SECTIONS, English only) owned by the
    selected packages; symbolic links (alternatives) are skipped."""
    if dp.man_pages is None:
        pages = set()
        for s in dp.packages:
            for path in dp.files(s["Package"]):
                if re.match(rf"^/usr/share/man/man[{MAN_SECTIONS}]/[^/]+"
                            rf"\.[{MAN_SECTIONS}]\w*\.gz$", path):
                    full = os.path.join(dp.root, path.lstrip("/"))
                    if os.path.isfile(full) and not os.path.islink(full):
                        pages.add((path, s["Package"]))
        dp.man_pages = sorted(pages)
    return [p for p, _ in dp.man_pages]


EXPLAIN_TEMPLATES = {
    "command": (
        "What does the {cmd} command do? Its manual page begins: \"{name}\"",
        "{name}\n\nExplain in a few sentences what this program is for.",
        "Here is the NAME line of a Unix manual page:\n{name}\nWrite the "
        "DESCRIPTION paragraph that follows it.",
        "I found `{cmd}` on my system ({name}). What is it for?"),
    "function": (
        "What does the C function {cmd}() do? Its manual says: \"{name}\"",
        "{name}\n\nDescribe this library interface in a few sentences.",
        "Manual page NAME line: {name}\nWrite the DESCRIPTION paragraph."),
    "other": (
        "Explain the subject of the manual page \"{name}\".",
        "{name}\n\nWhat is this about? Answer in a few sentences.",
        "Here is the NAME line of a manual page in section {sec}:\n{name}\n"
        "Write the DESCRIPTION paragraph that follows it."),
}


def make_explain(dp, path):
    got = man_page(os.path.join(dp.root, path.lstrip("/")))
    if not got:
        return None
    name_line, cmds, desc = got
    cmd = cmds.split(",")[0].strip()
    sec = re.search(r"/man(\d)", path).group(1)
    kind = {"1": "command", "8": "command", "3": "function"}.get(sec, "other")
    ins = pick(EXPLAIN_TEMPLATES[kind], "explain", path).format(
        cmd=cmd, name=name_line, sec=sec)
    return ins, desc


# --------------------------------------------------------- Python code ----

# stdlib sub-packages not read: tests, the IDLE editor, the 2to3 fixers
PY_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "__pycache__",
                "site-packages", "dist-packages", "config-3.11-x86_64-linux-gnu"}


class PyStdlib:
    """Short documented functions of /usr/lib/python3.11/**/*.py (the
    modules of the Debian libpython3.11 packages, tests excluded)."""

    def __init__(self, root):
        import ast
        self.dir = os.path.join(root, PY_STDLIB)
        progress(f"reading {self.dir}/**/*.py")
        owned = set()
        for pkg in PY_PACKAGES:
            owned |= dpkg_files(pkg) if root == "/" else set()
        self.files, self.funcs = [], []
        names = []
        for base, dirs, files in os.walk(self.dir):
            dirs[:] = [d for d in dirs if d not in PY_SKIP_DIRS
                       and not d.startswith(("test", "_"))]
            rel = os.path.relpath(base, self.dir)
            names += [f if rel == "." else f"{rel}/{f}" for f in files
                      if f.endswith(".py")]
        for name in sorted(names):
            path = os.path.join(self.dir, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            if owned and f"/{PY_STDLIB}/{name}" not in owned:
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                source = f.read()
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            self.files.append(name)
            lines = source.split("\n")
            module = name[:-3].replace("/", ".").removesuffix(".__init__")
            for node, owner in self._functions(tree):
                self.funcs.append((module, owner, node, lines))

    @staticmethod
    def _functions(tree):
        import ast
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                yield node, None
            elif isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, ast.FunctionDef):
                        yield sub, node.name

    def keys(self):
        return list(range(len(self.funcs)))


CODE_TEMPLATES = (
    "Write a Python function `{sig}` that does the following:\n{doc}",
    "{doc}\n\nImplement this in Python as `{sig}`.",
    "In the `{mod}` module of the standard library, {where} is documented "
    "as:\n\"\"\"{doc}\"\"\"\nWrite its code.",
    "def {sig}:\n    \"\"\"{doc}\"\"\"\n\nComplete the function body.",
)


def make_code(py, key):
    import ast
    import textwrap
    mod, owner, node, lines = py.funcs[key]
    if node.name.startswith("_") or node.decorator_list:
        return None
    doc = ast.get_docstring(node)
    body = node.body
    if not doc or len(body) < 2 or not 20 <= len(doc) <= 500 \
            or "\n\n" in doc.strip() or "\\" in doc:
        return None
    doc_node = body[0]
    start, end = node.lineno, node.end_lineno
    keep = [ln for i, ln in enumerate(lines[start - 1:end], start)
            if not doc_node.lineno <= i <= doc_node.end_lineno]
    code = textwrap.dedent("\n".join(ln.rstrip() for ln in keep)).strip("\n")
    code = re.sub(r"\n\s*\n", "\n", code)       # blank lines inside
    n_lines = code.count("\n") + 1
    if n_lines < 2 or n_lines > 12 or len(code) > HETERO_MAX_RESPONSE \
            or "\t" in code:
        return None
    try:
        ast.parse(code)
    except SyntaxError:
        return None
    head = code.split("\n")[0]
    m = re.match(r"^def (.*\)(?: -> .+)?):$", head)
    if not m:
        return None                              # multi-line signatures
    sig = m.group(1)
    where = f"the method {owner}.{node.name}()" if owner else \
        f"the function {node.name}()"
    ins = pick(CODE_TEMPLATES, "code", mod, owner, node.name).format(
        sig=sig, doc=collapse(doc), mod=mod, where=where)
    return ins, code


# ---------------------------------------------------------------- tasks ----

# task -> (source name, candidate keys of the loaded source, example maker)
TASKS = {
    "definition": ("wordnet", lambda wn: wn_entries(wn), make_definition),
    "synonym": ("wordnet", lambda wn: wn_entries(wn), make_synonym),
    "antonym": ("wordnet", lambda wn: wn_entries(wn), make_antonym),
    "hypernym": ("wordnet", lambda wn: wn_entries(wn, "n"), make_hypernym),
    "translate_fr": ("freedict-eng-fra", Dictd.keys, make_translation("French", False)),
    "translate_de": ("freedict-eng-deu", Dictd.keys, make_translation("German", True)),
    "translate_es": ("freedict-eng-spa", Dictd.keys, make_translation("Spanish", False)),
    "quote": ("fortunes", Fortunes.keys, make_quote),
    "gcide": ("gcide", Dictd.keys, make_gcide),
    # heterogeneous tasks (answers of other formats and lengths)
    "summarize": ("dpkg", Dpkg.keys, make_summarize),
    "classify_section": ("dpkg", Dpkg.keys, make_classify),
    "extract": ("dpkg", extract_keys, make_extract),
    "explain": ("dpkg", man_keys, make_explain),
    "code": ("python-stdlib", PyStdlib.keys, make_code),
}
CLASSIC_TASKS = ("definition", "synonym", "antonym", "hypernym", "translate_fr",
                 "translate_de", "translate_es", "quote", "gcide")
HETERO_TASKS = ("summarize", "classify_section", "extract", "explain", "code")
TASK_SETS = {
    "classic": CLASSIC_TASKS,           # the default (9 tasks)
    "hetero": HETERO_TASKS + ("definition", "translate_fr", "quote"),
    "all": tuple(TASKS),
}
# per-task response limit (characters); the classic tasks keep MAX_RESPONSE
RESPONSE_LIMIT = {t: HETERO_MAX_RESPONSE for t in HETERO_TASKS}
# tasks whose responses are labels: no label takes more than LABEL_CAP of them
LABEL_TASKS = {"classify_section"}
# tasks whose texts keep their line breaks (the classic ones are collapsed)
MULTILINE_TASKS = set(HETERO_TASKS)


def load_source(root, name):
    if name == "wordnet":
        return WordNet(root)
    if name == "dpkg":
        return Dpkg(root)
    if name == "python-stdlib":
        return PyStdlib(root)
    if name == "fortunes":
        return Fortunes(root)
    return Dictd(root, name)


def check_sources(root, tasks):
    missing = {}
    for task in tasks:
        package, files = SOURCES[TASKS[task][0]]
        for rel in files:
            path = os.path.join(root, rel)
            if not os.path.isfile(path):
                missing.setdefault(package, path)
    if missing:
        pkgs = " ".join(sorted(missing))
        first = next(iter(missing.values()))
        raise BuildError(f"corpus file {first} not found; install the Debian "
                         f"package(s) (as root): apt-get install -y {pkgs}")


def dpkg_version(package):
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                             capture_output=True, text=True, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None


def seeded_order(rng, size, n):
    """A seeded random permutation of range(size), drawn lazily: first a
    sample of 40n indices (cheap for large pools), then the rest shuffled."""
    first = rng.sample(range(size), min(size, 40 * n))
    yield from first
    if len(first) < size:
        taken = set(first)
        rest = [i for i in range(size) if i not in taken]
        rng.shuffle(rest)
        yield from rest


def dpkg_files(package):
    try:
        out = subprocess.run(["dpkg-query", "-L", package],
                             capture_output=True, text=True, check=False)
    except OSError:
        return set()
    return set(out.stdout.split("\n"))


def fortune_sources(task, names):
    """Group the fortune files read by owning package (fortunes ships most,
    its dependency fortunes-min a few)."""
    owners = {pkg: dpkg_files(pkg) for pkg in FORTUNE_PACKAGES}
    groups = {}
    for name in names:
        rel = f"/{FORTUNE_DIR}/{name}"
        pkg = next((p for p, files in owners.items() if rel in files),
                   "fortunes")
        groups.setdefault(pkg, []).append(rel)
    return [{"task": task, "package": pkg, "version": dpkg_version(pkg),
             "files": files} for pkg, files in sorted(groups.items())]


def collapse_lines(text):
    """Whitespace collapsed within lines, at most one blank line in a row,
    line breaks kept (for the multi-line tasks)."""
    lines = [collapse(ln) for ln in text.strip().split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def normalize(task, text):
    if task == "code":                    # indentation is syntax
        return "\n".join(ln.rstrip() for ln in text.split("\n")).strip("\n")
    if task in MULTILINE_TASKS:
        return collapse_lines(text)
    return collapse(text)


def man_sources(task, dp):
    """The packages that own the man pages read, with their versions."""
    groups = {}
    for path, pkg in dp.man_pages:
        groups.setdefault(pkg, []).append(path)
    return [{"task": task, "package": pkg,
             "version": dp.by_name[pkg].get("Version"), "files": files}
            for pkg, files in sorted(groups.items())]


def python_sources(task, names):
    """The stdlib modules read, grouped by owning Debian package."""
    owners = {pkg: dpkg_files(pkg) for pkg in PY_PACKAGES}
    groups = {}
    for name in names:
        rel = f"/{PY_STDLIB}/{name}"
        pkg = next((p for p, files in owners.items() if rel in files),
                   PY_PACKAGES[-1])
        groups.setdefault(pkg, []).append(rel)
    return [{"task": task, "package": pkg, "version": dpkg_version(pkg),
             "files": files} for pkg, files in sorted(groups.items())]


def sample_task(task, source, n, seed):
    """Up to n examples with distinct instructions, in a seeded random order."""
    _, candidates, make = TASKS[task]
    keys = candidates(source)
    rng = random.Random(f"{seed}/{task}")
    limit = RESPONSE_LIMIT.get(task, MAX_RESPONSE)
    labels, cap = {}, max(1, int(LABEL_CAP * min(n, len(keys))))
    seen, out = set(), []
    for k in seeded_order(rng, len(keys), n):
        ex = make(source, keys[k])
        if ex is None:
            continue
        instruction = normalize(task, ex[0])
        response = normalize(task, ex[1])
        if not instruction or not response or instruction in seen \
                or len(response) > limit or len(instruction) > MAX_INSTRUCTION:
            continue
        if task in LABEL_TASKS:
            if labels.get(response, 0) >= cap:
                continue
            labels[response] = labels.get(response, 0) + 1
        seen.add(instruction)
        out.append({"task": task, "instruction": instruction,
                    "response": response})
        if len(out) == n:
            break
    return out


def split_counts(n, val_frac, test_frac):
    n_val = round(n * val_frac)
    n_test = round(n * test_frac)
    if n >= 3:                       # every split non-empty when possible
        n_val = max(n_val, 1 if val_frac > 0 else 0)
        n_test = max(n_test, 1 if test_frac > 0 else 0)
    return n - n_val - n_test, n_val, n_test


def build(out_dir, seed=0, per_task=1000, tasks=None, val_frac=0.1,
          test_frac=0.1, root="/"):
    tasks = list(tasks or CLASSIC_TASKS)
    check_sources(root, tasks)
    splits = {s: [] for s in SPLITS}
    counts, sources, loaded = {}, [], {}
    for task in tasks:
        name = TASKS[task][0]
        if name not in loaded:
            loaded[name] = load_source(root, name)
        examples = sample_task(task, loaded[name], per_task, seed)
        if len(examples) < per_task:
            progress(f"warning: task {task} has only {len(examples)} "
                     f"usable examples (asked for {per_task})")
        n_train, n_val, _ = split_counts(len(examples), val_frac, test_frac)
        parts = {"train": examples[:n_train],
                 "validation": examples[n_train:n_train + n_val],
                 "test": examples[n_train + n_val:]}
        counts[task] = {s: len(parts[s]) for s in SPLITS}
        for s in SPLITS:
            splits[s].extend(parts[s])
        progress(f"{task}: " + ", ".join(f"{s} {counts[task][s]}" for s in SPLITS))
        package, files = SOURCES[name]
        source = {"task": task, "package": package,
                  "version": dpkg_version(package),
                  "files": ["/" + f for f in files]}
        if name == "fortunes":
            sources.extend(fortune_sources(task, loaded[name].files))
        elif name == "dpkg":
            sources.append(loaded[name].source_entry(task, ["/" + DPKG_STATUS]))
            if task == "explain":
                sources.extend(man_sources(task, loaded[name]))
        elif name == "python-stdlib":
            sources.extend(python_sources(task, loaded[name].files))
        else:
            sources.append(source)

    os.makedirs(out_dir, exist_ok=True)
    files = {}
    for s in SPLITS:
        rows = splits[s]
        random.Random(f"{seed}/mix/{s}").shuffle(rows)
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        blob = data.encode("utf-8")
        path = os.path.join(out_dir, f"{s}.jsonl")
        with open(path, "wb") as f:
            f.write(blob)
        files[f"{s}.jsonl"] = {"records": len(rows),
                               "sha256": hashlib.sha256(blob).hexdigest()}
        progress(f"wrote {path} ({len(rows)} records)")
    manifest = {
        "format": 1,
        "seed": seed,
        "per_task": per_task,
        "val_frac": val_frac,
        "test_frac": test_frac,
        "tasks": tasks,
        "counts": counts,
        "totals": {s: len(splits[s]) for s in SPLITS},
        "sources": sources,
        "files": files,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return manifest


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Build a multi-task instruction dataset (JSONL) from "
                    "Debian-packaged corpora: WordNet, FreeDict, fortunes, GCIDE "
                    "(classic); dpkg database, man pages, Python stdlib (hetero).")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p.add_argument("--per-task", type=int, default=1000, metavar="N",
                   help="examples per task before splitting (default 1000)")
    p.add_argument("--task-set", choices=sorted(TASK_SETS), default="classic",
                   help="classic: the 9 dictionary/quotation tasks (default); "
                        "hetero: " + ",".join(TASK_SETS["hetero"]) +
                        "; all: every task")
    p.add_argument("--tasks", default=None, metavar="A,B,...",
                   help="comma-separated tasks, overriding --task-set; known: "
                        + ",".join(TASKS))
    p.add_argument("--val-frac", type=float, default=0.1, metavar="F",
                   help="validation fraction per task (default 0.1)")
    p.add_argument("--test-frac", type=float, default=0.1, metavar="F",
                   help="test fraction per task (default 0.1)")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="file-system root holding usr/share (default /)")
    args = p.parse_args(argv)
    if args.tasks is None:
        tasks = list(TASK_SETS[args.task_set])
    else:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        p.error(f"unknown task(s) {','.join(unknown) or '(none given)'}; "
                f"known: {','.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        p.error("--tasks lists a task twice")
    if args.per_task < 1:
        p.error(f"--per-task must be >= 1, got {args.per_task}")
    if not (0 <= args.val_frac < 1 and 0 <= args.test_frac < 1
            and args.val_frac + args.test_frac < 1):
        p.error(f"need 0 <= --val-frac, --test-frac and their sum < 1, got "
                f"{args.val_frac} and {args.test_frac}")
    args.tasks = tasks
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        m = build(args.out, args.seed, args.per_task, args.tasks,
                  args.val_frac, args.test_frac, args.root)
    except BuildError as e:
        print(f"build_dataset: error: {e}", file=sys.stderr)
        return 1
    progress("done: " + ", ".join(f"{s} {m['totals'][s]}" for s in SPLITS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
