"""Write one of our checkpoints as a Hugging Face LlamaForCausalLM folder (the peer's model
builder reads only that), then check that transformers loads it and agrees with our model.

    python benchmarks/peer_hf_folder.py --model build/smollm2 --out build/peer/hf

The folder holds config.json, model.safetensors (the base model only; the recyclable module
has no Hugging Face counterpart), tokenizer.json, tokenizer_config.json (with the chat
template) and generation_config.json. Runs offline: transformers reads only the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from recycle_export.checkpoint import Checkpoint, load_checkpoint  # noqa: E402

LOGIT_TOLERANCE = 1e-3  # float32 on both sides; the implementations order reductions differently


def hf_config(ckpt: Checkpoint) -> dict:
    cfg, gen = ckpt.config, ckpt.generation
    other = [f for f in ("qkv_bias", "qk_norm", "rope_scaling", "sliding_window") if getattr(cfg, f)]
    if other:
        raise SystemExit(f"the peer folder is a LLaMA one; this checkpoint sets {', '.join(other)}")
    eos = list(gen.eos_token_ids)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "intermediate_size": cfg.ffn_dim, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": None,
        "max_position_embeddings": cfg.max_seq_len, "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
        "bos_token_id": gen.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": gen.pad_token_id, "use_cache": True}


def tokenizer_config(ckpt: Checkpoint) -> dict:
    """GPT2Tokenizer names the byte-level BPE for onnxruntime-extensions, which the peer's
    tokenizer uses; transformers reads tokenizer.json either way."""
    tokens = {t["id"]: t for t in json.loads(ckpt.tokenizer_json)["added_tokens"]}
    gen = ckpt.generation

    def content(token_id):
        return tokens[token_id]["content"] if token_id in tokens else None

    return {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": ckpt.config.max_seq_len,
        "add_prefix_space": False, "clean_up_tokenization_spaces": False,
        "bos_token": content(gen.bos_token_id), "eos_token": content(gen.eos_token_ids[0]),
        "pad_token": content(gen.pad_token_id), "unk_token": content(0),
        "additional_special_tokens": [t["content"] for t in tokens.values() if t["special"]],
        "chat_template": gen.chat_template}


def write_folder(ckpt: Checkpoint, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    gen = ckpt.generation
    base = {f"model.{k}": v.contiguous() for k, v in ckpt.model.base.state_dict().items()}
    if ckpt.config.tie_embeddings:
        del base["model.lm_head.weight"]  # tied to model.embed_tokens.weight
    else:
        base["lm_head.weight"] = base.pop("model.lm_head.weight")
    save_file(base, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(ckpt), indent=2) + "\n")
    (out / "tokenizer.json").write_text(ckpt.tokenizer_json)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(ckpt), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": gen.bos_token_id, "eos_token_id": list(gen.eos_token_ids),
         "pad_token_id": gen.pad_token_id, "do_sample": False}, indent=2) + "\n")


def check_folder(ckpt: Checkpoint, out: Path) -> float:
    """Max |logit difference| between transformers on the folder and our model on a chat
    prompt. Raises: SystemExit when transformers disagrees or tokenizes differently."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Explain how a refrigerator works."}],
                                        add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True,
                                                           dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        expected = hf(x).logits  # (1, T, V)
        ours = ckpt.model.eval().base_step(x, torch.arange(x.shape[1])[None], torch.ones_like(x),
                                           ckpt.model.empty_kv(ckpt.config.n_layers), num_logits=x.shape[1]).logits
    diff = float((ours - expected).abs().max())
    print(f"transformers {transformers.__version__} loads {out}: {len(ids)} prompt tokens, "
          f"max |logit difference| vs our model {diff:.2e}, greedy next token {int(expected[0, -1].argmax())} "
          f"(ours {int(ours[0, -1].argmax())})")
    if diff > LOGIT_TOLERANCE:
        raise SystemExit(f"transformers disagrees with our model by {diff:.2e} > {LOGIT_TOLERANCE}")
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="our checkpoint (cli.py import-gguf's output)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    ckpt = load_checkpoint(Path(args.model))
    write_folder(ckpt, Path(args.out))
    check_folder(ckpt, Path(args.out))


if __name__ == "__main__":
    main()
