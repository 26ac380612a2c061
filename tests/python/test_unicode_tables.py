"""The pre-tokenizer's committed Unicode class table (src/core/tokenizer_unicode.c).

It must be exactly what scripts/gen_unicode_classes.py makes from the data
files (Debian's unicode-data package; skipped where it is not installed), and
agree with Python's own unicodedata on \\p{L} / \\p{N} for every code point
Python knows, when Python's Unicode is not newer than the table's.
"""
import pathlib
import re
import subprocess
import sys
import unicodedata

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TABLE = ROOT / "src" / "core" / "tokenizer_unicode.c"
GEN = ROOT / "scripts" / "gen_unicode_classes.py"
UCD = pathlib.Path("/usr/share/unicode")

CLS_OTHER, CLS_L, CLS_N, CLS_WS = 0, 1, 2, 3


def committed_classes():
    text = TABLE.read_text(encoding="utf-8")
    version = re.search(r'tok_unicode_version\[\] = "([0-9.]+)"', text).group(1)
    ascii_body = re.search(r"tok_ascii_class\[128\] = \{(.*?)\};", text, re.S).group(1)
    cls = {cp: int(c) for cp, c in enumerate(re.findall(r"\d+", ascii_body)) if int(c)}
    body = re.search(r"tok_class_ranges\[\d+\] = \{(.*?)\};", text, re.S).group(1)
    for lo, hi, c in re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+), (\d)\}", body):
        for cp in range(int(lo, 16), int(hi, 16) + 1):
            cls[cp] = int(c)
    return version, cls


def test_committed_table_is_fresh():
    if not (UCD / "UnicodeData.txt").exists() or not (UCD / "PropList.txt").exists():
        pytest.skip("no /usr/share/unicode (apt-get install unicode-data)")
    fresh = subprocess.run([sys.executable, str(GEN), "--ucd", str(UCD)], check=True,
                           capture_output=True, text=True).stdout
    assert fresh == TABLE.read_text(encoding="utf-8"), \
        "src/core/tokenizer_unicode.c is stale: run scripts/gen_unicode_classes.py -o src/core/tokenizer_unicode.c"


def test_table_agrees_with_python_unicodedata():
    version, cls = committed_classes()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))
    if as_tuple(unicodedata.unidata_version) > as_tuple(version):
        pytest.skip(f"Python's Unicode {unicodedata.unidata_version} is newer than the table's {version}")
    bad = []
    for cp in range(0x110000):
        gc = unicodedata.category(chr(cp))
        if gc == "Cn":
            continue  # unassigned in Python's version
        want = CLS_L if gc[0] == "L" else CLS_N if gc[0] == "N" else None
        got = cls.get(cp, CLS_OTHER)
        if want is None:
            ok = got in (CLS_OTHER, CLS_WS)
        else:
            ok = got == want
        if not ok:
            bad.append(f"U+{cp:04X} {gc} -> {got}")
    assert not bad, bad[:20]
    # White_Space: the set the regexes used before the table (HF's Oniguruma \s)
    ws = {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
          0x2028, 0x2029, 0x202F, 0x205F, 0x3000}
    assert {cp for cp, c in cls.items() if c == CLS_WS} == ws
