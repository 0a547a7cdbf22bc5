"""The model families a Hugging Face directory may hold, and what each changes in a LLaMA
layer (README's family table):

    llama    Llama 2 / 3.x, SmolLM: rope scaling default, linear or llama3; tied or untied head
    mistral  LLaMA layers; a sliding window (max_seq_len is kept within it)
    qwen2    Qwen2 / 2.5: biases on the q, k and v projections
    qwen3    Qwen3: RMSNorm over each query and key head, before rotary
    phi3     Phi-3 / 3.5 mini: fused qkv and gate/up projections (split on load), longrope

What a family has that the model does not implement (a mixture of experts, soft-capping,
biases elsewhere, partial rotary, yarn or dynamic rope, ...) is refused with an error that
names the config field.
"""

from __future__ import annotations

import math
from typing import Callable

from recycle_export.config import ModelConfig
from runtime.errors import ConfigError

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
# The largest max_seq_len an import picks by default: the runtime's KV pool is sized for it,
# and most edge deployments use far less than a model's trained context.
DEFAULT_MAX_SEQ_LEN = 2048
# HF config fields that name something the model does not implement, and the value that
# means "absent". A field missing from a config counts as absent.
UNSUPPORTED_FIELDS = {
    "num_experts": (None, 0), "num_local_experts": (None, 0), "n_routed_experts": (None, 0),
    "attn_logit_softcapping": (None,), "final_logit_softcapping": (None,),
    "mlp_bias": (None, False), "hidden_act": (None, "silu"), "hidden_activation": (None, "silu"),
}
ATTENTION_BIAS_ABSENT = (None, False)  # llama, mistral, qwen3: a bias on o_proj too


def _refuse_unsupported(hf: dict, source: str) -> None:
    for field, absent in UNSUPPORTED_FIELDS.items():
        if hf.get(field) not in absent:
            raise ConfigError(f"{source}: config field {field!r} is {hf[field]!r}, which this model does not "
                              f"implement (supported: {absent[-1]!r})")
    types = hf.get("layer_types")
    if types is not None:
        other = sorted(set(types) - {"full_attention", "sliding_attention"})
        if other:
            raise ConfigError(f"{source}: config field 'layer_types' holds {other}, which this model does not "
                              "implement (supported: full_attention, sliding_attention within the window)")


def rope_scaling_from_hf(hf: dict, source: str) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling in runtime.rope's form) from a config's rope_parameters
    (transformers 5) or rope_theta and rope_scaling (earlier versions).

    Raises:
        ConfigError: partial rotary, or a rope type runtime.rope does not implement.
    """
    params = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    for partial in (params.get("partial_rotary_factor"), hf.get("partial_rotary_factor")):
        if partial not in (None, 1, 1.0):
            raise ConfigError(f"{source}: config field 'partial_rotary_factor' is {partial!r}; only full "
                              "rotary (1.0) is implemented")
    rope_type = params.get("rope_type") or params.get("type") or "default"
    rope_type = {"su": "longrope"}.get(rope_type, rope_type)  # Phi-3's earlier name
    try:
        if rope_type == "default":
            return theta, None
        if rope_type == "linear":
            return theta, {"rope_type": "linear", "factor": float(params["factor"])}
        if rope_type == "llama3":
            return theta, {"rope_type": "llama3", "factor": float(params["factor"]),
                           "low_freq_factor": float(params["low_freq_factor"]),
                           "high_freq_factor": float(params["high_freq_factor"]),
                           "original_max_position_embeddings": int(params["original_max_position_embeddings"])}
        if rope_type == "longrope":
            original = int(params.get("original_max_position_embeddings")
                           or hf["original_max_position_embeddings"])
            factor = params.get("factor") or hf.get("max_position_embeddings", original) / original
            attention = params.get("attention_factor")
            if attention is None:  # transformers' default (the LongRoPE paper's)
                attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
            return theta, {"rope_type": "longrope", "short_factor": [float(v) for v in params["short_factor"]],
                           "original_max_position_embeddings": original, "attention_factor": float(attention)}
    except KeyError as exc:
        raise ConfigError(f"{source}: rope type {rope_type!r} needs the parameter {exc.args[0]!r}") from None
    raise ConfigError(f"{source}: config field 'rope_type' is {rope_type!r}, which is not implemented; "
                      "supported: default, linear, llama3, longrope (su)")


def _sliding_window(hf: dict, family: str) -> int | None:
    if family in ("qwen2", "qwen3") and not hf.get("use_sliding_window"):
        return None  # the window is configured but off
    if family in ("mistral", "phi3", "qwen2", "qwen3"):
        return hf.get("sliding_window")
    return None


def config_from_hf(hf: dict, source: str) -> ModelConfig:
    """Map a Hugging Face config dict (model_type one of FAMILIES) onto ModelConfig,
    refusing what the model does not implement. max_seq_len is the trained context, at most
    DEFAULT_MAX_SEQ_LEN and within a sliding window.

    Raises:
        ConfigError: another architecture, an unsupported field (named), or an invalid value.
    """
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise ConfigError(f"{source}: model_type {family!r} is not supported; expected one of {', '.join(FAMILIES)}")
    _refuse_unsupported(hf, source)
    if family != "qwen2" and hf.get("attention_bias") not in ATTENTION_BIAS_ABSENT:
        raise ConfigError(f"{source}: config field 'attention_bias' is true; biases on every attention "
                          "projection (o_proj included) are not implemented")
    theta, rope_scaling = rope_scaling_from_hf(hf, source)
    window = _sliding_window(hf, family)
    try:
        max_seq_len = min(int(hf.get("max_position_embeddings", DEFAULT_MAX_SEQ_LEN)), DEFAULT_MAX_SEQ_LEN)
        if rope_scaling and rope_scaling["rope_type"] == "longrope":
            max_seq_len = min(max_seq_len, rope_scaling["original_max_position_embeddings"])
        return ModelConfig(
            vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            ffn_dim=hf["intermediate_size"], head_dim=hf.get("head_dim"),
            rope_theta=theta, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=max_seq_len if window is None else min(max_seq_len, window),
            qkv_bias=family == "qwen2", qk_norm=family == "qwen3",
            rope_scaling=rope_scaling, sliding_window=window)
    except KeyError as exc:
        raise ConfigError(f"{source}: missing required config field {exc.args[0]!r}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def unfuse(items: dict, cfg: ModelConfig, split: Callable) -> dict:
    """Phi-3's fused projections as the model's separate ones: qkv_proj -> q_proj, k_proj,
    v_proj and gate_up_proj -> gate_proj, up_proj (gate first). `items` maps tensor names to
    tensors or shapes; split(item, sizes) cuts one along its first dimension."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    fused = {"self_attn.qkv_proj.weight": (("q_proj", "k_proj", "v_proj"), (q, kv, kv)),
             "mlp.gate_up_proj.weight": (("gate_proj", "up_proj"), (cfg.ffn_dim, cfg.ffn_dim))}
    out = {}
    for name, item in items.items():
        suffix = next((s for s in fused if name.endswith(s)), None)
        if suffix is None:
            out[name] = item
            continue
        parts, sizes = fused[suffix]
        prefix = name[:-len(suffix)] + suffix.split(".")[0] + "."
        out.update(zip((f"{prefix}{p}.weight" for p in parts), split(item, sizes, name)))
    return out
