#!/usr/bin/env python3
"""Writes TYPE.bin fixtures for test_quants: the first blocks of one tensor of a GGUF quantized
by llama.cpp's llama-quantize, followed by llama.cpp's dequantization of them (gguf-py's
quants.dequantize) as little-endian float32. Usage (see README.md):

    PYTHONPATH=$ORACLE/gguf-py python3 make_fixtures.py OUT_DIR TYPE=MODEL.gguf ...

TYPE=MODEL.gguf@SOURCE.gguf also writes type_src.bin: the same elements of the tensor in the
file MODEL.gguf was quantized from, as little-endian float32 (the quantizer's input).
"""
import sys

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

TENSOR = "blk.1.ffn_down.weight"  # rows of 768: every type's block size divides them
BYTES = 1024  # about this many bytes of blocks per type (4 to 56 blocks)


def main():
    out = sys.argv[1]
    for arg in sys.argv[2:]:
        name, path = arg.split("=", 1)
        path, _, source = path.partition("@")
        qtype = GGMLQuantizationType[name]
        block, size = GGML_QUANT_SIZES[qtype]
        t = next(t for t in GGUFReader(path).tensors if t.name == TENSOR)
        if t.tensor_type != qtype:
            sys.exit(f"{path}: {TENSOR} is {t.tensor_type.name}, expected {name}")
        nb = BYTES // size
        raw = np.asarray(t.data).reshape(-1).view(np.uint8)[: nb * size].copy()
        vals = dequantize(raw.reshape(nb, size), qtype).astype("<f4").reshape(-1)
        assert vals.size == nb * block
        with open(f"{out}/{name.lower()}.bin", "wb") as f:
            f.write(raw.tobytes())
            f.write(vals.tobytes())
        if source:
            st = next(t for t in GGUFReader(source).tensors if t.name == TENSOR)
            src = np.asarray(st.data).reshape(-1)[: nb * block].astype("<f4")
            with open(f"{out}/{name.lower()}_src.bin", "wb") as f:
                f.write(src.tobytes())
        print(f"{name}: {nb} blocks of {block} ({nb * size} bytes) from {TENSOR} of {path}")


if __name__ == "__main__":
    main()
