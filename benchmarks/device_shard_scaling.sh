#!/bin/bash
# Sharding throughput vs worker count on the device machine's 16 cores (issue 2: "it scales with cores").
# Carries .carry/shardbench (4,000 Imagenette JPEGs: a subset that fits one call).
export PYTHONUNBUFFERED=1
nproc; python3 -c "import PIL, pyarrow; print('pillow', PIL.__version__, 'pyarrow', pyarrow.__version__)"
PYTHONPATH=. python3 benchmarks/bench_sharding.py --root .carry/shardbench/imagenette --workers 1 2 4 8 16 --repeats 1 2>&1 | tee $OUT/shard_scaling.log
# Extraction with the host-side writer changes (docs/results/extraction.md, run C).
timeout 150 python3 benchmarks/bench_extract.py --device cuda --images 25600 --breakdown 2>&1 | grep -v Warning | tee $OUT/extract.log
