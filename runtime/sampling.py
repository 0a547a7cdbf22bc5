"""Token sampling and the speculative acceptance test, in numpy.

Shared by the PyTorch reference decoder and the runtime so that both draw tokens the same
way. Every distribution here is a float64 probability vector over the vocabulary; greedy
decoding (temperature 0) is the one-hot vector at the argmax, which makes the speculative
acceptance test reduce to "accept the draft iff it equals the base's argmax".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import SamplingError


# Below this, logits / temperature overflows float64 (|logits| up to ~1e3 / 1e-300) and
# the probabilities turn into NaN; such a temperature is greedy decoding in all but name.
MIN_TEMPERATURE = 1e-4


def is_integer(value) -> bool:
    """A Python or numpy integer, and not a bool (which Python counts as an int)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How to turn logits into a token. temperature 0 means greedy; top_k 0 and top_p 1.0
    switch those filters off; seed makes sampling reproducible."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        """Raises: SamplingError for a value of the wrong type or out of range (the CLI and
        the Python API share this one check)."""
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SamplingError(f"{name} must be a number, got {value!r}")
        if not (self.temperature >= 0.0 and np.isfinite(self.temperature)):
            raise SamplingError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if 0.0 < self.temperature < MIN_TEMPERATURE:
            raise SamplingError(f"temperature {self.temperature:g} is too small to divide logits by "
                                f"(probabilities overflow); use 0 for greedy or at least {MIN_TEMPERATURE:g}")
        if not is_integer(self.top_k) or self.top_k < 0:
            raise SamplingError(f"top_k must be an integer >= 0 (0 switches it off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and (not is_integer(self.seed) or not 0 <= self.seed < 2 ** 63):
            raise SamplingError(f"seed must be an integer in 0..2^63-1, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution a token is drawn from: logits (vocab,) -> probabilities (vocab,)
    after temperature, top-k and top-p. Greedy gives the one-hot vector at the argmax."""
    logits = np.asarray(logits, dtype=np.float64)
    if params.greedy:
        probs = np.zeros_like(logits)
        probs[int(np.argmax(logits))] = 1.0
        return probs
    scaled = logits / params.temperature
    if 0 < params.top_k < scaled.shape[-1]:
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = cumulative - probs[order] < params.top_p
        filtered = np.zeros_like(probs)
        filtered[order[keep]] = probs[order[keep]]
        probs = filtered / filtered.sum()
    return probs


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token from a probability vector; deterministic (no random draw) when one-hot."""
    top = int(np.argmax(probs))
    if probs[top] == 1.0:
        return top
    return int(rng.choice(probs.shape[-1], p=probs))


def accept_draft(
    draft: int, p: np.ndarray, q: np.ndarray | None, rng: np.random.Generator
) -> tuple[bool, int]:
    """The speculative acceptance test: keep `draft` (drawn from q) with probability
    min(1, p/q), else resample from normalize(max(0, p - q)). The token returned is
    distributed exactly as p. q None stands for a deterministic draft (a prompt lookup's):
    one-hot at the draft. Returns (accepted, token)."""
    if q is None:
        q = np.zeros_like(p)
        q[draft] = 1.0
    p_draft, q_draft = p[draft], q[draft]
    if p_draft >= q_draft or rng.random() < p_draft / q_draft:
        return True, draft
    residual = np.maximum(p - q, 0.0)
    return False, draw(residual / residual.sum(), rng)


def top_probability(logits: np.ndarray) -> float:
    """The softmax probability of the most likely token of logits (V,), before temperature:
    how sure a model is of its next token."""
    shifted = np.exp(np.asarray(logits, dtype=np.float64) - np.max(logits))
    return float(shifted.max() / shifted.sum())


def confident(logits: np.ndarray, threshold: float) -> bool:
    """top_probability(logits) >= threshold; a threshold of 0 holds without computing it."""
    return threshold <= 0.0 or top_probability(logits) >= threshold
