#!/usr/bin/env python3
"""gguf_tensors.py - the tensors of a GGUF file, for making the hub-style goldens' recipes.

  gguf_tensors.py types FILE.gguf      one line per tensor: its name and ggml type name (the
                                       `mkmodel --tensor-types` recipe of that file's mix)
  gguf_tensors.py cmp A.gguf B.gguf    compares the two files' tensors (names, types, shapes and
                                       data bytes; the metadata is not compared); exit 0 when
                                       every tensor is identical, else 1 naming the first that
                                       differs

The header is read by tests/gguf_lib.py.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from gguf_lib import Gguf  # noqa: E402 (tests/gguf_lib.py)

# ggml type ids -> (name, elements per block, bytes per block), the types mkmodel writes.
TYPES = {
    0: ("f32", 1, 4), 1: ("f16", 1, 2), 2: ("q4_0", 32, 18), 3: ("q4_1", 32, 20),
    6: ("q5_0", 32, 22), 7: ("q5_1", 32, 24), 8: ("q8_0", 32, 34), 10: ("q2_K", 256, 84),
    11: ("q3_K", 256, 110), 12: ("q4_K", 256, 144), 13: ("q5_K", 256, 176),
    14: ("q6_K", 256, 210), 20: ("iq4_nl", 32, 18), 23: ("iq4_xs", 256, 136),
    30: ("bf16", 1, 2), 39: ("mxfp4", 32, 17),
}


def tensors(path):
    """Returns [(name, type id, shape, data bytes)] in file order."""
    d = open(path, "rb").read()
    g = Gguf(d, path)
    out = []
    for t in g.tensors:
        name = t.name.decode()
        if t.ty not in TYPES:
            sys.exit(f"{path}: tensor {name} has type {t.ty}, unknown here")
        _, bs, ts = TYPES[t.ty]
        n = 1
        for x in t.ne:
            n *= x
        out.append((name, t.ty, t.ne, d[g.base + t.off:g.base + t.off + n // bs * ts]))
    return out


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "types":
        for name, ty, _, _ in tensors(sys.argv[2]):
            print(name, TYPES[ty][0])
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "cmp":
        a = {t[0]: t for t in tensors(sys.argv[2])}
        b = {t[0]: t for t in tensors(sys.argv[3])}
        if sorted(a) != sorted(b):
            print("the tensor names differ:", sorted(set(a) ^ set(b)))
            return 1
        for name in sorted(a):
            if a[name][1:] != b[name][1:]:
                what = "type" if a[name][1] != b[name][1] else \
                    "shape" if a[name][2] != b[name][2] else "data"
                print(f"tensor {name}: the {what} differs")
                return 1
        print(f"{len(a)} tensors identical")
        return 0
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
