#!/bin/bash
# Issue 4 / 6 benchmarks in one device call (after device_reproduce.sh setup, same warm machine):
# extraction vs the compiled forward, and the full-size Caltech-256 probe sweep (fc7), torch on the
# GPU vs scikit-learn on the 16 cores. Logs and JSON land in $OUT.
cd .carry/src && export PYTHONPATH=/tmp/zf/site:$(pwd) PYTHONUNBUFFERED=1
timeout 170 python3 benchmarks/bench_extract.py --device cuda --images 25600 --breakdown 2>&1 | grep -v Warn | tee $OUT/bench_extract.log
timeout 200 python3 benchmarks/bench_transfer.py --device cuda --layer fc7 --kinds svm --sklearn-classes 1 --n-jobs 16 \
  --json $OUT/svm_fc7.json 2>&1 | grep -v Warn | tee $OUT/bench_svm.log | tail -15
timeout 220 python3 benchmarks/bench_transfer.py --device cuda --layer fc7 --kinds softmax --sklearn-splits 1 --n-jobs 16 \
  --json $OUT/softmax_fc7.json 2>&1 | grep -v Warn | tee $OUT/bench_softmax.log | tail -15
