"""Tiny random models of each supported family, built with transformers' own config and
model classes (the oracle), and the same weights written as a GGUF file with the gguf
package under the architecture's key and tensor names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB, DIM, LAYERS, HEADS, KV_HEADS, FFN, HEAD_DIM = 96, 64, 2, 4, 2, 128, 16
COMMON = dict(vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
              num_key_value_heads=KV_HEADS, intermediate_size=FFN, rms_norm_eps=1e-5,
              max_position_embeddings=128, attn_implementation="eager", bos_token_id=0, eos_token_id=2)
# Within the tiny max_seq_len, so that every rope band is exercised: llama3's wavelengths
# for theta 10000 and head_dim 16 run from 6 to 20,000 positions.
ORIGINAL_CONTEXT = 64
SHORT_FACTOR = [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0, 4.0]  # head_dim / 2 factors

FAMILIES = {
    # Llama 3.2: llama3 rope scaling, tied head.
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": ORIGINAL_CONTEXT})),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True, rope_parameters={
        "rope_type": "default", "rope_theta": 1000000.0})),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(tie_word_embeddings=True, head_dim=HEAD_DIM)),
    # The window bounds max_seq_len (64 of 128 positions).
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(tie_word_embeddings=False, head_dim=HEAD_DIM,
                                                             sliding_window=64)),
    # Phi-3 mini 128k's scaling: longrope, used within its original context.
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(
        tie_word_embeddings=False, original_max_position_embeddings=ORIGINAL_CONTEXT, pad_token_id=1,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": SHORT_FACTOR,
                         "long_factor": [f * 2 for f in SHORT_FACTOR],
                         "original_max_position_embeddings": ORIGINAL_CONTEXT, "factor": 2.0})),
}


def hf_model(family: str, seed: int = 0):
    """The family's tiny transformers model, weights large enough (std 0.2) for logits to spread."""
    import torch
    import transformers

    config_class, model_class, extra = FAMILIES[family]
    config = getattr(transformers, config_class)(**COMMON, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def save_hf(model, folder: Path) -> Path:
    """A Hugging Face directory, sharded into several safetensors files."""
    model.save_pretrained(folder, max_shard_size="60KB")
    assert len(list(Path(folder).glob("*.safetensors"))) > 1
    return folder


def _permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k permutation for the llama architecture (two halves -> interleaved pairs)."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


GGUF_ARCH = {"llama3": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama", "phi3": "phi3"}
LAYER_TENSORS = {  # HF name under model.layers.{i}. -> GGUF name under blk.{i}.
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias", "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight", "self_attn.qkv_proj.weight": "attn_qkv.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.gate_up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}


def write_gguf(model, family: str, path: Path) -> Path:
    """The transformers model as a float32 GGUF file, as llama.cpp's converter names it."""
    import gguf

    arch = GGUF_ARCH[family]
    cfg = model.config
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    if getattr(cfg, "sliding_window", None):
        writer.add_sliding_window(cfg.sliding_window)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([chr(c) for c in range(33, 127)] + ["ab", "<|end|>"])
    writer.add_token_merges(["a b"])
    writer.add_token_types([1] * 95 + [3])
    writer.add_eos_token_id(2)
    tensors = {"token_embd.weight": state["model.embed_tokens.weight"],
               "output_norm.weight": state["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        tensors["output.weight"] = state["lm_head.weight"]
    rope = cfg.rope_parameters
    if rope.get("rope_type") == "llama3":  # llama.cpp stores the per-frequency divisors
        from runtime.rope import inv_freq

        plain = inv_freq(HEAD_DIM, rope["rope_theta"], None)
        scaled = inv_freq(HEAD_DIM, rope["rope_theta"], {k: rope[k] for k in (
            "rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")})
        tensors["rope_freqs.weight"] = (plain / scaled).astype(np.float32)
    if rope.get("rope_type") == "longrope":
        import math

        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        factor = rope["factor"]
        writer.add_float32(f"{arch}.rope.scaling.attn_factor",
                           math.sqrt(1 + math.log(factor) / math.log(rope["original_max_position_embeddings"])))
        tensors["rope_factors_short.weight"] = np.asarray(rope["short_factor"], np.float32)
        tensors["rope_factors_long.weight"] = np.asarray(rope["long_factor"], np.float32)
    for name, value in state.items():
        if not name.startswith("model.layers."):
            continue
        i, rest = name.removeprefix("model.layers.").split(".", 1)
        if arch == "llama" and rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
            value = _permute(value, cfg.num_attention_heads if "q_proj" in rest else cfg.num_key_value_heads)
        tensors[f"blk.{i}.{LAYER_TENSORS[rest]}"] = value
    for name, value in tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
