#!/bin/bash
# Issue 7 on the device machine: the Dagster pipeline itself, on real Imagenette + Caltech-101.
# The data (../shared/data) does not travel, so it goes as a tar in 4 parts of < 60 MiB, one per
# back-to-back call, into /tmp/zf (kept while the machine is warm). Code runs from .carry/src, a
# `git archive HEAD` (what is committed, whatever the working tree holds).
#   bash benchmarks/device_reproduce.sh prepare          here (no device): .carry/part_a{a..d}, .carry/src, .whl
#   bash benchmarks/device_reproduce.sh setup            carry .whl .carry/src (installs the wheels)
#   bash benchmarks/device_reproduce.sh smoke            carry .whl .carry/small .carry/src
#   bash benchmarks/device_reproduce.sh stage PART [x]   carry .whl .carry/src .carry/PART; x: unpack after
#   bash benchmarks/device_reproduce.sh run SELECTION    carry .whl .carry/src
set -e -o pipefail
if [ "$1" = prepare ]; then  # here, not on the device: the 4 data parts, the code, the wheels
  S=${ZF_SHARED_DATA:-../shared/data}
  rm -rf .carry/part_a? .carry/src && mkdir -p .carry/src .whl
  tar cf /tmp/zf_repro.tar -C "$S" imagenette caltech101/101_ObjectCategories
  split -n 4 /tmp/zf_repro.tar /tmp/zf_repro_ && rm /tmp/zf_repro.tar
  for p in /tmp/zf_repro_a?; do n=part_${p##*_}; mkdir -p .carry/$n && mv "$p" .carry/$n/$n; done
  git archive HEAD | tar x -C .carry/src
  V() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 "dagster==$(V dagster)" "duckdb==$(V duckdb)" webdataset
  rm -f .whl/numpy-*.whl  # the device has its own
  du -sh .carry/part_a? .carry/src .whl
  exit
fi
export PYTHONUNBUFFERED=1 ZF_DEVICE=cuda
Z=/tmp/zf; mkdir -p $Z/logs $Z/parts
if [ ! -d $Z/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $Z/site .whl/*.whl
fi
export PYTHONPATH=$Z/site
SRC=$(pwd)/.carry/src
# The instance keeps its history under /tmp/zf/home (the repo's dagster.yaml, paths made absolute).
mkdir -p $Z/home && sed "s#base_dir: .dagster_home#base_dir: $Z/home#" $SRC/dagster.yaml > $Z/home/dagster.yaml
export DAGSTER_HOME=$Z/home

materialize() {  # $1 selection, $2 config, $3 log name; env: ZF_* roots
  local t0=$(date +%s)
  (cd $SRC && timeout ${LIMIT:-560} python3 -m dagster asset materialize -m assets --select "$1" -c "$2") 2>&1 \
    | grep --line-buffered -v "Warning\|warnings.warn\|superseded" | tee $Z/logs/$3.log | grep --line-buffered -E \
      "STEP_SUCCESS|STEP_FAILURE|Error|error|final:|epoch [0-9]+/|extracted|cache hit|% \(C=|mined|RUN_" | cut -c1-300 || true
  echo "materialize '$1': $(( $(date +%s) - t0 )) s" | tee -a $Z/logs/times.txt
}

pack() {  # figures, tables, records, logs (no checkpoints, no feature tables) -> $OUT/results.tar.gz
  (cd $Z && find out \( -path '*/_records/*' -o -name '*.png' -o -name '*.md' -o -name '*.csv' -o -name '*.json' \
      -o -name 'runs.parquet' -o -name 'splits.parquet' -o -name 'metrics.parquet' -o -name 'top9.parquet' \) -size -4M \
      -not -path '*/atlas/*' -not -path '*/scratch_*/*/train/*' -not -path '*/scratch_*/*/test/*' > files.txt
   tar czf $OUT/results.tar.gz -T files.txt logs home/dagster.yaml)
  ls -la $OUT
}

case "$1" in
setup)  # the wheels only (then the benchmarks: benchmarks/device_bench.sh)
  nvidia-smi -L; nproc; python3 -c "import torch, dagster, duckdb; print(torch.__version__, dagster.__version__, duckdb.__version__)"
  ;;
smoke)
  nvidia-smi -L; nproc; python3 -c "import torch, dagster, duckdb; print(torch.__version__, dagster.__version__, duckdb.__version__)"
  export ZF_OUTPUT_ROOT=$Z/smoke ZF_IMAGENET_ROOT=$(pwd)/.carry/small/imagenette ZF_CALTECH101_ROOT=$(pwd)/.carry/small/caltech
  materialize '*atlas,*table4' $SRC/benchmarks/reproduce/smoke.yaml smoke
  ;;
stage)
  mv .carry/$2/* $Z/parts/; ls -la $Z/parts; df -h /tmp | tail -1
  if [ "$3" = x ]; then mkdir -p $Z/data && cat $Z/parts/part_* | tar x -C $Z/data && rm -rf $Z/parts; du -sh $Z/data/*; fi
  ;;
run)
  export ZF_OUTPUT_ROOT=$Z/out ZF_IMAGENET_ROOT=$Z/data/imagenette ZF_CALTECH101_ROOT=$Z/data/caltech101
  materialize "$2" $SRC/benchmarks/reproduce/imagenette_caltech101.yaml "run_$(date +%H%M%S)"
  pack
  ;;
esac
