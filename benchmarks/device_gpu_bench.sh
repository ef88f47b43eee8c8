#!/bin/bash
# 1-GPU call B: extraction (issue 4), deconvnet + occlusion (issue 5), transfer probe sweep (issue 6).
# captum (the deconv baseline) is not on the device: carry .whl (captum-0.9.0-py3-none-any.whl).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1 PYTHONPATH=$(pwd):/tmp/site
nvidia-smi -L
timeout 130 python3 benchmarks/bench_extract.py --device cuda 2>&1 | grep -v Warning | tee $OUT/extract.log
timeout 200 python3 benchmarks/bench_deconv.py --device cuda --variant krizhevsky 2>&1 | grep -v Warning | tee $OUT/deconv.log
timeout 140 python3 benchmarks/bench_transfer.py --device cuda --scale 0.5 --kinds softmax --sklearn-splits 1 \
  --json $OUT/transfer_softmax.json 2>&1 | grep -v -i warn | tee $OUT/transfer_softmax.log
timeout 90 python3 benchmarks/bench_transfer.py --device cuda --scale 0.1 --kinds svm --sklearn-splits 1 \
  --json $OUT/transfer_svm.json 2>&1 | grep -v -i warn | tee $OUT/transfer_svm.log
