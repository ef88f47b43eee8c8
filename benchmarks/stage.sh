#!/usr/bin/env bash
# Stage data and wheels for a benchmark on the remote GPU machine (benchmarks/remote.md says how to use it).
#
# Here (no GPU):
#   bash benchmarks/stage.sh data NAME PATH... [-- 'COMMAND'] PATHs -> .carry/NAME/part-I-of-N, each < PART_MIB;
#                                                              prints the calls that carry them, COMMAND after the last
#   bash benchmarks/stage.sh wheels [--no-deps] PACKAGE...     PACKAGEs at this venv's versions, with their
#                                                              dependencies unless --no-deps, -> .whl/
# There (in a call's command):
#   bash benchmarks/stage.sh receive NAME                      appends the carried parts to /tmp/zf/NAME.tar; after
#                                                              the last one unpacks it into /tmp/zf/NAME
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MIB=${PART_MIB:-56}  # a call carries at most 64 MiB with the working tree (~4 MiB)
VENV_PYTHON=${VENV_PYTHON:-.venv/bin/python}

usage() { sed -n '2,12p' "$0" >&2; exit 2; }

data() {
    [ $# -ge 2 ] || usage
    local name=$1; shift
    local paths=() members=() command=""
    while [ $# -gt 0 ]; do
        if [ "$1" = "--" ]; then shift; command="$*"; break; fi
        [ -e "$1" ] || { echo "stage.sh data: $1 does not exist" >&2; exit 1; }
        paths+=("$1")
        members+=(-C "$(cd "$(dirname "$1")" && pwd)" "$(basename "$1")")  # lands as /tmp/zf/NAME/<its name>
        shift
    done
    [ ${#paths[@]} -gt 0 ] || usage
    rm -rf ".carry/$name" && mkdir -p ".carry/$name"
    # -h follows links: what a link points to does not travel (see the device README).
    tar chf - "${members[@]}" | split -b "${PART_MIB}M" -d -a 3 - ".carry/$name/part-"
    local parts=(".carry/$name"/part-*) n i=1
    n=${#parts[@]}
    for p in "${parts[@]}"; do mv "$p" ".carry/$name/part-$i-of-$n"; i=$((i + 1)); done
    echo "staged ${paths[*]} as $n part(s) in .carry/$name ($(du -sh ".carry/$name" | cut -f1)); unpacked there into /tmp/zf/$name/"
    echo "one call per part, back to back (a machine left idle is given back, and /tmp with it):"
    for i in $(seq 1 "$n"); do
        local then=""
        [ "$i" = "$n" ] && [ -n "$command" ] && then=" && $command"
        echo "  call $i of $n: carry .carry/$name/part-$i-of-$n; command: bash benchmarks/stage.sh receive $name$then"
    done
}

receive() {
    [ $# -eq 1 ] || usage
    local name=$1 tar=/tmp/zf/$1.tar
    mkdir -p /tmp/zf
    for p in ".carry/$name"/part-*-of-*; do
        [ -e "$p" ] || { echo "stage.sh receive: no .carry/$name/part-*-of-* in this call; carry one" >&2; exit 1; }
        local i=${p##*/part-}; i=${i%-of-*}; local n=${p##*-of-} next
        next=$(cat "$tar.next" 2>/dev/null || echo 1)
        [ "$i" -lt "$next" ] && continue  # left by an earlier call: the machine keeps ignored files
        [ "$i" = "$next" ] || { echo "stage.sh receive: got part $i of $n of $name, expected part $next" >&2; exit 1; }
        cat "$p" >> "$tar"
        echo $((i + 1)) > "$tar.next"
        if [ "$i" = "$n" ]; then
            rm -rf "/tmp/zf/$name" && mkdir -p "/tmp/zf/$name" && tar xf "$tar" -C "/tmp/zf/$name"
            rm -f "$tar" "$tar.next"
            echo "ready: /tmp/zf/$name ($(du -sh "/tmp/zf/$name" | cut -f1))"
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
