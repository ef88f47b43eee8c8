#!/bin/bash
# The one device call of docs/results/training.md: unpack the staged Imagenette shards, run the
# benchmark table, then train "ours" from scratch (the paper's plateau schedule, He init).
# Expects /tmp/stage/part_aa (staged by the previous call) and .carry/p2/part_ab, part_ac.
export PYTHONUNBUFFERED=1
REPO=$(pwd)
cp .carry/p2/* /tmp/stage/ && (cd /tmp/stage && cat part_a? | tar xz) || exit 1
D=/tmp/stage/imagenette; rm -rf /dev/shm/run_*
nvidia-smi -L; nproc; python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"
PYTHONPATH=$REPO timeout 280 python3 benchmarks/bench_train.py --shards $D/train --mean $D/pixel_mean.npy --json $OUT/bench.json 2>&1 \
  | grep -v Warning | tee $OUT/bench.log
common="--shards $D/train --val-shards $D/val --mean $D/pixel_mean.npy --arch ours --init kaiming
  --input-scale 0.015625 --loader cache --compile --log-every 0 --workers 8"
timeout 240 python3 -m zf_pipeline.train $common --out /dev/shm/run_plateau --epochs 70 --patience 4 2>&1 \
  | grep -v Warning | tee $OUT/train_plateau.log
cd /dev/shm && tar cf $OUT/runs.tar run_plateau/{metrics.jsonl,metrics.parquet,result.json,learning_curve.png}
cat /dev/shm/run_*/result.json
