"""Rotary position embedding frequencies, per rope scaling type: the one place that the
PyTorch model (recycle_export.model.rotary) and the fused ONNX Runtime builder's cos/sin
caches (engines.ort_fused.rotary_caches) both read. numpy and the standard library only.

A model config's `rope_scaling` is None (plain rotary) or a dict with "rope_type" and that
type's parameters, as Hugging Face's rope_parameters name them:

    linear    factor                                   (positions divided by factor)
    llama3    factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
    longrope  short_factor (head_dim / 2 numbers), original_max_position_embeddings,
              attention_factor (cos and sin are multiplied by it)
    frequency_factors  factors (head_dim / 2 numbers, each frequency divided by its own):
              llama.cpp's form of llama3 scaling, a GGUF's rope_freqs tensor

longrope (Phi-3's "su") switches to its long factors past original_max_position_embeddings;
a model whose max_seq_len stays within it never does, so only the short factors are kept and
check_scaling refuses a longer max_seq_len. Every other type (yarn, dynamic, ...) is refused
by name.
"""

from __future__ import annotations

import math

import numpy as np

PARAMETERS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "longrope": ("short_factor", "original_max_position_embeddings", "attention_factor"),
    "frequency_factors": ("factors",),
}
FACTOR_LISTS = ("short_factor", "factors")
ROPE_TYPES = ("default", *PARAMETERS)


def check_scaling(scaling, head_dim: int, max_seq_len: int) -> str | None:
    """What is wrong with a `rope_scaling` value (None when nothing is)."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        return f"must be null or an object with 'rope_type', got {scaling!r:.60}"
    rope_type = scaling.get("rope_type")
    if rope_type not in PARAMETERS:
        return (f"rope_type {rope_type!r} is not supported; expected one of {sorted(PARAMETERS)} "
                "(or no rope scaling)")
    expected = set(PARAMETERS[rope_type]) | {"rope_type"}
    if set(scaling) != expected:
        return f"rope_type {rope_type!r} takes exactly the parameters {sorted(expected - {'rope_type'})}, got {sorted(set(scaling) - {'rope_type'})}"
    for key in PARAMETERS[rope_type]:
        value = scaling[key]
        if key in FACTOR_LISTS:
            if not isinstance(value, list) or len(value) != head_dim // 2 or not all(
                    _positive(v) for v in value):
                return f"{key!r} must be {head_dim // 2} positive numbers (head_dim / 2)"
        elif not _positive(value):
            return f"{key!r} must be a positive number, got {value!r}"
    if rope_type == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        return "'high_freq_factor' must exceed 'low_freq_factor'"
    if rope_type == "longrope" and max_seq_len > scaling["original_max_position_embeddings"]:
        return (f"longrope switches to its long factors past original_max_position_embeddings "
                f"({scaling['original_max_position_embeddings']}), which is not implemented: "
                f"max_seq_len {max_seq_len} must not exceed it")
    return None


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def inv_freq(head_dim: int, theta: float, scaling: dict | None) -> np.ndarray:
    """The rotary frequencies, (head_dim / 2,) float32, as transformers computes them for
    the config's rope type (float32 powers; the llama3 blend in float64 on them)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    powers = (np.float32(theta) ** exponents).astype(np.float32)  # theta^(2i/D)
    base = (np.float32(1.0) / powers).astype(np.float32)
    rope_type = "default" if scaling is None else scaling["rope_type"]
    if rope_type == "default":
        return base
    if rope_type == "linear":
        return (base / np.float32(scaling["factor"])).astype(np.float32)
    if rope_type == "frequency_factors":
        return (base / np.asarray(scaling["factors"], dtype=np.float32)).astype(np.float32)
    if rope_type == "longrope":
        factors = np.asarray(scaling["short_factor"], dtype=np.float32)
        return (np.float32(1.0) / (factors * powers)).astype(np.float32)
    # llama3: long wavelengths divided by factor, short ones kept, a smooth blend between.
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    freq = base.astype(np.float64)
    wavelen = 2 * math.pi / freq
    scaled = np.where(wavelen > context / low, freq / factor, freq)
    smooth = (context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= context / high) & (wavelen <= context / low)
    return np.where(medium, blended, scaled).astype(np.float32)


def attention_factor(scaling: dict | None) -> float:
    """The factor cos and sin are multiplied by (1.0 but for longrope)."""
    return float(scaling["attention_factor"]) if scaling and scaling["rope_type"] == "longrope" else 1.0
