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
from runtime.costs import StepCosts
from runtime.drafts import AnswerStore, make_drafts
from runtime.request import STRATEGIES, Request, Stats, check_request  # the runtime's records
from runtime.sampling import accept_draft, confident, draw, probabilities

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
    request: Request
    stop_ids: set[int]  # the request's, else the model's end-of-sequence tokens
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

    def __init__(self, model: RecycleGPT, eos_token_ids: tuple[int, ...] = (), store: AnswerStore | None = None,
                 costs: StepCosts | None = None):
        self.model = model.eval()
        self.cfg = model.cfg
        self.eos_token_ids = tuple(eos_token_ids)  # a Request's stop tokens when it names none
        # verify's answer store and an engine's step costs: the same as the runtime's under test
        self.store, self.costs = store, costs

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], request: Request = Request()) -> Generation:
        """Generate up to request.max_new_tokens after prompt_ids (stop strings are the
        runtime's business: the reference decodes token ids only).

        Raises:
            GenerationError: an invalid prompt or request (runtime.request.check_request).
        """
        check_request([list(prompt_ids)], request, self.cfg.max_seq_len, self.cfg.vocab_size)
        stop_ids = self.eos_token_ids if request.stop_token_ids is None else request.stop_token_ids
        s = _State(list(prompt_ids), len(prompt_ids), request, set(stop_ids), np.random.default_rng(request.sampling.seed),
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
            if confident(module_logits, s.request.min_confidence):  # the confidence gate
                if self._emit(s, draw(self._probs(s, module_logits), s.rng)):
                    return
            logits = self._base_step(s, s.tokens[s.base_len:])

    def _verify(self, s: _State) -> None:
        logits = self._base_step(s, s.tokens[s.base_len:])
        if self._emit(s, draw(self._probs(s, logits[-1]), s.rng)):
            return
        while True:
            drafts, qs, source = make_drafts(
                np.array(s.tokens), s.request.drafts, self.cfg.max_seq_len - len(s.tokens),
                s.request.max_new_tokens - (len(s.tokens) - s.n_prompt), s.stats, lambda room: self._module_chain(s, room),
                self.store, self.costs)
            logits = self._base_step(s, s.tokens[s.base_len:] + drafts, num_logits=len(drafts) + 1)
            for i, (draft, q) in enumerate(zip(drafts, qs)):
                accepted, token = accept_draft(draft, self._probs(s, logits[i]), q, s.rng)
                if not accepted:
                    self._rollback_base(s, len(drafts) - i)  # the base cache holds the rejected tail
                    if self._emit(s, token):
                        return
                    break
                s.stats.accepted(i, source)
                if self._emit(s, token):
                    return
            else:  # every draft accepted: the base's distribution after the last one is free
                if self._emit(s, draw(self._probs(s, logits[len(drafts)]), s.rng)):
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
        return self._module_verified(s)[0]

    def _module_verified(self, s: _State) -> tuple[np.ndarray, torch.Tensor]:
        """_module_step, also returning the module's own state g (dim,) at the last token."""
        start, total = s.module_len, len(s.tokens)
        zero = torch.zeros(self.cfg.dim, dtype=s.hidden[0].dtype)
        prev = torch.stack([s.hidden[j - 1] if j > 0 else zero for j in range(start, total)])  # (T, dim)
        assert total - 1 <= s.base_len, "the module needs h_{j-1} for every token it consumes"
        return self._module_call(s, s.tokens[start:total], prev)

    def _module_call(self, s: _State, ids: list[int], prev: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """The module on ids paired with prev (T, dim) at its cache's next positions; the
        logits (V,) and g (dim,) at the last one."""
        start, total = s.module_len, s.module_len + len(ids)
        out = self.model.recycle_step(
            torch.tensor([ids]), prev[None], torch.arange(start, total)[None],
            torch.ones(1, total, dtype=torch.long), s.module_kv)
        s.module_kv, s.module_len = out.present, total
        s.stats.module_calls += 1
        s.calls.append(Call("module", list(range(start, total)), list(ids), prev))
        return out.logits[0, -1].double().numpy(), out.hidden[0, -1]

    def _module_chain(self, s: _State, room: int) -> tuple[list[int], list]:
        """Up to `room` module drafts, each next one from the module's own (g, draft); the
        chained positions leave the module cache again."""
        logits, g = self._module_verified(s)
        drafts, qs, chained = [], [], 0
        if not confident(logits, s.request.drafts.min_probability):
            return drafts, qs
        while True:
            q = self._probs(s, logits)
            draft = draw(q, s.rng)
            drafts.append(draft)
            qs.append(q)
            if len(drafts) == room:
                break
            logits, g = self._module_call(s, [draft], g[None])  # (g_j, d_{j+1})
            chained += 1
            if not confident(logits, s.request.drafts.min_probability):
                break
        keep = s.module_len - chained
        s.module_kv = [(k[:, :, :keep], v[:, :, :keep]) for k, v in s.module_kv]
        s.module_len = keep
        return drafts, qs

    def _rollback_base(self, s: _State, n: int) -> None:
        keep = s.base_len - n
        s.base_kv = [(k[:, :, :keep], v[:, :, :keep]) for k, v in s.base_kv]
        del s.hidden[keep:]

    def _probs(self, s: _State, logits: np.ndarray) -> np.ndarray:
        return probabilities(logits, s.request.sampling)

    def _emit(self, s: _State, token: int) -> bool:
        """Accept one token; returns True when generation is finished."""
        if token in s.stop_ids:
            s.finish_reason = "stop"
            return True
        s.tokens.append(token)
        if len(s.tokens) - s.n_prompt >= s.request.max_new_tokens:
            s.finish_reason = "max_new_tokens"
        elif len(s.tokens) >= self.cfg.max_seq_len:
            s.finish_reason = "length"
        return s.finish_reason is not None
