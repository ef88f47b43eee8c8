#!/usr/bin/env bash
# Stage data and wheels for a benchmark on the remote GPU machine (benchmarks/remote.md says how to use it).
#
# Here (no GPU):
#   bash benchmarks/stage.sh data NAME PATH... [-- 'COMMAND'] PATHs -> .carry/NAME/part-I-of-N, each small enough to
#                                                              travel with the working tree (PART_MIB overrides);
#                                                              prints the calls that carry them, COMMAND after the last
#   bash benchmarks/stage.sh wheels [--no-deps] PACKAGE...     PACKAGEs at this venv's versions, with their
#                                                              dependencies unless --no-deps, -> .whl/
# There (in a call's command):
#   bash benchmarks/stage.sh receive NAME                      appends the carried parts to $STAGED/NAME.tar; after
#                                                              the last one unpacks it into $STAGED/NAME (/tmp/zf)
set -euo pipefail
cd "$(dirname "$0")/.."
CALL_MIB=64  # what one call carries: the working tree (tracked and untracked files git does not ignore) and a part
STAGED=${STAGED:-/tmp/zf}
VENV_PYTHON=${VENV_PYTHON:-.venv/bin/python}

part_mib() {  # the largest part that travels beside today's working tree, 2 MiB to spare
    local tree
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
        awk '{s += $1} END {print int(s / 1048576) + 1}')
    echo $((CALL_MIB - tree - 2))
}

usage() { sed -n '2,12p' "$0" >&2; exit 2; }

data() {
    [ $# -ge 2 ] || usage
    local name=$1; shift
    local paths=() members=() command=""
    while [ $# -gt 0 ]; do
        if [ "$1" = "--" ]; then shift; command="$*"; break; fi
        [ -e "$1" ] || { echo "stage.sh data: $1 does not exist" >&2; exit 1; }
        paths+=("$1")
        members+=(-C "$(cd "$(dirname "$1")" && pwd)" "$(basename "$1")")  # lands as $STAGED/NAME/<its name>
        shift
    done
    [ ${#paths[@]} -gt 0 ] || usage
    local mib=${PART_MIB:-}
    if [ -z "$mib" ]; then
        mib=$(part_mib)
        [ "$mib" -ge 8 ] || { echo "stage.sh data: the working tree leaves $mib MiB of a call's $CALL_MIB for a part" >&2; exit 1; }
    fi
    rm -rf ".carry/$name" && mkdir -p ".carry/$name"
    # -h follows links: what a link points to does not travel (see the device README).
    tar chf - "${members[@]}" | split -b "${mib}M" -d -a 3 - ".carry/$name/part-"
    local parts=(".carry/$name"/part-*) n i=1
    n=${#parts[@]}
    for p in "${parts[@]}"; do mv "$p" ".carry/$name/part-$i-of-$n"; i=$((i + 1)); done
    echo "staged ${paths[*]} as $n part(s) of at most $mib MiB in .carry/$name ($(du -sh ".carry/$name" | cut -f1));" \
        "unpacked there into $STAGED/$name/"
    echo "one call per part, back to back (a machine left idle is given back, and /tmp with it):"
    for i in $(seq 1 "$n"); do
        local then=""
        [ "$i" = "$n" ] && [ -n "$command" ] && then=" && $command"
        echo "  call $i of $n: carry .carry/$name/part-$i-of-$n; command: bash benchmarks/stage.sh receive $name$then"
    done
}

receive() {  # each part is deleted once read: the machine keeps ignored files between calls
    [ $# -eq 1 ] || usage
    local name=$1 tar=$STAGED/$1.tar
    mkdir -p "$STAGED"
    local parts=(".carry/$name"/part-*-of-*)
    [ -e "${parts[0]}" ] || { echo "stage.sh receive: no .carry/$name/part-*-of-* in this call; carry one" >&2; exit 1; }
    for p in $(printf '%s\n' "${parts[@]}" | sort -V); do  # part-2 before part-10
        local i=${p##*/part-}; i=${i%-of-*}; local n=${p##*-of-} expected
        [ "$i" = 1 ] && { rm -f "$tar"; echo "1 of $n" > "$tar.next"; }  # part 1 starts a staging afresh
        expected=$(cat "$tar.next" 2>/dev/null || echo "1 of ?")
        if [ "$i of $n" != "$expected" ]; then
            rm -f "$p"
            echo "stage.sh receive: got part $i of $n of $name, expected part $expected; send the parts in order" >&2
            exit 1
        fi
        cat "$p" >> "$tar" && rm -f "$p"
        echo "$((i + 1)) of $n" > "$tar.next"
        if [ "$i" = "$n" ]; then
            # unpacked beside, then renamed: a cut-off unpack never looks like a staged folder
            rm -rf "${STAGED:?}/.$name.tmp" && mkdir -p "$STAGED/.$name.tmp" && tar xf "$tar" -C "$STAGED/.$name.tmp"
            rm -rf "${STAGED:?}/$name" && mv "$STAGED/.$name.tmp" "$STAGED/$name"
            rm -f "$tar" "$tar.next"
            echo "ready: $STAGED/$name ($(du -sh "$STAGED/$name" | cut -f1))"
        else
            echo "received part $i of $n of $name"
        fi
    done
}

wheels() {
    local deps=()
    [ "${1:-}" = "--no-deps" ] && { deps=(--no-deps); shift; }
    [ $# -ge 1 ] || usage
    local specs=()
    for package in "$@"; do
        specs+=("$package==$("$VENV_PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package")")
    done
    local fresh wheel
    fresh=$(mktemp -d)
    python3 -m pip download -q "${deps[@]}" --only-binary=:all: --python-version 3.12 --implementation cp -d "$fresh" \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 "${specs[@]}"
    rm -f "$fresh"/numpy-*.whl "$fresh"/torch-*.whl  # the machine has its own: two versions would break the install
    mkdir -p .whl
    for wheel in "$fresh"/*.whl; do  # a later call replaces a package's earlier version (two break the install)
        wheel=$(basename "$wheel")
        rm -f .whl/"${wheel%%-*}"-*.whl
        mv "$fresh/$wheel" .whl/
    done
    rm -rf "$fresh"
    local with="with their dependencies"
    [ ${#deps[@]} -eq 0 ] || with="without dependencies"
    echo "staged ${specs[*]} $with in .whl ($(du -sh .whl | cut -f1)); carry .whl and begin the command with:"
    echo "  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:\$PWD &&"
}

case "${1:-}" in
    data | receive | wheels) "$@" ;;
    *) usage ;;
esac
