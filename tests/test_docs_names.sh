#!/usr/bin/env bash
# test_docs_names.sh - every function a documentation page names exists, with that name, in the
# file the page says it is in. Fails when a page names a function its file does not define
# (renamed, moved, or never there), a function the page gives no file for, or no function at all
# (then the page is not written in the convention below and nothing would be checked).
#
# Convention the pages follow (docs/life-of-a-token.md states it at its top):
#   - a function is written `name()` in backticks, a file as `dir/file.c`, or as a bare
#     `file.c` for a file of the page's own directory or the only file in the tree of that name;
#   - a function belongs to the first file named after it in the same paragraph or list item;
#     when no file follows it there, to the file named last before it in the same section.
# "Defines" means a line of the file starts a definition or declaration of `name(`: the name at
# the start of the line or after the return type (clang-format puts definitions and prototypes
# at column 0), or a function-like `#define name(`. Calls are indented and do not count.
#
# Usage: test_docs_names.sh [PAGE.md ...]   (default: the pages listed in PAGES below)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PAGES=(docs/life-of-a-token.md docs/architecture.md common/README.md ctl/README.md
    shm/README.md daemons/README.md proto/README.md)
SRC_DIRS=(common ctl daemons shm proto tests deploy)
[ $# -gt 0 ] && PAGES=("$@")

# extract PAGE: prints "LINE<TAB>NAME<TAB>FILE" for every `name()` of PAGE, FILE being the file
# mention it is attributed to (empty when there is none). Fenced code blocks are skipped.
extract() {
    awk '
    function is_file(s) { return s ~ /^[A-Za-z0-9_.\/-]+\.(c|h|proto|sh|py|txt|cmake)$/ }
    # The line of buf that holds character pos.
    function line_at(pos,   k) {
        for (k = nl; k > 1 && starts[k] > pos; k--)
            ;
        return lines[k]
    }
    # Scans the unit in buf (its lines joined: a code span may wrap) and prints its names.
    function unit_end(   rest, off, span, np, i, pname, pline) {
        rest = buf
        off = 0
        np = 0
        while (match(rest, /`[^`]+`/)) {
            span = substr(rest, RSTART + 1, RLENGTH - 2)
            pos = off + RSTART
            off += RSTART + RLENGTH - 1
            rest = substr(rest, RSTART + RLENGTH)
            if (span ~ /^[A-Za-z_][A-Za-z0-9_]*\(\)$/) {
                np++
                pname[np] = substr(span, 1, length(span) - 2)
                pline[np] = line_at(pos)
            } else if (is_file(span)) {
                last = span
                for (i = 1; i <= np; i++)
                    printf "%d\t%s\t%s\n", pline[i], pname[i], last
                np = 0
            }
        }
        for (i = 1; i <= np; i++)
            printf "%d\t%s\t%s\n", pline[i], pname[i], last
        buf = ""
        nl = 0
    }
    function add(line) {
        nl++
        starts[nl] = length(buf) + (nl > 1) + 1
        lines[nl] = NR
        buf = nl > 1 ? buf " " line : line
    }
    /^```/ { unit_end(); fence = !fence; next }
    fence { next }
    /^[ \t]*$/ { unit_end(); next }
    /^#/ { unit_end(); last = ""; add($0); unit_end(); next }
    /^[ \t]*([-*]|[0-9]+\.)[ \t]/ { unit_end() }
    { add($0) }
    END { unit_end() }
    ' "$1"
}

# resolve DIR MENTION: prints the path of the file MENTION names, relative to ROOT, or nothing
# when it names no file or more than one. A page's own directory DIR comes first (a README names
# its directory's files without the directory), then the repository root, then (a bare name) the
# one file of that name in the source tree.
resolve() {
    local d=$1 m=$2 hits
    if [ "$d" != . ] && [ -f "$ROOT/$d/$m" ]; then
        echo "$d/$m"
        return
    fi
    if [[ $m == */* ]]; then
        [ -f "$ROOT/$m" ] && echo "$m"
        return
    fi
    hits=$(grep -E "(^|/)${m//./\\.}\$" <<<"$ALL_FILES")
    [ -n "$hits" ] && [ "$(wc -l <<<"$hits")" -eq 1 ] && echo "$hits"
}

# defined FILE: prints, one per line, the names FILE defines or declares as functions: the
# identifier right before the first "(" of a line that starts at column 0 with a type or the
# name, or of a function-like #define. Read once per file (DEFINED caches it).
defined() {
    sed -nE 's/^(#[[:space:]]*define[[:space:]]+|([A-Za-z_][^(;=]*[^A-Za-z0-9_])?)([A-Za-z_][A-Za-z0-9_]*)\(.*/\3/p' \
        "$ROOT/$1"
}

# defines FILE NAME: status 0 when FILE defines or declares NAME as a function.
declare -A DEFINED # file -> its defined names, one per line, between newlines
defines() {
    [ -n "${DEFINED[$1]+set}" ] || DEFINED[$1]=$'\n'$(defined "$1")$'\n'
    [[ ${DEFINED[$1]} == *$'\n'"$2"$'\n'* ]]
}

# Every file a bare name may stand for, relative to ROOT (found once).
ALL_FILES=$(cd "$ROOT" && find "${SRC_DIRS[@]}" -type f 2>/dev/null)
declare -A RESOLVED # "page dir|mention" -> file, or empty
failed=0
checked=0
for page in "${PAGES[@]}"; do
    if [ ! -f "$ROOT/$page" ]; then
        echo "FAIL: $page does not exist"
        failed=$((failed + 1))
        continue
    fi
    n=0
    dir=$(dirname "$page")
    while IFS=$'\t' read -r line name mention; do
        n=$((n + 1))
        if [ -z "$mention" ]; then
            echo "FAIL: $page:$line: $name() has no file before or after it in its section"
            failed=$((failed + 1))
            continue
        fi
        key="$dir|$mention"
        [ -n "${RESOLVED[$key]+set}" ] || RESOLVED[$key]=$(resolve "$dir" "$mention")
        file=${RESOLVED[$key]}
        if [ -z "$file" ]; then
            echo "FAIL: $page:$line: $name() is attributed to \`$mention\`, which names no single file"
            failed=$((failed + 1))
        elif ! defines "$file" "$name"; then
            echo "FAIL: $page:$line: $name() is not defined in $file"
            failed=$((failed + 1))
        fi
    done < <(extract "$ROOT/$page")
    if [ "$n" -eq 0 ]; then
        echo "FAIL: $page names no function as \`name()\`: nothing was checked"
        failed=$((failed + 1))
    fi
    echo "$page: $n function names checked"
    checked=$((checked + n))
done
if [ "$failed" -ne 0 ]; then
    echo "$failed of $checked names failed"
    exit 1
fi
echo "ok: all $checked names found in their files"
