#!/usr/bin/env python3
# make_gguf_corpus.py - writes the small valid GGUF seed files in corpus/gguf/ (run from anywhere).
#
# Each seed is a complete, valid file that exercises a different part of the reader: every value
# type, nested arrays, a vocabulary-only file, version 2, a non-default alignment and tensors of
# many ggml types (tensor data is filler; only sizes matter to the reader).
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "gguf")

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}
# ggml type: (elements per block, bytes per block)
GEOM = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
        10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
        16: (256, 66), 20: (32, 18), 23: (256, 136), 24: (1, 1), 30: (1, 2), 35: (256, 66),
        39: (32, 17)}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(t, v):
    if t == STR:
        return gstr(v)
    if t == ARR:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        for it in items:
            out += value(et, it)
        return out
    return struct.pack(SCALAR[t], v)


def kv(key, t, v):
    return gstr(key) + struct.pack("<I", t) + value(t, v)


def gguf(kvs, tensors, version=3, align=32):
    """tensors: list of (name, ne list, ggml type)."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    head += b"".join(kv(*e) for e in kvs)
    infos, off, sizes = b"", 0, []
    for name, ne, typ in tensors:
        blck, tsize = GEOM[typ]
        size = ne[0] // blck * tsize
        for d in ne[1:]:
            size *= d
        infos += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        infos += struct.pack("<IQ", typ, off)
        sizes.append((off, size))
        off = (off + size + align - 1) // align * align
    body = head + infos
    body += b"\0" * (-len(body) % align)
    data = bytearray(off)
    for i in range(len(data)):
        data[i] = (i * 13 + 5) & 0xFF
    return body + bytes(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    every = [
        ("general.architecture", STR, "llama"),
        ("general.alignment", U32, 32),
        ("t.u8", U8, 200), ("t.i8", I8, -5), ("t.u16", U16, 60000), ("t.i16", I16, -300),
        ("t.u32", U32, 4000000000), ("t.i32", I32, -7), ("t.f32", F32, 1.5), ("t.bool", BOOL, 1),
        ("t.u64", U64, 1 << 40), ("t.i64", I64, -(1 << 40)), ("t.f64", F64, 0.25),
        ("t.strs", ARR, (STR, ["a", "bc", ""])),
        ("t.f32s", ARR, (F32, [0.5, -1.0, 2.0])),
        ("t.bools", ARR, (BOOL, [0, 1, 1])),
        ("t.nested", ARR, (ARR, [(I32, [7, -8]), (U8, [1])])),
        ("t.empty", ARR, (U64, [])),
    ]
    seeds = {
        "every-value-type.gguf": gguf(every, [("a", [8, 2], 0), ("b", [64], 8), ("c", [256, 1], 12)]),
        "no-tensors-v2.gguf": gguf(every[:3], [], version=2),
    }
    toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % i for i in range(16)] + ["▁a", "▁the", "ing"]
    vocab = [
        ("general.architecture", STR, "llama"),
        ("llama.block_count", U32, 1),
        ("llama.embedding_length", U32, 32),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("tokenizer.ggml.model", STR, "llama"),
        ("tokenizer.ggml.tokens", ARR, (STR, toks)),
        ("tokenizer.ggml.scores", ARR, (F32, [float(-i) for i in range(len(toks))])),
        ("tokenizer.ggml.token_type", ARR, (I32, [2, 3, 3] + [6] * 16 + [1, 1, 1])),
        ("tokenizer.ggml.bos_token_id", U32, 1),
    ]
    seeds["vocab-model.gguf"] = gguf(vocab, [
        ("token_embd.weight", [32, len(toks)], 1),
        ("output_norm.weight", [32], 0),
        ("blk.0.attn_q.weight", [32, 32], 8),
        ("blk.0.ffn_up.weight", [32, 4], 2),
        ("blk.0.ffn_down.weight", [256, 2], 14),
        ("blk.0.ffn_gate_exps.weight", [256, 1, 2], 13),
        ("bf16", [4, 1, 1, 2], 30),
    ])
    seeds["many-types-align64.gguf"] = gguf(
        [("general.alignment", U32, 64), ("general.name", STR, "types")],
        [("t%d" % t, [GEOM[t][0] * 2, 1], t) for t in sorted(GEOM)], align=64)
    seeds["deep-nesting.gguf"] = gguf(
        [("n", ARR, (ARR, [(ARR, [(ARR, [(STR, ["x", "yz"])])])]))], [("x", [1], 24)])
    for name, blob in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(blob)
        print(name, len(blob))


if __name__ == "__main__":
    main()
