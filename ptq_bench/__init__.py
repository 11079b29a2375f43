"""ptq-bench: natively trained BitNet vs post-training-quantized FP16 models."""

import os

__version__ = "0.1.0"

# A one-thread process (OMP_NUM_THREADS=1: a Ray task of one CPU, a pinned run) still factors GPTQ's and QuIP's
# inverse Hessians on 2 threads (`fixed_order.lapack_threads`). OpenMP's default spin-waiting made that 2-thread
# barrier wait for a core another process held: 0.05 s to 15.6 s for the same 100 factorizations of a shrunk
# quickstart, by load. Passive waiting (read once, before torch loads OpenMP) changes only how idle threads wait.
if os.environ.get("OMP_NUM_THREADS") == "1":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
