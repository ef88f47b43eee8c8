#!/usr/bin/env bash
# Issue 16, item 5, the source-size study on the remote GPU machine (benchmarks/remote.md): three sources, each
# through `dagster asset materialize` with benchmarks/reproduce/source_size.yaml, Caltech-101 the target.
#
# Here (no GPU):
#   bash benchmarks/source_size.sh stage NAME...  builds the sources (make_sources.py, under $SOURCES, unless built),
#                                               stages sources NAME (imagenette, imagenette_imagewoof, mini_imagenet),
#                                               Caltech-101 and the wheels as one hold; prints its calls: `runs` of
#                                               $SELECTION, or HOLD_STEP (e.g. "tables imagenette_imagewoof 9 '*fig8'")
#   bash benchmarks/source_size.sh report DIR   after a hold: unpacks the archives brought back into DIR, writes
#                                               source_size.json, its plots and the runs' records to $RESULTS
#   bash benchmarks/source_size.sh report_tables DIR   after a `tables` hold: its records, Tables 1 and 2 and
#                                               figures to $RESULTS/source_size/tables/NAME (the study untouched),
#                                               added to what an earlier hold kept there
# There (in a call's command):
#   bash benchmarks/source_size.sh sources      the staged folders as sources (make_sources.py) in /tmp/zf/sources
#   bash benchmarks/source_size.sh init [ARG]...  the init study (benchmarks/init_study.py ARGs, 6 recipes at once) on
#                                               the staged Imagenette; its rule writes the study's recipe to $RECIPE
#   bash benchmarks/source_size.sh run NAME SELECTION [-c FILE]...   materializes SELECTION for source NAME into
#                                               /tmp/zf/out/NAME; FILEs override source_size.yaml (dagster deep-merges
#                                               the -c files in order, the later one winning, whatever its --help says)
#   bash benchmarks/source_size.sh runs TAG SELECTION NAME... [-- ARG...]   `run` (with ARGs) for each NAME at once,
#                                               sharing the GPU; each one's log in $OUT/NAME_TAG.log; with RUN_LIMIT_S
#                                               each is interrupted (SIGINT) after that many seconds, to resume later
#   bash benchmarks/source_size.sh tables NAME [JOBS] [ALSO]   Tables 1 and 2 (item 6) for source NAME, with ALSO
#                                               (e.g. '*fig8,*fig3') in the same run, as `runs` does: every network
#                                               with zfnet_model's recipe (CONFIG, then RECIPE), JOBS at once
#                                               (9: Table 1's networks in one wave); TABLES='*table1' (or 2) for one
#                                               table; SEEDS=N: Table 1's networks per architecture
#   bash benchmarks/source_size.sh pack HOLD    the records, tables and result.json of every run -> $OUT/HOLD.tar.gz
#
# The plan: JPEGs travel, not shards. At 256 px q90 a shard holds 22 kB an image of Imagenette/Imagewoof (JPEGs:
# 10.5 kB) and 15 kB of mini-ImageNet (4.1 kB), and the machine shards all of it in seconds on 16 cores. Staged
# as tars: Imagenette 143.5 MiB, Imagewoof 138.1, mini-ImageNet 279.6, Caltech-101 86.1. A machine is held at
# most 30 minutes and a session has 30 minutes of device time. A hold is the wheels, the parts, then its sources'
# runs at once, the same call repeated until each is done (each call packs what is done so far). A machine idle
# for 30 s is given back with its /tmp, so every call of a hold goes out in one batch: a pause between two calls
# loses the staged data and every unfinished run. Sizes and device times on the H200, two or three sources at once:
#   imagenette imagenette_imagewoof  about 7 parts; training 3 and 5.5 min, Table 4's scratch rows 4 min, each
#                                    Table 7 5-6 min: 14 minutes of runs
#   imagenette mini_imagenet         about 10 parts; mini-ImageNet trains 3.5M images (50,000 x 70 epochs) in
#                                    10 min: 16 minutes of runs with Fig. 8 and Fig. 3, 18.5 with the staging
#   all three                        about 12 parts: more than a session's device time
#   tables imagenette_imagewoof      about 8 parts; Table 1's 9 networks at once: 13.5 min (13,200 img/s together),
#                                    then Table 2's: with staging and the figures more than one session's 30 min
#                                    (docs/results/tables_1_2.md); TABLES='*table2' alone trains zfnet_model (5 min),
#                                    then 5 networks at once (4 seeds, Krizhevsky's; 8.5 min): 16 min with staging
# Every source trains with the init study's recipe ($RECIPE, there a copy of
# benchmarks/reproduce/source_size_recipe.yaml; `init` writes it anew by the study's rule).
# At Imagenette's size one run leaves most of an H200 idle (validation and checkpoints between short epochs), so
# runs share the card: their wall times are then not single-run timings. No call should near the 10-minute
# limit (RUN_LIMIT_S); the next call, while the machine is warm, goes on: finished stages are cache hits,
# training resumes from its last checkpoint, a transfer table from its last finished probe. Table 4's
# non-pretrained rows depend on the target alone: they run with Imagenette only (source_size_no_scratch.yaml
# for the others).
set -euo pipefail
cd "$(dirname "$0")/.."
STUDY=${STUDY:-/tmp/zf}                   # there: staged data, sources, output roots
SOURCES=${SOURCES:-/tmp/zf_sources}       # here: make_sources.py's output (outside the repository)
IMAGENETTE=${IMAGENETTE:-/work/shared/data/imagenette}
IMAGEWOOF=${IMAGEWOOF:-/work/.mirror/thunderInfy+imagewoof/repo}           # a git directory or a folder
MINI_IMAGENET=${MINI_IMAGENET:-/work/.mirror/Deo0330+split_minidataset/repo}
CALTECH101=${CALTECH101:-/work/shared/data/caltech101}                    # holding 101_ObjectCategories
PYTHON=${PYTHON:-python3}
RECIPE=${RECIPE:-$STUDY/recipe.yaml}       # there: the zfnet_model config every source trains with (init study)
CONFIG=${CONFIG:-benchmarks/reproduce/source_size.yaml}  # a CPU dry run gives a tiny copy
NO_SCRATCH=benchmarks/reproduce/source_size_no_scratch.yaml
NAMES="imagenette imagenette_imagewoof mini_imagenet"  # the sources make_sources.py builds
SELECTION=${SELECTION:-*table7,*table4}   # what a hold materializes per source ('*table7,*table4,*fig8,*fig3': figures too)
WHEELS="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl"
PREFIX="export PYTHONPATH=/tmp/site:\$PWD PYTHONUNBUFFERED=1 &&"

usage() { sed -n '2,30p' "$0" >&2; exit 2; }

stage() {
    [ $# -ge 1 ] || usage
    local names=("$@") name paths=()
    for name in "${names[@]}"; do
        [[ " $NAMES " == *" $name "* ]] || usage
    done
    [ -f "$SOURCES/sources.json" ] || PYTHONPATH=. "${VENV_PYTHON:-.venv/bin/python}" benchmarks/make_sources.py \
        "$SOURCES" --imagenette "$IMAGENETTE" --imagewoof "$IMAGEWOOF" --mini-imagenet "$MINI_IMAGENET"
    # make_sources.py builds imagenette_imagewoof there from the Imagenette and Imagewoof parts
    [[ " ${names[*]} " =~ \ imagenette(_imagewoof)?\  ]] && paths+=("$SOURCES/imagenette")
    [[ " ${names[*]} " == *" imagenette_imagewoof "* ]] && paths+=("$SOURCES/parts/imagewoof")
    [[ " ${names[*]} " == *" mini_imagenet "* ]] && paths+=("$SOURCES/mini_imagenet")
    paths+=("$CALTECH101/101_ObjectCategories")
    bash benchmarks/stage.sh wheels dagster duckdb webdataset >/dev/null 2>&1 ||
        { echo "source_size.sh stage: bash benchmarks/stage.sh wheels dagster duckdb webdataset failed" >&2; exit 1; }
    local hold first later  # each run's log goes to $OUT/<source>_<step>.log, so it comes back even past the time limit
    hold=$(IFS=-; echo "${names[*]}")
    # Under the 10-minute call limit with room for the pack, and for the first call's last part and sources;
    # repeated until every source says done.
    # TABLES and SEEDS (of a `tables` step) go into the printed calls: they are read there, not here
    local step="${TABLES:+TABLES='$TABLES' }${SEEDS:+SEEDS=$SEEDS }RUN_LIMIT_S=520"
    step+=" bash benchmarks/source_size.sh ${HOLD_STEP:-runs all '$SELECTION' ${names[*]}};"
    step+=" bash benchmarks/source_size.sh pack hold_$hold"
    first="bash benchmarks/source_size.sh sources && cp benchmarks/reproduce/source_size_recipe.yaml $STUDY/recipe.yaml && $step"
    later=("$step  # again until each source's line says done")
    echo "hold $hold, every call with kind nvidia-h200, all in one batch (a pause of 30 s loses the machine):"
    echo "  call 0: carry .whl; command: $WHEELS"
    bash benchmarks/stage.sh data "study_$hold" "${paths[@]}" -- "$PREFIX set -o pipefail && $first"
    local i=1
    for command in "${later[@]}"; do
        echo "  then $i: command: $PREFIX set -o pipefail && $command"
        i=$((i + 1))
    done
    echo "bring back \$OUT/hold_$hold.tar.gz (the last call leaves it) and keep it outside the repository"
}

sources() {
    local args=() staged
    for staged in "$STUDY"/study_*/; do
        [ -d "$staged/imagenette" ] && args+=(--imagenette "$staged/imagenette")
        [ -d "$staged/imagewoof" ] && args+=(--imagewoof "$staged/imagewoof")
        [ -d "$staged/mini_imagenet" ] && args+=(--mini-imagenet "$staged/mini_imagenet")
    done
    [ ${#args[@]} -gt 0 ] || { echo "source_size.sh sources: nothing staged under $STUDY/study_*/" >&2; exit 1; }
    "$PYTHON" benchmarks/make_sources.py "$STUDY/sources" "${args[@]}"
}

init() {  # Imagenette's splits as shards, then every recipe of benchmarks/init_study.py at once (ARGs passed on)
    local nette nd=$STUDY/nd split
    nette=$(ls -d "$STUDY"/study_*/imagenette 2>/dev/null | head -1)
    [ -d "$nette/train" ] || { echo "source_size.sh init: no $STUDY/study_*/imagenette/train staged" >&2; exit 1; }
    for split in val train; do  # train last: each writes pixel_mean.npy beside its folder, and train's is kept
        [ -f "$nd/$split/classes.json" ] || "$PYTHON" benchmarks/make_bench_shards.py --images "$nette/$split" \
            --n "$(find -L "$nette/$split" -type f | wc -l)" --out "$nd/$split" --workers "$(nproc)"
    done
    "$PYTHON" benchmarks/init_study.py --shards "$nd/train" --val-shards "$nd/val" --mean "$nd/pixel_mean.npy" \
        --out "$STUDY/init" --jobs 6 --json "$STUDY/init/rows.json" --choose "$RECIPE" "$@"
    [ -z "${OUT:-}" ] || cp "$STUDY/init/rows.json" "$RECIPE" "$OUT/"
}

run() {
    [ $# -ge 2 ] || usage
    local name=$1 selection=$2; shift 2
    local configs=(-c "$CONFIG") caltech
    caltech=$(dirname "$(ls -d "$STUDY"/study_*/101_ObjectCategories "$STUDY"/*/101_ObjectCategories 2>/dev/null | head -1)")
    [ -d "$STUDY/sources/$name" ] || { echo "source_size.sh run: no source $STUDY/sources/$name (run 'sources' first)" >&2; exit 1; }
    [ -d "$caltech/101_ObjectCategories" ] || { echo "source_size.sh run: no $STUDY/*/101_ObjectCategories staged" >&2; exit 1; }
    [ "$name" = imagenette ] || configs+=(-c "$NO_SCRATCH")  # the scratch rows come from the Imagenette run
    [ -f "$RECIPE" ] && configs+=(-c "$RECIPE")
    # one Dagster home per source: runs of several sources at once never share a run database
    export ZF_DEVICE=${ZF_DEVICE:-cuda} ZF_OUTPUT_ROOT=$STUDY/out/$name ZF_IMAGENET_ROOT=$STUDY/sources/$name \
        ZF_CALTECH101_ROOT=$caltech DAGSTER_HOME=$STUDY/home/$name
    mkdir -p "$DAGSTER_HOME"
    sed "s#base_dir: .dagster_home#base_dir: $DAGSTER_HOME#" dagster.yaml > "$DAGSTER_HOME/dagster.yaml"
    echo "source $name: $ZF_IMAGENET_ROOT -> $ZF_OUTPUT_ROOT (Caltech-101: $caltech, device $ZF_DEVICE," \
        "configs: ${configs[*]} $*)"
    "$PYTHON" -m dagster asset materialize -m assets --select "$selection" "${configs[@]}" "$@"
}

tables() {  # Table 1's variants and Table 2's ensemble train zfnet_model's recipe: its merged config, copied
    [ $# -ge 1 ] || usage
    local name=$1 jobs=${2:-9}
    mkdir -p "$STUDY"
    "$PYTHON" - "$CONFIG" "$RECIPE" "$jobs" "${SEEDS:-1}" > "$STUDY/tables.yaml" <<'PY'
import json, pathlib, sys
import yaml
recipe = {}
for path in sys.argv[1:3]:
    if pathlib.Path(path).exists():
        recipe.update(yaml.safe_load(open(path))["ops"]["zfnet_model"]["config"])
jobs, seeds = int(sys.argv[3]), int(sys.argv[4])
print(json.dumps({"ops": {"table1": {"config": {**recipe, "jobs": jobs, "seeds": seeds}},
                          "table2": {"config": {**recipe, "jobs": jobs}}}}))
PY
    runs tables "${TABLES:-*table1,*table2}${3:+,$3}" "$name" -- -c "$STUDY/tables.yaml"
}

runs() {  # run SELECTION for several sources at once; fails when any of them did, after all have ended
    [ $# -ge 3 ] || usage
    local tag=$1 selection=$2 logs=${OUT:-$STUDY} names=() extra=() pids=() failed=() i log rc; shift 2
    while [ $# -gt 0 ]; do  # NAME... [-- ARG...]: ARGs go to every run
        if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
        names+=("$1"); shift
    done
    [ ${#names[@]} -gt 0 ] || usage
    mkdir -p "$logs"
    for i in "${!names[@]}"; do
        # SIGINT: Dagster records the run as failed and the next call's run resumes it
        timeout -s INT -k 30 "${RUN_LIMIT_S:-0}" bash benchmarks/source_size.sh run "${names[$i]}" "$selection" \
            "${extra[@]}" > "$logs/${names[$i]}_$tag.log" 2>&1 &
        pids+=($!)
    done
    for i in "${!names[@]}"; do
        log=$logs/${names[$i]}_$tag.log
        if wait "${pids[$i]}"; then echo "${names[$i]} $tag: done ($log)"; else
            rc=$?
            if [ $rc -eq 124 ]; then echo "${names[$i]} $tag: cut off after RUN_LIMIT_S=$RUN_LIMIT_S s: run it again ($log)"
            else echo "${names[$i]} $tag: FAILED ($log)"; fi
            failed+=("${names[$i]}"); fi
        tail -n 3 "$log"
    done
    [ ${#failed[@]} -eq 0 ] || { echo "source_size.sh runs: failed: ${failed[*]}" >&2; exit 1; }
}

pack() {
    [ $# -eq 1 ] || usage
    mkdir -p "${OUT:?pack runs there, where \$OUT is set}"
    # a machine taken back between calls comes back bare: say so, instead of cd's error and an empty archive
    [ -d "$STUDY/out" ] || { echo "source_size.sh pack: no $STUDY/out on this machine: nothing has run here (a" \
        "fresh machine? send the hold's calls again from call 0)" >&2; exit 1; }
    # val_predictions.npz: Table 2's ensemble can be computed here again, without the networks
    local kept=(-type f \( -path '*/_records/*' -o -name result.json -o -name 'metrics.*' -o -name val_predictions.npz
                -o -name learning_curve.png -o -path './*/table[1247]/*' -o -name 'fig[38]*.png' \))
    (cd "$STUDY/out" && find . "${kept[@]}" -size -4M | tar czf "$OUT/$1.tar.gz" -T -)
    echo "packed $(tar tzf "$OUT/$1.tar.gz" | wc -l) files into \$OUT/$1.tar.gz"
    (cd "$STUDY/out" && find . "${kept[@]}" -size +4M -printf 'left out of the pack (over 4 MiB): %p\n')
}

unpack() {  # DIR's hold archives, in name order: a later archive's records of a source win
    local archive
    for archive in "$1"/hold_*.tar.gz; do
        [ -e "$archive" ] || { echo "source_size.sh: no hold_*.tar.gz in $1" >&2; exit 1; }
        tar xzf "$archive" -C "$1"
    done
}

report() {  # a source missing from DIR's archives is read from the copy an earlier report kept
    [ $# -eq 1 ] || usage
    local dir=$1 name runs=() results=${RESULTS:-docs/results}
    unpack "$dir"
    for name in $NAMES; do
        if [ -d "$dir/$name/_records" ]; then runs+=("$name=$dir/$name")
        elif [ -d "$results/source_size/$name/_records" ]; then runs+=("$name=$results/source_size/$name"); fi
    done
    PYTHONPATH=. "${VENV_PYTHON:-.venv/bin/python}" benchmarks/source_size.py "${runs[@]}" \
        --sources "$SOURCES/sources.json" --out "$results" --keep "$results/source_size"
}

report_tables() {  # a `tables` hold: its runs kept apart, so they never replace a source's study point
    [ $# -eq 1 ] || usage
    local dir=$1 name runs=() results=${RESULTS:-docs/results}
    # What earlier holds kept goes under the new archives (theirs win): Table 2's hold then adds to Table 1's
    for name in $NAMES; do
        if [ -d "$results/source_size/tables/$name" ] && [ ! -e "$dir/$name" ]; then
            cp -r "$results/source_size/tables/$name" "$dir/$name"
        fi
    done
    unpack "$dir"
    for name in $NAMES; do
        if [ -d "$dir/$name/_records" ]; then runs+=("$name=$dir/$name"); fi
    done
    [ ${#runs[@]} -gt 0 ] || { echo "source_size.sh report_tables: no source's _records in $dir's archives" >&2; exit 1; }
    PYTHONPATH=. "${VENV_PYTHON:-.venv/bin/python}" benchmarks/source_size.py "${runs[@]}" \
        --keep "$results/source_size/tables" --keep-only
}

case "${1:-}" in
    stage | sources | init | run | runs | tables | pack | report | report_tables) "$@" ;;
    *) usage ;;
esac
