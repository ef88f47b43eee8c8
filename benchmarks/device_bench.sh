#!/bin/bash
# Issue 4 / 6 benchmarks in one device call (needs only .carry/src, from device_reproduce.sh prepare):
# extraction vs the compiled forward, and the full-size Caltech-256 softmax sweep (fc7), torch on the GPU
# in three precisions vs scikit-learn on the 16 cores. Logs and JSON land in $OUT.
cd .carry/src && export PYTHONPATH=$(pwd) PYTHONUNBUFFERED=1
timeout 170 python3 benchmarks/bench_extract.py --device cuda --images 25600 --breakdown 2>&1 | grep -v Warn | tee $OUT/bench_extract.log
timeout 240 python3 benchmarks/bench_transfer.py --device cuda --layer fc7 --kinds softmax --sklearn-splits 1 --n-jobs 16 \
  --dtype float64 float32 tf32 --profile --json $OUT/softmax_fc7.json 2>&1 | grep -v Warn | tee $OUT/bench_softmax.log | tail -25
