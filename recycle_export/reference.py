"""The PyTorch reference decoder: the oracle that the runtime is tested against.

It runs the three schedules of docs/design.md section 2 one prompt at a time and favours
clarity over speed. Every step works on "the tokens a cache has not seen yet": the base
consumes tokens[base_len:], the module tokens[module_len:] paired with the base's hidden
state one position earlier (h_{-1} = 0). Sampling is shared with the runtime
(runtime.sampling), so both draw the same tokens from the same logits and seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from recycle_export.model import KV, RecycleGPT
from runtime.request import STRATEGIES, Request, Stats, check_request  # the same records as the runtime's
from runtime.sampling import SamplingParams, accept_draft, draw, probabilities

@dataclass
class Call:
    """One model call, recorded for schedule tests: which positions it consumed and, for the
    module, the (h_{j-1}, x_j) pairs it was fed (hidden_positions[i] = positions[i] - 1)."""

    kind: str  # "base" or "module"
    positions: list[int]
    token_ids: list[int]
    hidden: torch.Tensor | None = None  # (T, dim) fed to the module


@dataclass
class Generation:
    tokens: list[int]  # generated tokens, without the stop token
    finish_reason: str  # "stop", "max_new_tokens" or "length"
    stats: Stats
    calls: list[Call]


@dataclass
class _State:
    tokens: list[int]  # prompt + every token accepted so far
    n_prompt: int
    max_new_tokens: int
    stop_ids: set[int]
    sampling: SamplingParams
    rng: np.random.Generator
    base_kv: list[KV]
    module_kv: list[KV]
    hidden: list[torch.Tensor] = field(default_factory=list)  # h_j for j < base_len, each (dim,)
    module_len: int = 0
    finish_reason: str | None = None
    stats: Stats = field(default_factory=Stats)
    calls: list[Call] = field(default_factory=list)

    @property
    def base_len(self) -> int:
        return len(self.hidden)


class ReferenceDecoder:
    """Decode with `model` (batch 1). See `generate`."""

    def __init__(self, model: RecycleGPT, eos_token_ids: tuple[int, ...] = ()):
        self.model = model.eval()
        self.cfg = model.cfg
        self.eos_token_ids = tuple(eos_token_ids)  # a Request's stop tokens when it names none

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], request: Request = Request()) -> Generation:
        """Generate up to request.max_new_tokens after prompt_ids (stop strings are the
        runtime's business: the reference decodes token ids only).

        Raises:
            GenerationError: an invalid prompt or request (runtime.request.check_request).
        """
        check_request([list(prompt_ids)], request, self.cfg.max_seq_len, self.cfg.vocab_size)
        stop_ids = self.eos_token_ids if request.stop_token_ids is None else request.stop_token_ids
        s = _State(list(prompt_ids), len(prompt_ids), request.max_new_tokens, set(stop_ids),
                   request.sampling, np.random.default_rng(request.sampling.seed),
                   self.model.empty_kv(self.cfg.n_layers), self.model.empty_kv(self.cfg.recycle_layers))
        self._schedules[request.strategy](self, s)
        return Generation(s.tokens[s.n_prompt:], s.finish_reason, s.stats, s.calls)

    # The schedules (docs/design.md section 2).

    def _standard(self, s: _State) -> None:
        logits = self._base_step(s, s.tokens[s.base_len:])
        while not self._emit(s, draw(self._probs(s, logits[-1]), s.rng)):
            logits = self._base_step(s, s.tokens[s.base_len:])

    def _alternate(self, s: _State) -> None:
        logits = self._base_step(s, s.tokens[s.base_len:])
        while not self._emit(s, draw(self._probs(s, logits[-1]), s.rng)):
            module_logits = self._module_step(s)
            if self._emit(s, draw(self._probs(s, module_logits), s.rng)):
                return
            logits = self._base_step(s, s.tokens[s.base_len:])

    def _verify(self, s: _State) -> None:
        logits = self._base_step(s, s.tokens[s.base_len:])
        if self._emit(s, draw(self._probs(s, logits[-1]), s.rng)):
            return
        while True:
            q = self._probs(s, self._module_step(s))
            draft = draw(q, s.rng)
            s.stats.drafts_proposed += 1
            logits = self._base_step(s, s.tokens[s.base_len:] + [draft], num_logits=2)
            accepted, token = accept_draft(draft, self._probs(s, logits[0]), q, s.rng)
            if not accepted:
                self._rollback_base(s, 1)  # the base cache holds the rejected draft
                if self._emit(s, token):
                    return
                continue
            s.stats.drafts_accepted += 1
            if self._emit(s, token) or self._emit(s, draw(self._probs(s, logits[1]), s.rng)):
                return

    _schedules = {"standard": _standard, "alternate": _alternate, "verify": _verify}
    assert tuple(_schedules) == STRATEGIES

    # Named steps.

    def _base_step(self, s: _State, new_tokens: list[int], num_logits: int = 1) -> np.ndarray:
        """Run the base on new_tokens at positions base_len...; returns (num_logits, V)."""
        start, total = s.base_len, s.base_len + len(new_tokens)
        out = self.model.base_step(
            torch.tensor([new_tokens]), torch.arange(start, total)[None],
            torch.ones(1, total, dtype=torch.long), s.base_kv, num_logits)
        s.base_kv = out.present
        s.hidden.extend(out.hidden[0])
        s.stats.base_calls += 1
        s.calls.append(Call("base", list(range(start, total)), list(new_tokens)))
        return out.logits[0].double().numpy()

    def _module_step(self, s: _State) -> np.ndarray:
        """Run the module on every token it has not seen, each paired with h one position
        earlier; returns the logits (V,) for the token after the last one."""
        start, total = s.module_len, len(s.tokens)
        zero = torch.zeros(self.cfg.dim, dtype=s.hidden[0].dtype)
        prev = torch.stack([s.hidden[j - 1] if j > 0 else zero for j in range(start, total)])  # (T, dim)
        assert total - 1 <= s.base_len, "the module needs h_{j-1} for every token it consumes"
        out = self.model.recycle_step(
            torch.tensor([s.tokens[start:total]]), prev[None], torch.arange(start, total)[None],
            torch.ones(1, total, dtype=torch.long), s.module_kv)
        s.module_kv, s.module_len = out.present, total
        s.stats.module_calls += 1
        s.calls.append(Call("module", list(range(start, total)), s.tokens[start:total], prev))
        return out.logits[0, -1].double().numpy()

    def _rollback_base(self, s: _State, n: int) -> None:
        keep = s.base_len - n
        s.base_kv = [(k[:, :, :keep], v[:, :, :keep]) for k, v in s.base_kv]
        del s.hidden[keep:]

    def _probs(self, s: _State, logits: np.ndarray) -> np.ndarray:
        return probabilities(logits, s.sampling)

    def _emit(self, s: _State, token: int) -> bool:
        """Accept one token; returns True when generation is finished."""
        if token in s.stop_ids:
            s.finish_reason = "stop"
            return True
        s.tokens.append(token)
        if len(s.tokens) - s.n_prompt >= s.max_new_tokens:
            s.finish_reason = "max_new_tokens"
        elif len(s.tokens) >= self.cfg.max_seq_len:
            s.finish_reason = "length"
        return s.finish_reason is not None
