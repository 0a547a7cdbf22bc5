"""The model configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from runtime import rope
from runtime.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a RecycleGPT model: a LLaMA-style base plus the recyclable module.

    head_dim is derived (dim // n_heads) unless given, as some LLaMA variants decouple it.
    The fields after recycle_layers are what other families change in a LLaMA layer; their
    defaults are LLaMA's, so a checkpoint or manifest written without them reads as LLaMA.
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    # The longest sequence the exported graphs and the runtime's KV pool are sized for;
    # a default well under most models' trained context keeps the pool small on a CPU.
    max_seq_len: int = 2048
    # The paper's recyclable module is one decoder layer: enough to beat the base's
    # 2-token-ahead guess while costing ~1/L of a base call.
    recycle_layers: int = 1
    # Qwen2/2.5: biases on the q, k and v projections (not on o_proj).
    qkv_bias: bool = False
    # Qwen3: RMSNorm over each head of the queries and keys, before rotary.
    qk_norm: bool = False
    # Llama 3.x, Phi-3 and linear scaling: runtime.rope's form (None: plain rotary).
    rope_scaling: dict | None = None
    # Mistral, Phi-3: attention sees at most this many positions back. Not implemented, so
    # max_seq_len may not exceed it (within it the window changes nothing).
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim",
                     "max_seq_len", "recycle_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"config field 'n_heads' ({self.n_heads}) must be a multiple of "
                f"'n_kv_heads' ({self.n_kv_heads}) for grouped-query attention")
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ConfigError(
                    f"config field 'dim' ({self.dim}) must be divisible by 'n_heads' "
                    f"({self.n_heads}) when 'head_dim' is not given")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) \
                or self.head_dim <= 0 or self.head_dim % 2:
            raise ConfigError(
                f"config field 'head_dim' must be a positive even integer (rotary pairs), "
                f"got {self.head_dim!r}")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"config field {name!r} must be a positive number, got {value!r}")
        for name in ("tie_embeddings", "qkv_bias", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"config field {name!r} must be true or false, got {getattr(self, name)!r}")
        problem = rope.check_scaling(self.rope_scaling, self.head_dim, self.max_seq_len)
        if problem:
            raise ConfigError(f"config field 'rope_scaling': {problem}")
        window = self.sliding_window
        if window is not None:
            if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
                raise ConfigError(f"config field 'sliding_window' must be a positive integer or null, got {window!r}")
            if self.max_seq_len > window:
                raise ConfigError(
                    f"config field 'max_seq_len' ({self.max_seq_len}) exceeds the model's sliding "
                    f"window ({window}), which is not implemented: choose a max_seq_len of at most {window}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "ModelConfig":
        """Build from a dict, naming unknown or missing fields.

        Raises:
            ConfigError: a field is missing, unknown, or invalid.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{source}: unknown config field(s) {unknown}; expected a subset of {sorted(fields)}")
        missing = [n for n, f in fields.items()
                   if n not in data and f.default is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{source}: missing required config field(s) {missing}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
