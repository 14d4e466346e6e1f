"""gguf_lib.py - a GGUF reader for the tests' Python helpers (tests/lib.sh's gguf_split,
test_golden_arch.sh's patches, tests/golden/tools/gguf_tensors.py). Not a test itself.

Plain Python (struct), no numpy: GGUF v3, little endian, as llama.cpp's gguf.h describes it.
"""
import struct

# Bytes of a metadata value of each fixed-size type id (8 string and 9 array vary).
FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class Tensor:
    """One tensor info: name (bytes), ne (shape), type id, off (from the data section)."""

    def __init__(self, name, ne, ty, off):
        self.name, self.ne, self.ty, self.off = name, ne, ty, off


class Gguf:
    """The parsed header of the GGUF bytes d: version, kvs (each key/value pair's raw bytes, key
    first), align, tensors (in file order) and base (where the data section starts)."""

    def __init__(self, d, path="the file"):
        if d[:4] != b"GGUF":
            raise SystemExit(f"{path}: not a GGUF file")
        self.version, nt, nkv = struct.unpack_from("<IQQ", d, 4)
        p, self.align, self.kvs, self.tensors = 24, 32, [], []
        for _ in range(nkv):
            s = p
            kl = struct.unpack_from("<Q", d, p)[0]
            key = bytes(d[p + 8:p + 8 + kl])
            t = struct.unpack_from("<I", d, p + 8 + kl)[0]
            if key == b"general.alignment":
                self.align = struct.unpack_from("<I", d, p + 12 + kl)[0]
            p = _skip(d, t, p + 12 + kl)
            self.kvs.append(bytes(d[s:p]))
        for _ in range(nt):
            nl = struct.unpack_from("<Q", d, p)[0]
            name = bytes(d[p + 8:p + 8 + nl])
            nd = struct.unpack_from("<I", d, p + 8 + nl)[0]
            ne = struct.unpack_from("<%dQ" % nd, d, p + 12 + nl)
            p += 12 + nl + 8 * nd
            ty, off = struct.unpack_from("<IQ", d, p)
            p += 12
            self.tensors.append(Tensor(name, ne, ty, off))
        self.base = (p + self.align - 1) // self.align * self.align

    def tensor(self, name):
        """The tensor named name (bytes or str); KeyError if there is none."""
        if isinstance(name, str):
            name = name.encode()
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


def _skip(d, t, p):
    """Where the value of type t at p ends."""
    if t == 8:
        return p + 8 + struct.unpack_from("<Q", d, p)[0]
    if t == 9:
        et, n = struct.unpack_from("<IQ", d, p)
        p += 12
        for _ in range(n):
            p = _skip(d, et, p)
        return p
    return p + FIXED[t]
