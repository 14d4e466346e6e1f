#!/usr/bin/env bash
# test_cli_frontier_bad.sh - bad deepseek2 and glm4moe files (issue 11) are refused with one
# line and exit 1 by run and up (which indexes a GGUF before it starts anything):
#  - an MLA rank that does not match its tensors: attention.kv_lora_rank or q_lora_rank patched;
#  - a router whose rows do not match expert_count (ffn_gate_inp's ne[1] patched);
#  - an expert_group_count that does not divide expert_count (deepseek2 and glm4moe).
# (gpt-oss sinks of the wrong length, an mxfp4 block with a NaN scale and glm4moe's router are
# refused in test_golden_arch.sh.) Each model is a few hundred KB from mkmodel, patched in its
# header: a metadata integer rewritten in place, or one dimension of a tensor's info.
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
need_python3 "to patch the GGUF files"
stack_tmp

# patch IN OUT key NAME VALUE: rewrites the integer metadata value NAME (any integer type, kept).
# patch IN OUT dim TENSOR DIM VALUE: rewrites dimension DIM of tensor TENSOR's info.
patch() {
    python3 - "$@" <<'PY'
import struct, sys
src, dst, what, name = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].encode()
d = bytearray(open(src, "rb").read())
k = struct.pack("<Q", len(name)) + name
i = d.find(k)
assert i > 0 and d.find(k, i + 1) < 0, "name not found once"
p = i + len(k)
if what == "key":
    ints = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}
    t = struct.unpack_from("<I", d, p)[0]
    assert t in ints, "not an integer key: type %d" % t
    struct.pack_into(ints[t], d, p + 4, int(sys.argv[5]))
else:
    nd = struct.unpack_from("<I", d, p)[0]
    dim = int(sys.argv[5])
    assert dim < nd
    struct.pack_into("<Q", d, p + 4 + 8 * dim, int(sys.argv[6]))
open(dst, "wb").write(d)
PY
}

# refused NAME FILE PATTERN: run (the model loader) and up (the index builder, as convert) each
# exit 1 with one line matching PATTERN (up's own progress lines aside).
refused() {
    local name=$1 f=$2 pat=$3 rc lines
    "$NF_BIN" run -m "$f" -p hi -n 1 >/dev/null 2>"$T/err"
    rc=$?
    [ $rc -eq 1 ] && [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q -- "$pat" "$T/err"
    check "$name: run refuses it in one line (rc $rc: $(head -c 300 "$T/err"))" $?
    "$NF_BIN" up -m "$f" --ram 256M -t 1 --run-dir "$T/run-$name" >/dev/null 2>"$T/err"
    rc=$?
    lines=$(grep -vc '^index' "$T/err")
    [ $rc -eq 1 ] && [ "$lines" -eq 1 ] && grep -q -- "$pat" "$T/err"
    check "$name: up refuses it in one line (rc $rc: $(grep -v '^index' "$T/err" | head -c 300))" $?
    rm -f "${f%.gguf}.nfi"
}

DS="--arch deepseek2 --dim 128 --layers 3 --ffn 64 --heads 4 --head-dim 48 --rope-dim 16 \
--kv-lora 64 --v-head 32 --q-lora 64 --dense-layers 1 --dense-ffn 256 --experts 8 \
--experts-used 2 --shared-experts 1 --sigmoid --expert-groups 4 --groups-used 2 --type q8_0"
GLM="--arch glm4moe --dim 64 --layers 3 --ffn 64 --heads 4 --kv-heads 2 --head-dim 32 \
--experts 16 --experts-used 4 --expert-groups 4 --groups-used 2 --dense-layers 1 \
--dense-ffn 128 --type q8_0"
# shellcheck disable=SC2086 # word lists on purpose
"$NF_BIN" mkmodel "$T/ds.gguf" --seed 7 $DS >/dev/null &&
    "$NF_BIN" mkmodel "$T/glm.gguf" --seed 7 $GLM >/dev/null
check "mkmodel writes the deepseek2 and glm4moe models" $?
"$NF_BIN" run -m "$T/ds.gguf" -p hi -n 2 >/dev/null 2>"$T/err" &&
    "$NF_BIN" run -m "$T/glm.gguf" -p hi -n 2 >/dev/null 2>>"$T/err"
check "the unpatched models run ($(head -c 200 "$T/err"))" $?

patch "$T/ds.gguf" "$T/ds-kvrank.gguf" key deepseek2.attention.kv_lora_rank 48 &&
    refused ds-kvrank "$T/ds-kvrank.gguf" "kv_lora_rank"
patch "$T/ds.gguf" "$T/ds-qrank.gguf" key deepseek2.attention.q_lora_rank 32 &&
    refused ds-qrank "$T/ds-qrank.gguf" "attn_q_a.weight' has shape"
patch "$T/ds.gguf" "$T/ds-router.gguf" dim blk.1.ffn_gate_inp.weight 1 7 &&
    refused ds-router "$T/ds-router.gguf" "ffn_gate_inp.weight' has shape"
patch "$T/ds.gguf" "$T/ds-groups.gguf" key deepseek2.expert_group_count 3 &&
    refused ds-groups "$T/ds-groups.gguf" "expert_group_count 3 must divide expert_count 8 in groups"
patch "$T/glm.gguf" "$T/glm-groups.gguf" key glm4moe.expert_group_count 3 &&
    refused glm-groups "$T/glm-groups.gguf" "expert_group_count 3 .* do not fit 16 experts"
patch "$T/glm.gguf" "$T/glm-router.gguf" dim blk.2.ffn_gate_inp.weight 1 15 &&
    refused glm-router "$T/glm-router.gguf" "ffn_gate_inp.weight' has shape"
exit $fail
