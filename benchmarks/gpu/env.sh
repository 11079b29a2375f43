# Sourced by the device calls (benchmarks/gpu/README.md): the carried packages and data live under $K while
# the machine stays warm; `install WHEEL...` adds wheels there, `use_keep` points Python and ptq-bench at them.
K=/root/keep
mkdir -p $K

install() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $K/site "$@"
}

use_keep() {
  export PYTHONPATH=$K/site:$PWD PTQ_BENCH_DATA=$K/data PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1
}
