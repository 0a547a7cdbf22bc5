"""Convert a GGUF file of the architectures `llama` (Llama 2/3.x, Mistral, SmolLM), `qwen2`,
`qwen3` and `phi3` into our checkpoint format.

GGUF is read with `gguf` (llama.cpp's own Python package) and its dequantizers; metadata
keys are `{architecture}.…` (gguf.constants.Keys), tensor names gguf.constants.TENSOR_NAMES'.
The tokenizer is rebuilt with the `tokenizers` library from the vocabulary the file carries
(recycle_export/gguf_tokenizer.py). For `llama`, the q and k projections are un-permuted back to the Hugging Face
rotary layout that llama.cpp's converter changed (the other three keep it). Rope scaling
comes as tensors: `rope_freqs` (llama.cpp's form of llama3 scaling: a divisor per
frequency) and Phi-3's `rope_factors_short` / `rope_factors_long` (longrope).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from recycle_export.checkpoint import Checkpoint, assign_tensors, attach_recycler, check_shapes, layer_count, new_model
from recycle_export.model import RecycleGPT

from runtime.artifacts import GenerationRecord
from recycle_export.config import ModelConfig
from recycle_export.families import DEFAULT_MAX_SEQ_LEN
from recycle_export.gguf_tokenizer import tokenizer_json
from runtime.drafts import read_answer_store
from runtime.errors import CheckpointError, ConfigError, GGUFError
from runtime.tokenizer import compile_chat_template

log = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "qwen2", "qwen3", "phi3")
# GGUF tensor name -> our Base parameter name ("{i}" is the layer index), for `llama`.
TENSOR_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.mlp.down_proj.weight",
}
# What the other architectures add, or hold fused (their parts cut along rows, in order).
ARCHITECTURE_TENSORS = {
    "qwen2": {f"blk.{{i}}.attn_{p}.bias": f"layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"},
    "qwen3": {f"blk.{{i}}.attn_{p}_norm.weight": f"layers.{{i}}.self_attn.{p}_norm.weight" for p in "qk"},
    "phi3": {"blk.{i}.attn_qkv.weight": tuple(f"layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"),
             "blk.{i}.ffn_up.weight": ("layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.up_proj.weight")},
}
FUSED_BY_PHI3 = ("blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight", "blk.{i}.attn_v.weight",
                 "blk.{i}.ffn_gate.weight")
# Rope scaling as tensors (head_dim / 2 values each), read into the config, not the model.
ROPE_TENSORS = {"llama": ("rope_freqs.weight",), "qwen2": ("rope_freqs.weight",), "qwen3": ("rope_freqs.weight",),
                "phi3": ("rope_factors_short.weight", "rope_factors_long.weight")}
# Metadata keys ("{arch}." prefixed) naming something the model does not implement.
UNSUPPORTED_KEYS = ("expert_count", "attn_logit_softcapping", "final_logit_softcapping",
                    "attention.sliding_window_pattern")

def unpermute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: per head, interleaved pairs -> two halves."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return (weight.reshape(n_heads, head_dim // 2, 2, cols)  # (H, D/2, 2, dim)
            .swapaxes(1, 2)  # (H, 2, D/2, dim)
            .reshape(rows, cols))


class _Fields:
    """Typed access to GGUF metadata that names the missing key."""

    def __init__(self, reader, source: str):
        self.reader, self.source = reader, source

    def get(self, key: str, default=None):
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str):
        value = self.get(key)
        if value is None:
            raise GGUFError(f"{self.source}: metadata key {key!r} is missing")
        return value

    def number(self, key: str, kind: type = int, default=None):
        """A numeric metadata value (required when `default` is None)."""
        value = self.require(key) if default is None else self.get(key, default)
        if isinstance(value, (str, bytes, list, bool)):
            raise GGUFError(f"{self.source}: metadata key {key!r} must be a number, got {value!r:.40}")
        return kind(value)


def _config(fields: _Fields) -> ModelConfig:
    arch = fields.require("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{fields.source}: architecture {arch!r} is not supported; import-gguf converts "
                        f"{', '.join(ARCHITECTURES)}")
    for key in UNSUPPORTED_KEYS:
        if fields.get(f"{arch}.{key}") is not None:
            raise GGUFError(f"{fields.source}: metadata key '{arch}.{key}' names something this model does "
                            "not implement")
    n_heads = fields.number(f"{arch}.attention.head_count")
    dim = fields.number(f"{arch}.embedding_length")
    if n_heads <= 0:
        raise GGUFError(f"{fields.source}: metadata key '{arch}.attention.head_count' must be positive, got {n_heads}")
    rope_dim = fields.get(f"{arch}.rope.dimension_count")
    head_dim = fields.number(f"{arch}.attention.key_length", int, dim // n_heads)
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise GGUFError(f"{fields.source}: partial rotary (rope.dimension_count {rope_dim} of "
                        f"head_dim {head_dim}) is not supported")
    rope_scaling, rope_limit = _rope_scaling(fields, arch)
    window = fields.get(f"{arch}.attention.sliding_window")
    window = None if window is None else fields.number(f"{arch}.attention.sliding_window")
    max_seq_len = min(fields.number(f"{arch}.context_length", int, DEFAULT_MAX_SEQ_LEN), DEFAULT_MAX_SEQ_LEN,
                      *(limit for limit in (rope_limit, window) if limit is not None))
    tokens = fields.require("tokenizer.ggml.tokens")
    try:
        cfg = ModelConfig(
            vocab_size=fields.number(f"{arch}.vocab_size", int, len(tokens)),
            dim=dim,
            n_layers=fields.number(f"{arch}.block_count"),
            n_heads=n_heads,
            n_kv_heads=fields.number(f"{arch}.attention.head_count_kv", int, n_heads),
            ffn_dim=fields.number(f"{arch}.feed_forward_length"),
            head_dim=head_dim,
            rope_theta=fields.number(f"{arch}.rope.freq_base", float, 10000.0),
            norm_eps=fields.number(f"{arch}.attention.layer_norm_rms_epsilon", float),
            tie_embeddings="output.weight" not in {t.name for t in fields.reader.tensors},
            max_seq_len=max_seq_len, qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3",
            rope_scaling=rope_scaling, sliding_window=window)
    except ConfigError as exc:
        raise GGUFError(f"{fields.source}: {exc}") from None
    if len(tokens) > cfg.vocab_size:
        raise GGUFError(f"{fields.source}: the vocabulary lists {len(tokens)} tokens, more than the model's "
                        f"{cfg.vocab_size} ({arch}.vocab_size)")
    return cfg


def _rope_scaling(fields: _Fields, arch: str) -> tuple[dict | None, int | None]:
    """(rope_scaling in runtime.rope's form, the max_seq_len it allows or None) from the
    metadata and the rope tensors.

    Raises:
        GGUFError: a scaling type other than linear (yarn, ...), or longrope without its context.
    """
    tensors = {t.name: t for t in fields.reader.tensors}
    kind = fields.get(f"{arch}.rope.scaling.type", "none")
    if kind not in ("none", "linear", None):
        raise GGUFError(f"{fields.source}: metadata key '{arch}.rope.scaling.type' is {kind!r}, which is not "
                        "implemented (supported: none, linear)")

    def values(name: str) -> list[float]:
        from gguf import quants

        t = tensors[name]
        return [float(v) for v in quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)]

    if kind == "linear":
        return {"rope_type": "linear", "factor": fields.number(f"{arch}.rope.scaling.factor", float)}, None
    if "rope_freqs.weight" in tensors:
        return {"rope_type": "frequency_factors", "factors": values("rope_freqs.weight")}, None
    if "rope_factors_short.weight" in tensors:
        original = fields.number(f"{arch}.rope.scaling.original_context_length")
        return {"rope_type": "longrope", "short_factor": values("rope_factors_short.weight"),
                "original_max_position_embeddings": original,
                "attention_factor": fields.number(f"{arch}.rope.scaling.attn_factor", float, 1.0)}, original
    return None, None


def _gguf_names(cfg: ModelConfig, arch: str) -> dict[str, tuple[str, ...]]:
    """GGUF tensor name -> our Base parameter name(s), for every layer: several for a fused
    tensor, cut along its rows in order."""
    table = {name: (ours,) for name, ours in TENSOR_NAMES.items()
             if not (arch == "phi3" and name in FUSED_BY_PHI3)}
    table.update({name: ours if isinstance(ours, tuple) else (ours,)
                  for name, ours in ARCHITECTURE_TENSORS.get(arch, {}).items()})
    names = {}
    for gguf_name, ours in table.items():
        for i in range(cfg.n_layers if "{i}" in gguf_name else 1):
            names[gguf_name.format(i=i)] = tuple(o.format(i=i) for o in ours)
    return names


def _check_tensors(reader, cfg: ModelConfig, arch: str, source: str) -> None:
    """Check the metadata's sizes against the tensors the file holds, before anything is
    allocated: a block_count or vocab_size edited by hand must not cost gigabytes first.

    Raises:
        GGUFError: block_count differs from the blocks present, or a tensor is missing,
            unexpected or of another shape than the metadata implies.
    """
    present = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}  # numpy order
    blocks = layer_count(present, "blk.")
    if blocks != cfg.n_layers:
        raise GGUFError(f"{source}: metadata {arch}.block_count is {cfg.n_layers}, but the file holds tensors "
                        f"for {blocks} blocks")
    names = _gguf_names(cfg, arch)
    rope = {name: (cfg.head_dim // 2,) for name in ROPE_TENSORS[arch]}
    unexpected = sorted(set(present) - set(names) - set(rope))
    if unexpected:
        raise GGUFError(f"{source}: unexpected tensor {unexpected[0]!r}; not part of a {arch} model")
    with torch.device("meta"):  # shapes only: nothing is allocated
        base = RecycleGPT(cfg).base
    expected = {}
    for name, ours in names.items():
        if cfg.tie_embeddings and name == "output.weight":
            continue
        shapes = [tuple(base.get_parameter(o).shape) for o in ours]
        expected[name] = (sum(shape[0] for shape in shapes), *shapes[0][1:])  # fused: parts stacked by rows
    try:
        check_shapes({**expected, **rope}, present, source, optional=set(rope))
    except CheckpointError as exc:
        raise GGUFError(f"{exc} (from the metadata: vocab {cfg.vocab_size}, dim {cfg.dim}, "
                        f"ffn {cfg.ffn_dim}, heads {cfg.n_heads}/{cfg.n_kv_heads})") from None


def _tensors(reader, cfg: ModelConfig, arch: str, source: str, progress: Callable[[int, int], None]) -> dict:
    from gguf import quants

    names = _gguf_names(cfg, arch)
    tensors = {}
    total = len(reader.tensors)
    for done, t in enumerate(reader.tensors, 1):
        if t.name in ROPE_TENSORS[arch]:
            progress(done, total)
            continue  # read into the config (_rope_scaling)
        if t.name not in names:
            raise GGUFError(f"{source}: unexpected tensor {t.name!r}; not part of a {arch} model")
        try:
            values = quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise GGUFError(f"{source}: tensor {t.name!r} uses quantization "
                            f"{t.tensor_type.name}, which the gguf package cannot dequantize") from None
        values = values.reshape([int(d) for d in reversed(t.shape)]).astype(np.float32)
        if arch == "llama" and t.name.endswith("attn_q.weight"):
            values = unpermute_rotary(values, cfg.n_heads)
        elif arch == "llama" and t.name.endswith("attn_k.weight"):
            values = unpermute_rotary(values, cfg.n_kv_heads)
        parts = names[t.name]
        if len(parts) == 1:
            tensors[parts[0]] = torch.from_numpy(values)
        else:  # fused (Phi-3): the check above made its rows the parts' sum
            q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
            sizes = (q, kv, kv) if len(parts) == 3 else (cfg.ffn_dim, cfg.ffn_dim)
            tensors.update(zip(parts, torch.from_numpy(values).split(sizes)))
        progress(done, total)
    return tensors


def import_gguf(path: Path, progress: Callable[[int, int], None] = lambda done, total: None,
                recycler: Path | None = None, answers: Path | None = None) -> Checkpoint:
    """Read a GGUF file (ARCHITECTURES) into a Checkpoint (dequantized float32 weights, tokenizer,
    special tokens and chat template) with the trained recyclable module in the
    safetensors file `recycler`, or a freshly initialised one (with a warning), and verify's
    answer store from the .npy file `answers` (runtime.drafts), if given.

    Raises:
        GGUFError: the file is missing or unreadable, of another architecture, or uses a
            tokenizer or quantization we cannot convert.
        CheckpointError: `recycler` is missing or does not fit the model; `answers` is
            unreadable or holds ids outside the vocabulary.
    """
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"GGUF file {path} not found")
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise GGUFError(f"{path}: not a readable GGUF file ({exc})") from None
    fields = _Fields(reader, str(path))
    cfg = _config(fields)
    arch = fields.require("general.architecture")
    _check_tensors(reader, cfg, arch, str(path))
    compile_chat_template(fields.get("tokenizer.chat_template"), str(path), GGUFError)
    model = new_model(cfg)
    tensors = _tensors(reader, cfg, arch, str(path), progress)
    try:
        assign_tensors(model.base, tensors, str(path))
    except CheckpointError as exc:
        raise GGUFError(str(exc)) from None
    eos = fields.get("tokenizer.ggml.eos_token_id")
    eot = fields.get("tokenizer.ggml.eot_token_id")
    eos_ids = tuple(dict.fromkeys(int(t) for t in (eos, eot) if t is not None))
    generation = GenerationRecord(
        bos_token_id=fields.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=fields.get("tokenizer.ggml.padding_token_id"),
        chat_template=fields.get("tokenizer.chat_template"))
    ckpt = Checkpoint(model, False, generation, tokenizer_json(fields, arch))
    if answers is not None:
        ckpt.answers = read_answer_store(Path(answers), cfg.vocab_size, CheckpointError)
    if recycler is not None:
        attach_recycler(ckpt, recycler)
    else:
        log.warning("%s carries no recyclable module: attached a freshly initialised one "
                    "(train it with `cli.py train-recycler`)", path)
    return ckpt
