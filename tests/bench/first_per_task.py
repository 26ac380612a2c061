#!/usr/bin/env python3
"""Write the first N examples of every task of a JSONL dataset (in file order).

Used by the result scripts to evaluate on a fixed, balanced subset:
    first_per_task.py IN.jsonl OUT.jsonl N
"""
import argparse
import collections
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="JSONL with a 'task' field per line")
    ap.add_argument("output", help="where to write the subset")
    ap.add_argument("n", type=int, help="examples kept per task")
    a = ap.parse_args()
    seen, out = collections.Counter(), []
    with open(a.input, encoding="utf-8") as f:
        for line in f:
            task = json.loads(line)["task"]
            if seen[task] < a.n:
                seen[task] += 1
                out.append(line)
    with open(a.output, "w", encoding="utf-8") as f:
        f.writelines(out)


if __name__ == "__main__":
    main()
