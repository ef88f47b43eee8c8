#!/bin/bash
# 1-GPU call A (docs/results/training.md, "Closing the gap"): the training benchmark with the
# augmentation compiled, from the carried subset .carry/p4/d (6 train shards, 3,072 images).
export PYTHONUNBUFFERED=1 PYTHONPATH=$(pwd)
D=.carry/p4/d
nvidia-smi -L; nproc; python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"
timeout 420 python3 benchmarks/bench_train.py --shards $D/train --mean $D/pixel_mean.npy \
  --modes cache cache+aug cache+fused cache+graph --json $OUT/bench_train.json 2>&1 | grep -v Warning | tee $OUT/bench_train.log
