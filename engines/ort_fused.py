"""Fused graphs for ONNX Runtime (CPU), contract inplace-kv-v1, emitted from an export's
weights with onnx.helper as onnxruntime-genai's builder does (onnx and numpy only).

Per decoder layer: (Skip)SimplifiedLayerNormalization (residual add fused into the RMSNorm),
one packed QKV MatMul, com.microsoft GroupQueryAttention (rotary inside, KV written in place
into a fixed-capacity buffer), o_proj, (Skip)SimplifiedLayerNormalization, one packed
gate/up MatMul, SiLU(gate) * up, down_proj. The LM head runs on the last num_logits rows only.
The families' changes (recycle_export/families.py): q/k/v biases are one Add on the packed
projection; Qwen3's per-head q/k norms sit between a Split of it and GroupQueryAttention, which
then takes q, k and v apart; rope scaling is in the cos/sin caches (runtime.rope).
The portable graphs stay the truth: benchmarks/fused_check.py checks these against them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import contract as C
from runtime import rope
from runtime.artifacts import Artifacts
from runtime.errors import EngineBuildError

log = logging.getLogger(__name__)

OPSET = 17
MASKED_LOGIT = -65504.0  # recycle_export.model.MASKED_LOGIT: the module's logit outside its draft vocabulary
# int4 keeps weights that are 4-bit blockwise already (a GGUF's Q4_1 tensors) on their own grid
# and re-quantizes the rest; int4-sym re-quantizes every weight symmetrically, as
# onnxruntime-genai's builder does: less faithful to such a GGUF, and faster (SmolLM2 on 2
# cores: 205 against 153 tok/s), since the exact grids need two more small MatMuls and an Add
# per weight (exact_int4).
PRECISIONS = ("fp32", "int4", "int4-sym", "int8")
EXTERNAL_DATA_BYTES = 1 << 30  # as the exporter: past this, weights go beside the graph
_INT64_MAX = np.iinfo(np.int64).max
# Initializers both graphs hold: stored once, beside them (share_initializers).
SHARED_INITIALIZERS = ("embed_tokens",)
INT4_BLOCK = 32  # weights per scale: the granularity onnxruntime-genai uses for CPU int4
# MatMulNBits accuracy level 4: int8 activations in the dot products, the fast CPU path.
INT4_ACCURACY_LEVEL = 4
# A weight whose every block of INT4_BLOCK along K is 16 evenly spaced levels (a GGUF Q4_1 or
# Q4_0 tensor, dequantized) to this fraction of the block's range keeps its own grid.
INT4_EXACT_RTOL = 1e-6
# How such a weight is emitted: "offset" (MatMulNBits on the levels without zero points, plus
# the blocks' offsets through a small float MatMul on block sums of the input; keeps the
# prepacked int8 kernel), "float_zp" (MatMulNBits with float zero points: exact in one node,
# but onnxruntime 1.32's CPU kernel then dequantizes the whole weight on every call and runs a
# float GEMM, ComputeBUnpacked) or "off" (re-quantize symmetrically like any other weight).
INT4_EXACT_MODES = ("offset", "float_zp", "off")


@dataclass(frozen=True)
class _Config:
    """What the emitter needs from the manifest's config."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    rope_theta: float
    norm_eps: float
    max_seq_len: int
    recycle_layers: int
    qkv_bias: bool = False  # the families' fields (runtime.artifacts checked them); absent: LLaMA
    qk_norm: bool = False
    rope_scaling: dict | None = None

    @classmethod
    def from_manifest(cls, config: dict) -> "_Config":
        head_dim = config.get("head_dim") or config["dim"] // config["n_heads"]
        return cls(config["dim"], config["n_layers"], config["n_heads"], config["n_kv_heads"], head_dim,
                   config["ffn_dim"], config["vocab_size"], float(config["rope_theta"]),
                   float(config["norm_eps"]), config["max_seq_len"], config["recycle_layers"],
                   bool(config.get("qkv_bias")), bool(config.get("qk_norm")), config.get("rope_scaling"))


class Weights:
    """The portable graphs' parameters, found through the map the exporter writes into each
    graph's metadata (C.WEIGHTS_METADATA: parameter or "parameter.T" -> initializer)."""

    def __init__(self, artifacts: Artifacts):
        import onnx
        from onnx import numpy_helper

        self._arrays: dict[str, np.ndarray] = {}
        self._where: dict[str, str] = {}
        for name in (C.FULL_STEP, C.RECYCLE_STEP):
            path = artifacts.graph_path(name)
            proto = onnx.load(str(path))
            meta = {p.key: p.value for p in proto.metadata_props}
            if C.WEIGHTS_METADATA not in meta:
                raise EngineBuildError(f"{path} does not say which initializer holds which parameter "
                                       f"(an export older than the fused builder): re-run `cli.py export`")
            for key, init in json.loads(meta[C.WEIGHTS_METADATA]).items():
                self._where[key] = f"{name}/{init}"
            for tensor in proto.graph.initializer:
                self._arrays[f"{name}/{tensor.name}"] = numpy_helper.to_array(tensor)
            del proto

    def __contains__(self, param: str) -> bool:
        return param in self._where or f"{param}.T" in self._where

    def get(self, param: str) -> np.ndarray:
        """The parameter as PyTorch holds it. Raises: EngineBuildError when absent."""
        if param in self._where:
            return self._arrays[self._where[param]]
        if f"{param}.T" in self._where:
            return self._arrays[self._where[f"{param}.T"]].T
        raise EngineBuildError(f"the export has no parameter {param!r}: re-run `cli.py export`")

    def same(self, a: str, b: str) -> bool:
        """Whether two parameters are one tensor (tied, or deduplicated by the tracer)."""
        return a in self._where and self._where.get(a) == self._where.get(b)

    def linear(self, module: str) -> np.ndarray:
        """A Linear layer's weight as MatMul's right operand: (in, out)."""
        return np.ascontiguousarray(self.get(f"{module}.weight").T)

    def buffer(self, graph: str, name: str) -> np.ndarray | None:
        return self._arrays.get(f"{graph}/{name}")


class _Graph:
    """Nodes and initializers of one graph under construction, with unique names."""

    def __init__(self):
        self.nodes, self.initializers, self._count = [], [], 0

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs):
        from onnx import helper

        self._count += 1
        name = f"/{op_type}_{self._count}"
        names = [f"{name}/out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, domain=domain or None, **attrs))
        return names[0] if len(names) == 1 else names

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name


def rotary_caches(cfg: _Config) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (max_seq_len, head_dim / 2), computed in float32 as the model does, from
    the frequencies of the config's rope scaling (runtime.rope). GroupQueryAttention's
    rotary is linear in both, so longrope's attention factor goes into the tables."""
    inv_freq = rope.inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)  # (D/2,)
    angles = np.arange(cfg.max_seq_len, dtype=np.float32)[:, None] * inv_freq[None]  # (S, D/2)
    factor = np.float32(rope.attention_factor(cfg.rope_scaling))
    return (np.cos(angles) * factor).astype(np.float32), (np.sin(angles) * factor).astype(np.float32)


class _Emitter:
    def __init__(self, cfg: _Config, weights: Weights, packed_mlp: bool):
        self.cfg, self.w, self.g, self.packed_mlp = cfg, weights, _Graph(), packed_mlp
        self.residual: str | None = None
        self.pending: str | None = None  # the last sublayer's output, not yet added to the residual

    def norm(self, weight: str, gamma: np.ndarray, output: str | None = None) -> str:
        """RMSNorm of residual + pending; the sum becomes the new residual."""
        g, gamma = self.g, self.g.const(weight, gamma)
        out = [output or f"/{weight}/out"]
        if self.pending is None:
            normed = g.op("SimplifiedLayerNormalization", [self.residual, gamma], out,
                          axis=-1, epsilon=self.cfg.norm_eps, stash_type=1)
        else:
            normed, _, _, self.residual = g.op("SkipSimplifiedLayerNormalization",
                                               [self.pending, self.residual, gamma],
                                               out + ["", "", f"/{weight}/residual"],
                                               domain="com.microsoft", epsilon=self.cfg.norm_eps)
        self.pending = None
        return normed

    def layer(self, prefix: str, index: int, cos: str, sin: str) -> None:
        cfg, g, w = self.cfg, self.g, self.w
        name = f"layers.{index}"
        x = self.norm(f"{name}.input_layernorm", w.get(f"{prefix}.input_layernorm.weight"))
        projections = [f"{prefix}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")]
        qkv = np.concatenate([w.linear(p) for p in projections], axis=1)
        qkv = g.op("MatMul", [x, g.const(f"{name}.qkv_proj.T", qkv)])  # (B, T, (H + 2 H_kv) D)
        if cfg.qkv_bias:  # Qwen2
            bias = np.concatenate([w.get(f"{p}.bias") for p in projections])
            qkv = g.op("Add", [qkv, g.const(f"{name}.qkv_proj.bias", bias)])
        query_key_value = [qkv, "", ""]  # packed
        if cfg.qk_norm:  # Qwen3: per-head RMSNorm of q and k, so GroupQueryAttention takes them apart
            q_size, kv_size = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
            split = g.const(f"{name}.qkv_split", np.array([q_size, kv_size, kv_size], np.int64))
            q, k, v = g.op("Split", [qkv, split], 3, axis=-1)  # (B, T, H D), (B, T, H_kv D) x 2
            q, k = (self.head_norm(t, w.get(f"{prefix}.self_attn.{p}.weight"), f"{name}.{p}", heads)
                    for t, p, heads in ((q, "q_norm", cfg.n_heads), (k, "k_norm", cfg.n_kv_heads)))
            query_key_value = [q, k, v]
        attn, _, _ = g.op("GroupQueryAttention",
                          [*query_key_value, C.past_key(index), C.past_value(index), C.SEQLENS_K,
                           C.TOTAL_SEQUENCE_LENGTH, cos, sin],
                          ["/" + name + "/attn", C.present_key(index), C.present_value(index)],
                          domain="com.microsoft", num_heads=cfg.n_heads, kv_num_heads=cfg.n_kv_heads,
                          do_rotary=1, rotary_interleaved=0, scale=float(cfg.head_dim ** -0.5))
        self.pending = g.op("MatMul", [attn, g.const(f"{name}.o_proj.T", w.linear(f"{prefix}.self_attn.o_proj"))])
        x = self.norm(f"{name}.post_attention_layernorm", w.get(f"{prefix}.post_attention_layernorm.weight"))
        if self.packed_mlp:
            gate_up = np.concatenate([w.linear(f"{prefix}.mlp.gate_proj"), w.linear(f"{prefix}.mlp.up_proj")], axis=1)
            gate_up = g.op("MatMul", [x, g.const(f"{name}.gate_up_proj.T", gate_up)])  # (B, T, 2F)
            split = g.const(f"{name}.gate_up_split", np.array([cfg.ffn_dim, cfg.ffn_dim], np.int64))
            gate, up = g.op("Split", [gate_up, split], 2, axis=-1)
        else:
            gate, up = (g.op("MatMul", [x, g.const(f"{name}.{p}.T", w.linear(f"{prefix}.mlp.{p}"))])
                        for p in ("gate_proj", "up_proj"))  # (B, T, F) each
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])  # SiLU(gate) * up
        self.pending = g.op("MatMul", [act, g.const(f"{name}.down_proj.T", w.linear(f"{prefix}.mlp.down_proj"))])

    def head_norm(self, x: str, gamma: np.ndarray, name: str, heads: int) -> str:
        """RMSNorm over each head of (B, T, heads D): a view as (B, T, heads, D), normed on D."""
        g, cfg = self.g, self.cfg
        per_head = g.op("Reshape", [x, g.const(f"{name}.heads", np.array([0, 0, heads, cfg.head_dim], np.int64))])
        normed = g.op("SimplifiedLayerNormalization", [per_head, g.const(f"{name}.weight", gamma)],
                      axis=-1, epsilon=cfg.norm_eps, stash_type=1)  # (B, T, heads, D)
        return g.op("Reshape", [normed, g.const(f"{name}.flat", np.array([0, 0, heads * cfg.head_dim], np.int64))])

    def last_rows(self, hidden: str) -> str:
        """hidden[:, -num_logits:]: (B, N, dim)."""
        g = self.g
        start = g.op("Neg", [C.NUM_LOGITS_INPUT])
        return g.op("Slice", [hidden, start, g.const("int64_max", np.array([_INT64_MAX], np.int64)),
                              g.const("axis_1", np.array([1], np.int64))])

    def lm_head(self, last: str, output: str) -> str:
        """The base's LM head on (B, N, dim). A head tied to the embedding stays one matrix:
        Gemm(transB=1) on the embedding, on a 2-D view (engines.onnx_graphs.unshare_lm_head
        turns it into a MatMul for the weight quantizers)."""
        g, w, cfg = self.g, self.w, self.cfg
        if not w.same("model.base.lm_head.weight", "model.base.embed_tokens.weight"):
            return g.op("MatMul", [last, g.const("lm_head.T", w.linear("model.base.lm_head"))], [output])
        flat = g.op("Reshape", [last, g.const("rows_by_dim", np.array([-1, cfg.dim], np.int64))])  # (BN, dim)
        scores = g.op("Gemm", [flat, "embed_tokens"], transB=1)  # (BN, V)
        shape = g.op("Concat", [g.op("Shape", [last], start=0, end=2),
                                g.const("vocab", np.array([cfg.vocab_size], np.int64))], axis=0)
        return g.op("Reshape", [scores, shape], [output])  # (B, N, V)

    def draft_head(self, last: str, tokens: np.ndarray, output: str) -> str:
        """The module's head over its K draft tokens, scattered into rows of MASKED_LOGIT."""
        from onnx import TensorProto, helper

        g, cfg = self.g, self.cfg
        rows = self.w.get("model.base.lm_head.weight")[tokens]  # (K, dim)
        scores = g.op("MatMul", [last, g.const("draft_head.T", np.ascontiguousarray(rows.T))])  # (B, N, K)
        batch_rows = g.op("Shape", [scores], start=0, end=2)
        full = g.op("Concat", [batch_rows, g.const("vocab", np.array([cfg.vocab_size], np.int64))], axis=0)
        masked = g.op("ConstantOfShape", [full],
                      value=helper.make_tensor("masked", TensorProto.FLOAT, [1], [MASKED_LOGIT]))  # (B, N, V)
        index_shape = g.op("Concat", [batch_rows, g.const("draft_k", np.array([len(tokens)], np.int64))], axis=0)
        indices = g.op("Expand", [g.const("draft_tokens", tokens.astype(np.int64)), index_shape])  # (B, N, K)
        return g.op("ScatterElements", [masked, indices, scores], [output], axis=2)


def emit_graph(name: str, cfg: _Config, weights: Weights, draft_tokens: np.ndarray | None,
               packed_mlp: bool = True):
    """One fused graph as a ModelProto (inputs and outputs of inplace-kv-v1). packed_mlp:
    gate and up projections as one MatMul and a Split (else two MatMuls)."""
    from onnx import TensorProto, helper

    dims = C.Dims(cfg.n_layers, cfg.recycle_layers, cfg.n_kv_heads, cfg.head_dim, cfg.dim, cfg.vocab_size)
    spec = C.inplace_graphs(dims)[name]
    e = _Emitter(cfg, weights, packed_mlp)
    g = e.g
    cos, sin = (g.const(n, a) for n, a in zip(("cos_cache", "sin_cache"), rotary_caches(cfg)))
    g.const("embed_tokens", weights.get("model.base.embed_tokens.weight"))
    embedded = g.op("Gather", ["embed_tokens", C.INPUT_IDS])  # (B, T, dim)
    if name == C.FULL_STEP:
        e.residual, prefix, hidden_out = embedded, "model.base", C.HIDDEN_STATES
    else:
        both = g.op("Concat", [C.HIDDEN_STATES, embedded], axis=-1)  # (B, T, 2 dim): h_{j-1}, embed(x_j)
        fuse = g.const("fuse.T", weights.linear("model.recycler.fuse"))
        e.residual, prefix, hidden_out = g.op("MatMul", [both, fuse]), "model.recycler", C.MODULE_HIDDEN_STATES
    for local, index in enumerate(spec.kv_layers):
        e.layer(f"{prefix}.layers.{local}", index, cos, sin)
    hidden = e.norm("norm", weights.get(f"{prefix}.norm.weight"), hidden_out)
    last = e.last_rows(hidden)
    if draft_tokens is None:
        e.lm_head(last, C.LOGITS)
    else:
        e.draft_head(last, draft_tokens, C.LOGITS)
    types = {"int64": TensorProto.INT64, "int32": TensorProto.INT32, "float32": TensorProto.FLOAT}

    def info(t: C.TensorSpec):
        return helper.make_tensor_value_info(t.name, types[t.dtype], list(t.shape))

    graph = helper.make_graph(g.nodes, f"{name}_fused", [info(t) for t in spec.inputs],
                              [info(t) for t in spec.outputs], g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                   helper.make_opsetid("com.microsoft", 1)],
                             producer_name="recycle-export engines.ort_fused")


def blockwise_4bit(weight: np.ndarray, block: int = INT4_BLOCK, rtol: float = INT4_EXACT_RTOL):
    """A (K, N) MatMul weight as 16-level blocks along K, if it is one: (levels (K, N) uint8
    in 0..15, scales (K/block, N), offsets (K/block, N)) float32 with
    weight[k, n] == scales[k // block, n] * levels[k, n] + offsets[k // block, n] to rtol of
    each block's range (GGUF Q4_1: scale d, offset m; Q4_0 is offset = -8 d). None when not
    (a weight that was never 4-bit, or that K is not a multiple of block)."""
    if weight.ndim != 2 or weight.dtype != np.float32 or weight.shape[0] % block or not weight.size:
        return None
    k, n = weight.shape
    blocks = weight.reshape(k // block, block, n).astype(np.float64)  # (K/B, B, N)
    low, high = blocks.min(axis=1), blocks.max(axis=1)  # (K/B, N)
    span = high - low
    scale = span / 15  # the lowest weight is level 0, the highest level 15
    flat = span == 0  # a constant block: every weight is the offset, level 0
    levels = np.rint((blocks - low[:, None]) / np.where(flat, 1.0, scale)[:, None])
    levels[np.broadcast_to(flat[:, None], levels.shape)] = 0
    error = np.abs(scale[:, None] * levels + low[:, None] - blocks).max(axis=1)
    if not (error <= rtol * span).all():
        return None
    return levels.astype(np.uint8).reshape(k, n), scale.astype(np.float32), low.astype(np.float32)


def blockwise_8bit(weight: np.ndarray, block: int = INT4_BLOCK, rtol: float = INT4_EXACT_RTOL):
    """A (K, N) MatMul weight as symmetric 8-bit blocks along K, if it is one (GGUF Q8_0:
    w = d * q, q in -127..127, d = max |w| / 127 per block): (levels (K, N) int8, scales
    (K/block, N) float32), else None."""
    if weight.ndim != 2 or weight.dtype != np.float32 or weight.shape[0] % block or not weight.size:
        return None
    k, n = weight.shape
    blocks = weight.reshape(k // block, block, n).astype(np.float64)  # (K/B, B, N)
    top = np.abs(blocks).max(axis=1)  # (K/B, N)
    scale = top / 127
    levels = np.rint(blocks / np.where(top > 0, scale, 1.0)[:, None])
    if not (np.abs(scale[:, None] * levels - blocks).max(axis=1) <= rtol * top).all():
        return None
    return levels.astype(np.int8).reshape(k, n), scale.astype(np.float32)


def _pack_levels(levels: np.ndarray, block: int) -> np.ndarray:
    """(K, N) levels in 0..15 -> MatMulNBits' B: (N, K/block, block/2) uint8, the even k in
    the low nibble."""
    k, n = levels.shape
    by_column = levels.T.reshape(n, k // block, block)
    return (by_column[..., 0::2] | (by_column[..., 1::2] << 4)).astype(np.uint8)


def exact_int4(proto, mode: str = "offset", accuracy_level: int = INT4_ACCURACY_LEVEL,
               block: int = INT4_BLOCK, keep_8bit: bool = False) -> tuple[int, list[str]]:
    """Rewrite, in place, the MatMuls whose weight initializer is exactly 16-level blockwise
    (blockwise_4bit) into MatMulNBits on those levels (see INT4_EXACT_MODES); keep_8bit: also
    those exactly symmetric 8-bit blockwise (blockwise_8bit, a GGUF's Q8_0 tensors) into 8-bit
    MatMulNBits, twice the bytes of 4 bits. Returns (the count rewritten, the names of the float
    MatMuls added, which the quantizer run after this must leave alone)."""
    from onnx import helper, numpy_helper

    if mode not in INT4_EXACT_MODES:
        raise EngineBuildError(f"exact int4 mode {mode!r} is not one of {INT4_EXACT_MODES}")
    if mode == "off":
        return 0, []
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes, added, dropped, rewritten = [], [], set(), 0
    for node in graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        weight = None if init is None else numpy_helper.to_array(init)
        found = None if weight is None else blockwise_4bit(weight, block)
        eight = None if found is not None or weight is None or not keep_8bit else blockwise_8bit(weight, block)
        if found is None and eight is None:
            nodes.append(node)
            continue
        x, w, out = node.input[0], node.input[1], node.output[0]
        base = node.name or f"/MatMul_{w}"
        uses[w] -= 1
        if not uses[w]:
            dropped.add(w)
        rewritten += 1
        if eight is not None:  # no zero points: MatMulNBits takes 128 as zero, scale * (q + 128 - 128)
            levels, scale = eight
            k, n = levels.shape
            packed = (levels.astype(np.int16) + 128).astype(np.uint8).T.reshape(n, k // block, block)
            graph.initializer.extend([numpy_helper.from_array(packed, f"{w}.q8_levels"),
                                      numpy_helper.from_array(np.ascontiguousarray(scale.T), f"{w}.q8_scales")])
            nodes.append(helper.make_node("MatMulNBits", [x, f"{w}.q8_levels", f"{w}.q8_scales"], [out],
                                          name=f"{base}/q8", domain="com.microsoft", K=k, N=n, bits=8,
                                          block_size=block, accuracy_level=accuracy_level))
            continue
        levels, scale, low = found
        k, n = levels.shape
        names = [f"{w}.q4_levels", f"{w}.q4_scales"]
        graph.initializer.extend([numpy_helper.from_array(_pack_levels(levels, block), names[0]),
                                  numpy_helper.from_array(np.ascontiguousarray(scale.T), names[1])])  # (N, K/B)
        attrs = {"domain": "com.microsoft", "K": k, "N": n, "bits": 4, "block_size": block,
                 "accuracy_level": accuracy_level}
        if mode == "float_zp":  # scale * (q - zero), zero = -offset / scale
            zero = np.where(scale > 0, -low / np.where(scale > 0, scale, 1), 0).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(zero.T), f"{w}.q4_zero_points"))
            nodes.append(helper.make_node("MatMulNBits", [x, *names, f"{w}.q4_zero_points"], [out],
                                          name=f"{base}/q4", **attrs))
        else:
            # Without zero points MatMulNBits computes scale * (q - 8); the rest of each weight,
            # offset + 8 scale, is one value per (block, column): the block's input sum times it.
            rest = (low.astype(np.float64) + 8 * scale.astype(np.float64)).astype(np.float32)  # (K/B, N)
            if np.abs(rest).max() <= INT4_EXACT_RTOL * max(float(np.abs(scale).max()), 1e-30):  # Q4_0
                nodes.append(helper.make_node("MatMulNBits", [x, *names], [out], name=f"{base}/q4", **attrs))
            else:
                ones = f"q4_block_sums_{k}"  # (K, K/B), one per K
                if ones not in inits:
                    inits[ones] = numpy_helper.from_array(
                        np.kron(np.eye(k // block, dtype=np.float32), np.ones((block, 1), np.float32)), ones)
                    graph.initializer.append(inits[ones])
                graph.initializer.append(numpy_helper.from_array(rest, f"{w}.q4_offsets"))
                main, sums, offsets = f"{base}/q4/levels", f"{base}/q4/sums", f"{base}/q4/offsets"
                nodes += [helper.make_node("MatMulNBits", [x, *names], [main], name=f"{base}/q4", **attrs),
                          helper.make_node("MatMul", [x, ones], [sums],  # (..., K/B)
                                           name=f"{base}/q4_sums"),
                          helper.make_node("MatMul", [sums, f"{w}.q4_offsets"], [offsets],  # (..., N)
                                           name=f"{base}/q4_offsets"),
                          helper.make_node("Add", [main, offsets], [out], name=f"{base}/q4_add")]
                added += [f"{base}/q4_sums", f"{base}/q4_offsets"]
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        kept = [t for t in graph.initializer if t.name not in dropped]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return rewritten, added


def quantize(proto, precision: str, exact: str = "offset", accuracy_level: int = INT4_ACCURACY_LEVEL,
             keep_8bit: bool = True):
    """Weight-quantize a fused graph's MatMuls (the embedding's Gather stays float). int4:
    weights that are already 4-bit blockwise keep their own grid (exact_int4, mode `exact`),
    the others are quantized symmetrically; accuracy_level is MatMulNBits' (4: int8
    activations, 1: float activations); keep_8bit: exactly 8-bit weights stay 8-bit."""
    from engines.onnx_graphs import unshare_lm_head

    if precision == "fp32":
        return proto
    unshare_lm_head(proto)
    if precision in ("int4", "int4-sym"):
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        exact = "off" if precision == "int4-sym" else exact

        matmuls = sum(node.op_type == "MatMul" for node in proto.graph.node)
        rewritten, added = exact_int4(proto, exact, accuracy_level, keep_8bit=keep_8bit)
        log.info("int4: %d of %d MatMul weights exactly %s blockwise (%s), the rest re-quantized",
                 rewritten, matmuls, "4- or 8-bit" if keep_8bit else "4-bit", exact)
        quantizer = MatMulNBitsQuantizer(proto, bits=4, block_size=INT4_BLOCK, is_symmetric=True,
                                         accuracy_level=accuracy_level, nodes_to_exclude=added)
        quantizer.process()
        return quantizer.model.model
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:  # quantize_dynamic writes a file
        # Shape inference knows no contrib op outputs: the activations are float.
        quantize_dynamic(proto, f"{tmp}/q.onnx", op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return onnx.load(f"{tmp}/q.onnx")


def share_initializers(proto, folder: Path) -> None:
    """Move SHARED_INITIALIZERS into one raw file each beside the graphs, referenced as ONNX
    external data by both: ONNX Runtime maps external data from the file, so the two
    sessions read one copy of the embedding (in the page cache, resident as far as tokens
    touch it) instead of holding one each."""
    import onnx
    from onnx import external_data_helper, numpy_helper

    for tensor in proto.graph.initializer:
        if tensor.name not in SHARED_INITIALIZERS:
            continue
        array = numpy_helper.to_array(tensor)
        file = folder / f"{tensor.name}.bin"
        if file.is_file():  # written by the other graph: the same parameter
            assert file.stat().st_size == array.nbytes, f"{file} holds another {tensor.name}"
        else:
            array.tofile(file)
        external_data_helper.set_external_data(tensor, file.name, 0, array.nbytes)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL


def build_fused(artifacts: Artifacts, out: Path, precision: str = "fp32",
                packed_mlp: bool = True, exact_int4: str = "offset",
                int4_accuracy_level: int = INT4_ACCURACY_LEVEL, keep_8bit: bool = True) -> dict[str, Path]:
    """Write fused full_step.onnx and recycle_step.onnx (inplace-kv-v1) into `out`.

    int4: exact_int4 is the mode for weights that are 4-bit blockwise already (a GGUF's Q4_1
    tensors; INT4_EXACT_MODES), int4_accuracy_level MatMulNBits' accuracy_level, keep_8bit
    whether weights that are exactly 8-bit blockwise (a GGUF's Q8_0 embedding, hence the tied
    LM head) stay 8-bit rather than being re-quantized to 4 bits: by default they do, since
    int4 builds a GGUF's own blocks (re-quantizing SmolLM2's Q8_0 head to 4 bits took its
    argmax agreement with llama.cpp on the same file from 0.979 to 0.893 of positions:
    benchmarks/int4_agreement.py). int4-sym re-quantizes everything either way.

    Returns graph name -> path.
    Raises: EngineBuildError for an export this builder cannot read (not float32, or
        without the exporter's weight map), an unknown precision or exact_int4 mode.
    """
    import onnx

    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision {precision!r} is not one of {PRECISIONS}")
    if artifacts.dims.dtype != "float32":
        raise EngineBuildError(f"the fused ONNX Runtime build reads float32 exports (onnxruntime's CPU "
                               f"GroupQueryAttention is float32 only), this one is {artifacts.dims.dtype}")
    cfg = _Config.from_manifest(artifacts.manifest.config)
    weights = Weights(artifacts)
    draft_tokens = weights.buffer(C.RECYCLE_STEP, "model.recycler.draft_tokens")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in (C.FULL_STEP, C.RECYCLE_STEP):
        proto = quantize(emit_graph(name, cfg, weights, draft_tokens if name == C.RECYCLE_STEP else None,
                                    packed_mlp),
                         precision, exact_int4, int4_accuracy_level, keep_8bit)
        share_initializers(proto, out)
        path = paths[name] = out / f"{name}.onnx"
        large = sum(t.ByteSize() for t in proto.graph.initializer) > EXTERNAL_DATA_BYTES
        onnx.save_model(proto, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                        location=f"{path.name}.data")
        log.info("fused %s (%s): %d nodes", name, precision, len(proto.graph.node))
    return paths
