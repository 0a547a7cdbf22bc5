"""The RecycleGPT model: a LLaMA-style base and the recyclable module (docs/design.md section 1).

Positions, the attention mask and the KV cache are explicit arguments and results, so the
ONNX export is a thin wrapper and the reference decoder owns all decoding state. KV layout
per layer: key and value each (B, H_kv, T, D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recycle_export.config import ModelConfig
from runtime import rope

KV = tuple[torch.Tensor, torch.Tensor]  # (key, value), each (B, H_kv, T, D)
# The logit of a token outside the module's draft vocabulary: the lowest float16 value, so
# that it stays finite in every engine precision and no sampler or argmax ever picks it.
MASKED_LOGIT = -65504.0
# The attention score of a masked key: float16's lowest value, not float32's (-3.4e38 becomes
# -inf in float16, and a fully masked row, a left-padding query, then gives NaN that spreads).
# It replaces the score rather than being added to it, so a fully masked row is exactly
# uniform in every precision and engine (an added -65504 would keep the scores' rounding).
MASKED_SCORE = -65504.0


@dataclass
class StepOutput:
    logits: torch.Tensor        # (B, num_logits, V)
    hidden: torch.Tensor        # (B, T, dim): final-normed (the vector fed to the LM head)
    present: list[KV]           # one per layer, past + new positions


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 as LLaMA does, whatever the activation dtype: x^2 overflows
        # float16 past |x| = 256 (SmolLM2's residual stream reaches ~25,000).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary(position_ids: torch.Tensor, cfg: ModelConfig, dtype: torch.dtype) -> KV:
    """cos and sin tables for the given positions: (B, T) -> two (B, 1, T, D).

    The frequencies come from runtime.rope for the config's rope scaling (the fused builder's
    caches read the same). The angles (position x frequency, up to thousands of radians) and
    their cos and sin are float32 whatever the model's dtype: float16 keeps 11 bits, so an
    angle near 4,000 rad would be off by a whole radian. Only the tables, within [-1, 1], are cast."""
    inv_freq = torch.from_numpy(rope.inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))  # (D/2,)
    inv_freq = inv_freq.to(position_ids.device)
    angles = position_ids.float()[..., None] * inv_freq  # (B, T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (B, T, D)
    cos, sin = angles.cos(), angles.sin()
    factor = rope.attention_factor(cfg.rope_scaling)
    if factor != 1.0:  # longrope's attention factor, applied to the tables as transformers does
        cos, sin = cos * factor, sin * factor
    return cos[:, None].to(dtype), sin[:, None].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # rotate_half, (B, H, T, D)
    return x * cos + rotated * sin


def attention_allowed(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """Which keys each query sees, (B, 1, T_new, S) bool, from the padding mask (B, S),
    S = past + new.

    Query i (cache index S - new + i) sees key k when k <= S - new + i and key k is real.
    The others' scores become MASKED_SCORE, finite in every precision, not -inf, so a padding
    query whose row is fully masked yields a uniform (unused) distribution instead of NaN;
    the scores are float32 then, so exp() of a masked entry is exactly 0 beside a real one.
    """
    total = attention_mask.shape[-1]
    key_index = torch.arange(total, device=attention_mask.device)  # (S,)
    query_index = key_index[total - new:]  # (T_new,)
    causal = key_index[None, :] <= query_index[:, None]  # (T_new, S)
    return causal[None, None] & attention_mask[:, None, None, :].bool()  # (B, 1, T_new, S)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        if cfg.qk_norm:  # Qwen3: per-head RMSNorm of queries and keys, before rotary
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, allowed, past: KV) -> tuple[torch.Tensor, KV]:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim)  # (B, T, H_kv, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, D), (B, H_kv, T, D)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k = torch.cat([past[0], k], dim=2)  # (B, H_kv, S, D)
        v = torch.cat([past[1], v], dim=2)  # (B, H_kv, S, D)
        group = self.n_heads // self.n_kv_heads
        k_full = k.repeat_interleave(group, dim=1)  # (B, H, S, D)
        v_full = v.repeat_interleave(group, dim=1)  # (B, H, S, D)
        # Scaled, masked and normalised in float32: float16 graphs keep the softmax exact.
        scores = (q @ k_full.transpose(-1, -2)).float() * self.head_dim ** -0.5  # (B, H, T, S)
        scores = torch.where(allowed, scores, MASKED_SCORE)
        out = torch.softmax(scores, dim=-1).to(q.dtype) @ v_full  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)  # (B, T, H*D)
        return self.o_proj(out), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, allowed, past: KV) -> tuple[torch.Tensor, KV]:
        attn, present = self.self_attn(self.input_layernorm(x), cos, sin, allowed, past)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), present


class Base(nn.Module):
    """The LLaMA decoder. Parameter names follow the Hugging Face layout without the
    `model.` prefix, so checkpoints map one to one."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight


class Recycler(nn.Module):
    """The recyclable module: fuse (h_{j-1}, embed(x_j)), R decoder layers, own final norm.

    draft_tokens (optional, sorted token ids): the module's draft vocabulary. Its LM head
    then scores only these tokens (FR-Spec, Zhao et al. 2025: the most frequent tokens of
    the base's own answers) and gives every other token MASKED_LOGIT. On a 49k vocabulary
    the full LM head is most of the module's cost; the base is untouched.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.vocab_size = cfg.vocab_size
        self.fuse = nn.Linear(2 * cfg.dim, cfg.dim, bias=False)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.recycle_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.register_buffer("draft_tokens", None)

    def set_draft_tokens(self, tokens: torch.Tensor | None, source: str = "draft_tokens") -> None:
        """Restrict the module's LM head to `tokens` (None: the whole vocabulary).

        Raises:
            ValueError: tokens is not a non-empty, sorted, duplicate-free 1-D integer tensor
                of ids in the vocabulary.
        """
        if tokens is not None:
            if tokens.dim() != 1 or tokens.is_floating_point() or not len(tokens):
                raise ValueError(f"{source}: draft tokens must be a non-empty 1-D integer tensor, "
                                 f"got {tuple(tokens.shape)} {tokens.dtype}")
            if bool((tokens[1:] <= tokens[:-1]).any()) or tokens[0] < 0 or tokens[-1] >= self.vocab_size:
                raise ValueError(f"{source}: draft tokens must be sorted distinct ids in 0..{self.vocab_size - 1}")
            tokens = tokens.to(torch.int64)
        self.draft_tokens = tokens


def run_layers(layers, x, position_ids, attention_mask, past: list[KV], cfg: ModelConfig):
    """The shared decoder stack: (B, T, dim) -> (B, T, dim) and the present KV per layer."""
    cos, sin = rotary(position_ids, cfg, x.dtype)
    allowed = attention_allowed(attention_mask, x.shape[1])
    present = []
    for layer, layer_past in zip(layers, past, strict=True):
        x, kv = layer(x, cos, sin, allowed, layer_past)
        present.append(kv)
    return x, present


class RecycleGPT(nn.Module):
    """Base plus recyclable module; the two steps the runtime alternates."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.base = Base(cfg)
        self.recycler = Recycler(cfg)

    def empty_kv(self, n_layers: int, batch: int = 1) -> list[KV]:
        shape = (batch, self.cfg.n_kv_heads, 0, self.cfg.head_dim)
        weight = self.base.embed_tokens.weight
        return [(weight.new_zeros(shape), weight.new_zeros(shape))
                for _ in range(n_layers)]

    def base_step(self, input_ids, position_ids, attention_mask, past: list[KV],
                  num_logits: int = 1) -> StepOutput:
        """Full transformer step on new tokens (B, T); logits for the last num_logits."""
        x = self.base.embed_tokens(input_ids)  # (B, T, dim)
        x, present = run_layers(self.base.layers, x, position_ids, attention_mask, past, self.cfg)
        hidden = self.base.norm(x)  # (B, T, dim)
        return StepOutput(self.logits(hidden, num_logits), hidden, present)

    def recycle_step(self, input_ids, prev_hidden, position_ids, attention_mask,
                     past: list[KV], num_logits: int = 1) -> StepOutput:
        """Recyclable step: x_j (B, T) with h_{j-1} (B, T, dim) -> logits for x_{j+1}.

        The hidden output is g (the module's final-normed state), for chained drafts.
        """
        embedded = self.base.embed_tokens(input_ids)  # (B, T, dim)
        x = self.recycler.fuse(torch.cat([prev_hidden, embedded], dim=-1))  # (B, T, dim)
        x, present = run_layers(self.recycler.layers, x, position_ids, attention_mask, past, self.cfg)
        g = self.recycler.norm(x)  # (B, T, dim)
        return StepOutput(self.logits(g, num_logits, self.recycler.draft_tokens), g, present)

    def logits(self, hidden: torch.Tensor, num_logits, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """LM head on the last num_logits positions: (B, T, dim) -> (B, N, V); with `tokens`
        (K ids), only those are scored and the rest get MASKED_LOGIT.

        Applied to a 2-D view so that ONNX gets Gemm(transB=1) on the very weight the
        embedding gathers from; a 3-D MatMul would make the exporter store a transposed
        copy of a tied (V, dim) matrix. With tokens, the exporter folds weight[tokens] into
        a (K, dim) initializer of its own.
        """
        last = hidden[:, hidden.shape[1] - num_logits:]  # (B, N, dim)
        b, n, d = last.shape
        flat = last.reshape(b * n, d)  # (BN, dim)
        if tokens is None:
            return self.base.lm_head(flat).view(b, n, self.cfg.vocab_size)  # (B, N, V)
        scores = F.linear(flat, self.base.lm_head.weight[tokens])  # (BN, K)
        masked = scores.new_full((b * n, self.cfg.vocab_size), MASKED_LOGIT)  # (BN, V)
        return masked.scatter(1, tokens.expand(b * n, -1), scores).view(b, n, self.cfg.vocab_size)
