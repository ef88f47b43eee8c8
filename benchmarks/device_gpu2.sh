#!/bin/bash
# 2-GPU call (issue 9): DDP img/s on 1 vs 2 GPUs, the accuracy curve at one global batch on 1 vs 2 GPUs,
# and feature extraction split over the 2 GPUs against one process. Data: the carried .carry/p4/d.
export PYTHONUNBUFFERED=1 PYTHONPATH=$(pwd) NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.carry/p4/d; R=/dev/shm
nvidia-smi -L; nvidia-smi topo -m | head -4
filt() { grep -v -i warn | tee -a $OUT/$1; }
[ -n "$SKIP_DDP" ] || for cfg in "1 128" "2 128" "2 64"; do set -- $cfg
  timeout 120 torchrun --standalone --nproc-per-node $1 benchmarks/bench_ddp.py --shards $D/train --mean $D/pixel_mean.npy --batch $2 --steps 100 --warmup 20 2>&1 | filt ddp.log
done
common="--shards $D/train --val-shards $D/val --mean $D/pixel_mean.npy --arch ours --init kaiming --input-scale 0.015625 --loader cache --epochs ${EPOCHS:-10} --log-every 0"
timeout 120 python3 -m zf_pipeline.train $common --out $R/run1 --batch-size 128 2>&1 | filt curve1.log
[ -n "$SKIP_2GPU_CURVE" ] || timeout 150 torchrun --standalone --nproc-per-node 2 -m zf_pipeline.train $common --out $R/run2 --batch-size 64 2>&1 | filt curve2.log
cp $R/run1/metrics.jsonl $OUT/metrics_1gpu.jsonl; cp $R/run2/metrics.jsonl $OUT/metrics_2gpu.jsonl 2>/dev/null
[ -z "$DIAGNOSE" ] || timeout 100 python3 benchmarks/diagnose_extract.py --checkpoint $R/run1/last.pt --shards $D/train --mean $D/pixel_mean.npy --input-scale 0.015625 $DIAGNOSE 2>&1 | filt diagnose.log
fx="extract --checkpoint $R/run1/last.pt --shards $D/train --mean $D/pixel_mean.npy --split train --crop 224 --input-scale 0.015625 ${FX_AMP---bf16} $FX_LAYERS"
for n in 1 2; do
  s=$SECONDS; timeout 120 torchrun --standalone --nproc-per-node $n -m zf_pipeline.features $fx --out $R/feat$n 2>&1 | filt features.log
  echo "features world $n: $((SECONDS - s)) s wall (torchrun start, model load, pass)" | filt features.log
  python3 -m zf_pipeline.features merge --out $R/feat$n 2>&1 | filt features.log
done
timeout 90 python3 benchmarks/compare_extractions.py $R/feat1 $R/feat2 2>&1 | tee -a $OUT/features.log
