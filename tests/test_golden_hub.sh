#!/usr/bin/env bash
# test_golden_hub.sh - hub-style files of gpt-oss, deepseek2 (V2-Lite- and V3-like) and glm4moe
# against llama.cpp's goldens in tests/golden/hub-*.jsonl: mixed tensor types as llama-quantize's
# Q4_K_M, Q5_K_M and MXFP4_MOE recipes write them, split in several GGUF parts as
# llama-gguf-split writes them. The goldens were made by the oracle from its own quantized and
# split files; each of those files' tensors is byte-identical to what `mkmodel --tensor-types`
# writes with the recipe committed beside the golden (tests/golden/README.md), so the test
# regenerates the model (checking its SHA-256), splits it with tests/lib.sh's gguf_split, and
# checks the split model in RAM and through a .nft (test_golden with NF_GOLDEN_MODEL: the rules
# of shared/golden/README.md, bit-exact on every step it compares) and, for one model of each
# architecture, through the stack (up on the split file's in-place index, gen --json equal to
# run --json and to the golden's gen_ids up to its first near tie).
set -u
. "$(dirname "$0")/lib.sh"
: "${NF_BIN:?NF_BIN must point to nanoflowctl}"
: "${NF_SHARED_DIR:?NF_SHARED_DIR must point to the shared directory}"
: "${NF_BUILD_DIR:?NF_BUILD_DIR must point to the build directory}"
GOLDEN_DIR="$(cd "$(dirname "$0")" && pwd)/golden"
VOCAB="$NF_SHARED_DIR/models/stories260K.gguf"
TG="$NF_BUILD_DIR/tests/test_golden"
if [ ! -f "$VOCAB" ] || [ ! -x "$TG" ]; then
    echo "skip: $VOCAB or $TG is missing"
    exit 77
fi
need_python3 "to split the models"
stack_tmp

# name, sha256 of the generated (unsplit) file, --type, the other mkmodel arguments; the recipe
# is tests/golden/NAME.types. Keep in step with tests/golden/README.md.
GO="--seed 31 --arch gpt-oss --dim 256 --layers 2 --ffn 256 --heads 4 --kv-heads 2 --head-dim 64 --experts 4 --experts-used 2 --window 4 --rope-base 150000 --rope-scale 32 --ctx 131072"
DS="--seed 31 --arch deepseek2 --dim 256 --layers 3 --ffn 256 --heads 4 --head-dim 64 --rope-dim 16 --kv-lora 256 --v-head 64 --dense-layers 1 --dense-ffn 512 --experts 8 --experts-used 2 --shared-experts 1"
DS2="$DS --q-lora 0"
DS3="$DS --q-lora 256 --sigmoid --expert-scale 2.5 --expert-groups 4 --groups-used 2"
GLM="--seed 31 --arch glm4moe --dim 256 --layers 3 --ffn 256 --heads 4 --kv-heads 2 --head-dim 64 --experts 8 --experts-used 4 --dense-layers 1 --dense-ffn 512 --nextn 1 --expert-scale 2.5 --qk-norm"
MODELS=(
    "hub-gptoss-mxfp4 293bdd1e321d5b1b28669535472fd24db79f25a1d9a6bc27221f89602ddbfce9 q8_0 $GO"
    "hub-gptoss-q4_k_m 68f6bbf663cf26cb24427bd0ed4155a61fd0f19057f32f239068c00b29f2026d q4_k $GO"
    "hub-ds2lite-q4_k_m 77caedad558af56c2c02a9788a745ba8769913952ecb9d8f973662d8b4de8cc0 q4_k $DS2"
    "hub-ds2lite-q5_k_m 1c523b4a8cd62dd6961e88b74d59ce77e23183ec1a52e5bcf8655d34709663b5 q5_k $DS2"
    "hub-ds3-q4_k_m 4cfa9d4945f5be9d18947f814df12767a67920b52a01417a2fee24087fdcc771 q4_k $DS3"
    "hub-glm4moe-q4_k_m 004f7ddd99cbd27bb4d259b5ebff8cd62722bae1ac45e51cfee27d9ecc6563d0 q4_k $GLM"
    "hub-glm4moe-q5_k_m eccf9496376912e6d76bc5837f0f53d60bb53e7890f25f85efb563078c39906c q5_k $GLM"
)
# Through the stack as well: one model of each architecture and deepseek2 routing.
STACK="hub-gptoss-q4_k_m hub-ds2lite-q5_k_m hub-ds3-q4_k_m hub-glm4moe-q4_k_m"

fail=0
for entry in "${MODELS[@]}"; do
    read -r name sum type args <<<"$entry"
    M="$T/$name.gguf"
    G="$GOLDEN_DIR/$name.jsonl"
    # shellcheck disable=SC2086 # args is a word list on purpose
    "$NF_BIN" mkmodel "$M" --vocab-from "$VOCAB" -t 2 $args --type "$type" \
        --tensor-types "$GOLDEN_DIR/$name.types" >/dev/null
    check "$name: mkmodel exits 0" $?
    got=$(sha256sum "$M" | cut -d' ' -f1)
    [ "$got" = "$sum" ]
    check "$name: mkmodel output is the one the golden was made from ($got)" $?
    gguf_split "$M" "$T/$name" 16 && rm "$M"
    S=$(ls "$T/$name"-00001-of-0000*.gguf 2>/dev/null)
    [ -n "$S" ] && [ "$(ls "$T/$name"-0000*-of-0000*.gguf | wc -l)" -ge 3 ]
    check "$name: split in 3 or more parts" $?
    golden_ram_nft "$name" "$S" "$G" # tests/lib.sh
done

if ! (need_daemons >/dev/null); then
    echo "note: daemons not built, stack part skipped"
    exit $fail
fi
for name in $STACK; do
    golden_stack "$name" "$(ls "$T/$name"-00001-of-0000*.gguf)" "$GOLDEN_DIR/$name.jsonl"
done
exit $fail
