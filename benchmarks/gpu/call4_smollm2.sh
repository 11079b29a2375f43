#!/bin/bash
# Device call 4 (benchmarks/gpu/README.md), right after call 3 on the same warm machine: the SmolLM2 recipe on
# CUDA in bf16 against the committed CPU rows, its GGUF source already converted by call 3 (/tmp/src).
# Usage: call4_smollm2.sh SECONDS. Output: $OUT/call4.log, and the run's rows so far and manifest (provenance:
# versions, git hash, data hashes) as $OUT/smollm2_cuda_bfloat16.jsonl and $OUT/smollm2_cuda_bfloat16.manifest.json.
source benchmarks/gpu/env.sh
exec > >(tee $OUT/call4.log) 2>&1
date
use_keep
t0=$(date +%s)
timeout $1 python3 benchmarks/gpu_vs_cpu.py recipes/smollm2_ptq.yaml --against results/smollm2_ptq \
  --devices cpu cuda --dtypes auto bfloat16 --out /tmp/gvc --sources /tmp/src
echo "smollm2 bfloat16: exit $? in $(( $(date +%s) - t0 )) s"
R=/tmp/gvc/smollm2_ptq/cuda-bfloat16-0/results
cp $R/results.jsonl $OUT/smollm2_cuda_bfloat16.jsonl 2>/dev/null
cp $R/manifest.json $OUT/smollm2_cuda_bfloat16.manifest.json 2>/dev/null
