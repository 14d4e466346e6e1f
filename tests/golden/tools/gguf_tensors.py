#!/usr/bin/env python3
"""gguf_tensors.py - the tensors of a GGUF file, for making the hub-style goldens' recipes.

  gguf_tensors.py types FILE.gguf      one line per tensor: its name and ggml type name (the
                                       `mkmodel --tensor-types` recipe of that file's mix)
  gguf_tensors.py cmp A.gguf B.gguf    compares the two files' tensors (names, types, shapes and
                                       data bytes; the metadata is not compared); exit 0 when
                                       every tensor is identical, else 1 naming the first that
                                       differs

Plain Python (struct), no numpy: GGUF v3, little endian, as llama.cpp's gguf.h describes it.
"""
import struct
import sys

# ggml type ids -> (name, elements per block, bytes per block), the types mkmodel writes.
TYPES = {
    0: ("f32", 1, 4), 1: ("f16", 1, 2), 2: ("q4_0", 32, 18), 3: ("q4_1", 32, 20),
    6: ("q5_0", 32, 22), 7: ("q5_1", 32, 24), 8: ("q8_0", 32, 34), 10: ("q2_K", 256, 84),
    11: ("q3_K", 256, 110), 12: ("q4_K", 256, 144), 13: ("q5_K", 256, 176),
    14: ("q6_K", 256, 210), 20: ("iq4_nl", 32, 18), 23: ("iq4_xs", 256, 136),
    30: ("bf16", 1, 2), 39: ("mxfp4", 32, 17),
}
FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def tensors(path):
    """Returns [(name, type id, shape, data bytes)] in file order."""
    d = open(path, "rb").read()
    if d[:4] != b"GGUF":
        sys.exit(f"{path}: not a GGUF file")
    _, nt, nkv = struct.unpack_from("<IQQ", d, 4)
    p, align = 24, 32

    def skip(t, p):
        if t == 8:
            return p + 8 + struct.unpack_from("<Q", d, p)[0]
        if t == 9:
            et, n = struct.unpack_from("<IQ", d, p)
            p += 12
            for _ in range(n):
                p = skip(et, p)
            return p
        return p + FIXED[t]

    for _ in range(nkv):
        kl = struct.unpack_from("<Q", d, p)[0]
        key = d[p + 8:p + 8 + kl]
        t = struct.unpack_from("<I", d, p + 8 + kl)[0]
        if key == b"general.alignment":
            align = struct.unpack_from("<I", d, p + 12 + kl)[0]
        p = skip(t, p + 12 + kl)
    infos = []
    for _ in range(nt):
        nl = struct.unpack_from("<Q", d, p)[0]
        name = d[p + 8:p + 8 + nl].decode()
        nd = struct.unpack_from("<I", d, p + 8 + nl)[0]
        shape = struct.unpack_from("<%dQ" % nd, d, p + 12 + nl)
        p += 12 + nl + 8 * nd
        ty, off = struct.unpack_from("<IQ", d, p)
        p += 12
        infos.append((name, ty, shape, off))
    base = (p + align - 1) // align * align
    out = []
    for name, ty, shape, off in infos:
        if ty not in TYPES:
            sys.exit(f"{path}: tensor {name} has type {ty}, unknown here")
        _, bs, ts = TYPES[ty]
        n = 1
        for x in shape:
            n *= x
        out.append((name, ty, shape, d[base + off:base + off + n // bs * ts]))
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
