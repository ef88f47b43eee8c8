#!/bin/bash
# The full-size rehearsal on one GPU machine: ImageNet-size data generated from real photographs, then
# the Dagster assets (shards, mean, one epoch of zfnet_model on the streaming loader, val features, top9,
# fig8), each stage timed with its peak GPU / host memory and disk (docs/results/scale.md).
#
#   bash benchmarks/rehearsal.sh prepare        here: .whl/ (dagster, duckdb, webdataset) and .carry/photos/
#   bash benchmarks/rehearsal.sh start          on the device (carry .whl .carry/photos): installs, starts the
#                                               driver in its own session, waits up to WAIT s (default 560)
#   bash benchmarks/rehearsal.sh wait           on the device, back to back: waits, prints progress, packs $OUT
#
# The driver outlives each call (setsid); the machine stays while calls follow each other within its idle
# limit. Every stage is resumable (the generator skips written files, the assets are content-cached), so
# a lost machine costs the stages not yet done. Sizes: TRAIN (1,281,167), VAL (50,000), UNIQUE (distinct
# generated originals; the other train entries are hard links to them, so 1.28M entries fit a 64 GB disk).
set -o pipefail
Z=${ZF_REHEARSAL:-/tmp/zf}
TRAIN=${TRAIN:-1281167} VAL=${VAL:-50000} UNIQUE=${UNIQUE:-100000} EPOCHS=${EPOCHS:-1} WIDTH=${WIDTH:-0}
REPO=$(cd "$(dirname "$0")/.." && pwd)

if [ "$1" = prepare ]; then
  S=${ZF_SHARED_DATA:-../shared/data}
  rm -rf .carry/photos && mkdir -p .carry/photos .whl
  take() {  # $1 photos from each folder $2...: ~1,000 photos, ~13 MB (the carry limit is 64 MiB with the wheels)
    local n=$1; shift
    for d in "$@"; do mkdir -p ".carry/photos/$(basename "$d")"; ls "$d" | head -"$n" | while read -r f; do cp "$d/$f" ".carry/photos/$(basename "$d")/"; done; done
  }
  take 80 "$S"/imagenette/train/*/
  take 2 "$S"/caltech101/101_ObjectCategories/*/
  V() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 "dagster==$(V dagster)" "duckdb==$(V duckdb)" webdataset
  # What the device's image already has (KINDS.md) stays behind: the carry limit is 64 MiB.
  (cd .whl && rm -f numpy-* grpcio-1* protobuf-* pyyaml-* pygments-* rich-* jinja2-* markupsafe-* requests-* \
    urllib3-* idna-* certifi-* charset_normalizer-* click-* filelock-* fsspec-* packaging-* six-* tqdm-* \
    typing_extensions-* tabulate-* markdown_it_py-* mdurl-*)
  du -sh .carry/photos .whl
  exit
fi

export PYTHONUNBUFFERED=1 ZF_DEVICE=${ZF_DEVICE:-cuda} PYTHONPATH=$Z/site:$REPO
export ZF_OUTPUT_ROOT=$Z/out ZF_IMAGENET_ROOT=$Z/imagenet DAGSTER_HOME=$Z/home
mkdir -p $Z/logs $Z/home $Z/results

sample() {  # every 2 s: time, GPU MiB used, host MiB used, disk MiB used under $Z
  while :; do
    echo "$(date +%s.%N) $(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1 || echo 0)" \
         "$(free -m | awk '/Mem:/{print $3}') $(df -m $Z | awk 'NR==2{print $3}')" >> $Z/logs/samples.txt
    sleep 2
  done
}

stage() {  # $1 name, $2... command: runs once (a done marker), logs, appends its time window to stages.txt
  local name=$1; shift
  [ -f $Z/logs/$name.done ] && return 0
  echo "== $name: $*" | tee -a $Z/logs/driver.log
  local t0=$(date +%s.%N)
  if "$@" > $Z/logs/$name.log 2>&1; then
    echo "$name $t0 $(date +%s.%N)" >> $Z/logs/stages.txt && touch $Z/logs/$name.done
    echo "== $name done in $(awk "BEGIN{print $(date +%s.%N) - $t0}") s" | tee -a $Z/logs/driver.log
  else
    echo "$name $t0 $(date +%s.%N) failed" >> $Z/logs/stages.txt
    echo "== $name FAILED (log: $Z/logs/$name.log)" | tee -a $Z/logs/driver.log; tail -30 $Z/logs/$name.log >> $Z/logs/driver.log
    return 1
  fi
}

materialize() {  # $1 selection, $2 run config (YAML text)
  echo "$2" > $Z/run_config.yaml
  (cd $REPO && python3 -m dagster asset materialize -m assets --select "$1" -c $Z/run_config.yaml)
}

drive() {
  sample & SAMPLER=$!
  trap 'kill $SAMPLER' EXIT
  stage generate python3 $REPO/benchmarks/make_imagenet_like.py --sources $REPO/.carry/photos --out $Z/imagenet \
      --train $TRAIN --val $VAL --unique $UNIQUE --workers $(nproc) &&
  stage bench_sharding python3 $REPO/benchmarks/bench_sharding.py --sources $REPO/.carry/photos --like 2000 \
      --workers 1 $(nproc) --per-worker 1000 --json $Z/results/bench_sharding.json &&
  stage shards materialize 'source_images,imagenet_train_shards,imagenet_val_shards,pixel_mean_image' '{}' &&
  stage bench_train python3 $REPO/benchmarks/bench_train.py --shards "$(ls -d $Z/out/imagenet_train_shards/*/ | head -1)" \
      --mean "$(ls $Z/out/pixel_mean/*/pixel_mean.npy | head -1)" --archs ours --modes stream+aug --workers $(( $(nproc) - 2 )) --device $ZF_DEVICE \
      --steps 400 --json $Z/results/bench_train_imagenet.json $BENCH_FLAGS &&
  # Its labels carry no meaning, so the blocking 'learned' check may fail: the next stage runs in its own run.
  stage train materialize 'zfnet_model' "ops: {zfnet_model: {config: {epochs: $EPOCHS, init: kaiming, warmup_epochs: 0, width: $WIDTH}}}"
  stage features materialize "$(printf 'features/imagenet_val/%s,' conv1 conv2 conv3 conv4 conv5 fc6 fc7)top9,fig8" '{}'
  echo "== driver finished" | tee -a $Z/logs/driver.log
}

report() {  # the per-stage table and scale.json's rehearsal part, and everything small, into $OUT
  python3 $REPO/benchmarks/rehearsal_report.py $Z > $Z/results/rehearsal.md 2>&1
  cat $Z/results/rehearsal.md
  if [ -n "$OUT" ]; then
    cp $Z/results/*.json $Z/results/*.md $OUT/ 2>/dev/null
    (cd $Z && tar czf $OUT/logs.tar.gz logs home/dagster.yaml 2>/dev/null \
       $(find out -name '*.png' -size -3M 2>/dev/null | head -20) $(find out -path '*/_records/*' 2>/dev/null) \
       $(find out/train \( -name metrics.jsonl -o -name result.json \) 2>/dev/null))
  fi
}

case "$1" in
start)
  nvidia-smi -L; nproc; df -h $Z 2>/dev/null || df -h /tmp
  [ -d $Z/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $Z/site $REPO/.whl/*.whl
  sed "s#base_dir: .dagster_home#base_dir: $Z/home#" $REPO/dagster.yaml > $Z/home/dagster.yaml
  python3 -c "import torch, dagster, duckdb; print(torch.__version__, dagster.__version__, duckdb.__version__)" || exit 1
  setsid nohup bash $0 drive > $Z/logs/nohup.txt 2>&1 < /dev/null &
  ;&
wait)
  end=$(( $(date +%s) + ${WAIT:-560} ))
  while [ $(date +%s) -lt $end ] && ! grep -q "driver finished" $Z/logs/driver.log 2>/dev/null; do sleep 10; done
  tail -5 $Z/logs/driver.log; for f in $Z/logs/*.log; do echo "-- $(basename $f): $(tail -c 300 $f | tr '\r\n' '  ' | tail -c 200)"; done
  report
  ;;
drive) drive ;;
*) echo "usage: $0 prepare|start|wait" >&2; exit 2 ;;
esac
