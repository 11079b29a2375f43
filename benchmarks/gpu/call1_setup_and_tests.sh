#!/bin/bash
# Device call 1 (benchmarks/gpu/README.md): install the carried wheels and data under /root/keep (kept while the machine stays warm),
# time GPTQ's column loop and BitLinear's float path on CUDA (gptq_loop.py, bitlinear_kernel.py --float-path), then, with the argument `tests`, the prepared GPU tests
# (pytest -m gpu; 210 s on 2026-12-04, all passed). Usage: call1_setup_and_tests.sh [tests]. Output: $OUT/call1.log
source benchmarks/gpu/env.sh
exec > >(tee $OUT/call1.log) 2>&1
date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
cp -r .gpudata/data $K/
t0=$(date +%s)
install .whl/*.whl || exit 3
echo "install $(( $(date +%s) - t0 )) s"
use_keep
python3 - <<'PY'
import torch, transformers, lm_eval, datasets, gguf, pyarrow, huggingface_hub
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
print("transformers", transformers.__version__, transformers.__file__)
print("pyarrow", pyarrow.__version__, "datasets", datasets.__version__, "hub", huggingface_hub.__version__)
import ptq_bench.cli, ptq_bench.eval.harness  # noqa
print("imports ok")
PY
timeout 120 python3 benchmarks/gptq_loop.py --device cuda
timeout 60 python3 benchmarks/bitlinear_kernel.py --tiny --float-path --device cuda --mode b158
[ "${1:-}" = tests ] || exit 0
t0=$(date +%s)
timeout 420 python3 -m pytest -m gpu -p no:cacheprovider -q -s -rs tests/test_gpu.py tests/test_calib_memory.py
echo "pytest exit $? in $(( $(date +%s) - t0 )) s"
