"""The Generator: prompt in, tokens out, alternating the two engines (docs/design.md sections 2, 6).

The schedules read as in the PyTorch reference decoder (recycle_export/reference.py), over
a batch whose rows move in lockstep: every cache holds the same positions for every row,
prompts are left-padded, and a row that finished keeps decoding (its tokens ignored)
until all rows are done. verify decodes one prompt at a time, since rows would accept
different numbers of drafts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.costs import StepCosts
from runtime.errors import GenerationError
from runtime.drafts import AnswerStore, make_drafts
from runtime.kv import BASE, MODULE, KVPool
from runtime.limits import check_decode_memory
from runtime.request import STRATEGIES, Request, Stats, check_request, check_threads  # noqa: F401  (the public names)
from runtime.sampling import accept_draft, confident, draw, probabilities

@dataclass
class Result:
    tokens: list[int]  # generated tokens, without a stop token
    finish_reason: str  # "stop", "max_new_tokens" or "length"
    stats: Stats
    text: str | None = None  # decoded (cut before a stop string) when the Generator has a codec


@dataclass
class _State:
    tokens: np.ndarray  # (B, capacity) int64: left padding, prompt, generated
    mask: np.ndarray  # (B, capacity) int64: 0 on left padding, 1 from each row's first token on
    pad: np.ndarray  # (B,) left padding per row
    pool: KVPool  # or a backend's device pool with the same interface; also keeps the base's h_j
    request: Request
    stop_ids: frozenset[int]
    rng: np.random.Generator
    length: int  # positions filled in `tokens` (same for every row)
    prompt_end: int
    finish: list[str | None]  # per row
    n_tokens: list[int]  # generated tokens counted per row (frozen when the row finishes)
    stats: Stats = field(default_factory=Stats)
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    def unseen(self, cache: str) -> np.ndarray:
        """Tokens the cache has not consumed yet: (B, T)."""
        return self.tokens[:, self.pool.lengths[cache]:self.length]


class Stream:
    """Iterate to receive a one-prompt generation token by token; `result()` finishes it."""

    def __init__(self, steps: Iterator[np.ndarray], state: _State, finalize):
        self._steps, self._state, self._finalize = steps, state, finalize
        self._result: Result | None = None

    def __iter__(self) -> Iterator[int]:
        counted = 0
        for column in self._steps:
            if self._state.n_tokens[0] > counted:  # a stop token is not counted, nor yielded
                counted = self._state.n_tokens[0]
                yield int(column[0])

    def result(self) -> Result:
        if self._result is None:
            for _ in self._steps:
                pass
            self._result = self._finalize(self._state)[0]
        return self._result

    def close(self) -> None:
        """Stop the generation where it is (a server's client went away) and free its KV
        pool now; result() then reports the tokens generated so far."""
        self._steps.close()


class Generator:
    """Decode with a backend over one export's artifacts. Thread-safe: all decoding state
    lives in a per-call _State; the backend's sessions are shared."""

    def __init__(self, backend, artifacts: Artifacts, codec=None, store: AnswerStore | None = None,
                 costs: StepCosts | None = None):
        self.backend, self.artifacts, self.codec = backend, artifacts, codec
        self.store = store  # verify's answer store (runtime.drafts.AnswerStore), if the export has one
        self.costs = costs  # the engine's step costs by width (runtime.costs), if its build measured them
        self.dims = artifacts.dims
        self.capacity = artifacts.max_seq_len

    @classmethod
    def from_artifacts(cls, folder, engine: str | None = None, threads: int | None = None,
                       check_hashes: bool = True) -> "Generator":
        """Load an export folder; `engine` names a build under it (`cli.py build`), by
        default the exported graphs run under ONNX Runtime on the CPU.

        Raises:
            ArtifactError: the folder or engine is incomplete, changed, or incompatible.
            ConfigError: its max_seq_len needs more memory to decode than this machine has.
            GenerationError: `threads` outside 1..4 x the machine's cores.
            EngineBuildError: the engine's backend or device is missing here.
        """
        from runtime.backends import load_backend
        from runtime.engines import EngineInfo

        check_threads(threads)
        artifacts = Artifacts.load(folder, check_hashes)
        check_decode_memory(artifacts.dims, artifacts.max_seq_len,
                            "export again with a smaller --max-seq-len")
        info = EngineInfo.load(artifacts, engine, check_hashes) if engine else None
        codec = artifacts.codec() if artifacts.manifest.tokenizer else None
        return cls(load_backend(artifacts, info, threads), artifacts, codec, artifacts.answer_store(),
                   info.step_costs() if info else None)

    def close(self) -> None:
        """Free the backend's sessions and device memory; the Generator cannot run afterwards."""
        self.backend.close()

    def __enter__(self) -> "Generator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Public API.

    def encode(self, text: str, chat: bool = False) -> list[int]:
        """Raises: GenerationError without a tokenizer, for empty text, or --chat without a template."""
        if self.codec is None:
            raise GenerationError(f"{self.artifacts.folder} has no tokenizer; pass token ids")
        return self.codec.encode(text, chat=chat)

    def encode_messages(self, messages: list[dict]) -> list[int]:
        """A conversation through the chat template (TextCodec.encode_messages).

        Raises: GenerationError without a tokenizer or a chat template, or for no messages."""
        if self.codec is None:
            raise GenerationError(f"{self.artifacts.folder} has no tokenizer; pass token ids")
        return self.codec.encode_messages(messages)

    def stream(self, prompt_ids: list[int], request: Request = Request()) -> Stream:
        """Start generating after `prompt_ids`; iterate the Stream for tokens as they come.

        Raises:
            GenerationError: an invalid prompt or request (see generate_batch).
        """
        state = self._start([list(prompt_ids)], request)
        return Stream(self._run(state), state, self._finalize)

    def generate(self, prompt_ids: list[int], request: Request = Request()) -> Result:
        return self.stream(prompt_ids, request).result()

    def generate_batch(self, prompts: list[list[int]], request: Request = Request()) -> list[Result]:
        """Generate for several prompts at once (left-padded; standard and alternate).

        Raises:
            GenerationError: an empty prompt, one too long for the maximum sequence length,
                token ids outside the vocabulary, an unknown strategy, verify with more than
                one prompt, or max_new_tokens < 1.
        """
        state = self._start([list(p) for p in prompts], request)
        for _ in self._run(state):
            pass
        return self._finalize(state)

    # Set-up and tear-down.

    def _start(self, prompts: list[list[int]], request: Request) -> _State:
        self._check(prompts, request)
        batch, longest = len(prompts), max(len(p) for p in prompts)
        tokens = np.full((batch, self.capacity), self.artifacts.pad_token_id, dtype=np.int64)
        mask = np.zeros((batch, self.capacity), dtype=np.int64)
        pad = np.array([longest - len(p) for p in prompts])
        for row, prompt in enumerate(prompts):
            tokens[row, pad[row]:longest] = prompt
            mask[row, pad[row]:] = 1
        stop_ids = request.stop_token_ids
        state = _State(
            tokens, mask, pad, self.backend.new_kv_pool(self.dims, batch, self.capacity), request,
            frozenset(self.artifacts.eos_token_ids if stop_ids is None else stop_ids),
            np.random.default_rng(request.sampling.seed), longest, longest, [None] * batch, [0] * batch)
        state.stats.prompt_tokens = sum(len(p) for p in prompts)
        state.stats.batch = batch
        return state

    def _check(self, prompts: list[list[int]], request: Request) -> None:
        check_request(prompts, request, self.capacity, self.dims.vocab_size)
        if request.stop_strings and self.codec is None:
            raise GenerationError("stop strings need a tokenizer, and this export has none")

    def _run(self, s: _State) -> Iterator[np.ndarray]:
        try:
            yield from self._schedules[s.request.strategy](self, s)
            s.stats.decode_seconds = time.perf_counter() - (s.first_token_at or s.started)
        finally:
            s.pool.close()  # a device pool frees its buffers now, not when collected

    def _finalize(self, s: _State) -> list[Result]:
        results = []
        for row in range(s.batch):
            tokens = s.tokens[row, s.prompt_end:s.prompt_end + s.n_tokens[row]].tolist()
            text = self._cut_at_stop_string(self.codec.decode(tokens), s.request) if self.codec else None
            results.append(Result(tokens, s.finish[row], s.stats, text))
        return results

    @staticmethod
    def _cut_at_stop_string(text: str, request: Request) -> str:
        cuts = [text.find(stop) for stop in request.stop_strings if stop in text]
        return text[:min(cuts)] if cuts else text

    # The schedules (docs/design.md section 2), as in the reference decoder.

    def _standard(self, s: _State):
        logits = self._base_step(s, s.unseen(BASE))
        while not (yield from self._emit(s, self._draw(s, logits[:, -1]))):
            logits = self._base_step(s, s.unseen(BASE))

    def _alternate(self, s: _State):
        logits = self._base_step(s, s.unseen(BASE))
        while not (yield from self._emit(s, self._draw(s, logits[:, -1]))):
            module_logits = self._module_step(s)
            # The confidence gate: the module's token goes out unverified only when the module
            # is sure enough (on every row); otherwise the base produces that position itself.
            if all(confident(row, s.request.min_confidence) for row in module_logits):
                if (yield from self._emit(s, self._draw(s, module_logits))):
                    return
            logits = self._base_step(s, s.unseen(BASE))

    def _verify(self, s: _State):
        logits = self._base_step(s, s.unseen(BASE))
        if (yield from self._emit(s, self._draw(s, logits[:, -1]))):
            return
        while True:
            drafts, qs, source = make_drafts(
                s.tokens[0, :s.length], s.request.drafts, self.capacity - s.length,
                s.request.max_new_tokens - (s.length - s.prompt_end), s.stats, lambda room: self._module_chain(s, room),
                self.store, self.costs)
            ids = np.concatenate([s.unseen(BASE), [drafts]], axis=1).astype(np.int64)  # (1, 1 + k)
            logits = self._base_step(s, ids, num_logits=len(drafts) + 1)  # row i checks drafts[i]
            for i, (draft, q) in enumerate(zip(drafts, qs)):
                accepted, token = self._accept(s, draft, q, logits[0, i])
                if not accepted:
                    s.pool.rollback(BASE, len(drafts) - i)  # the base cache holds the rejected tail
                    if (yield from self._emit(s, np.array([token]))):
                        return
                    break
                s.stats.accepted(i, source)
                if (yield from self._emit(s, np.array([token]))):
                    return
            else:  # every draft accepted: the base's distribution after the last one is free
                if (yield from self._emit(s, self._draw(s, logits[:, len(drafts)]))):
                    return

    _schedules = {"standard": _standard, "alternate": _alternate, "verify": _verify}
    assert tuple(_schedules) == STRATEGIES

    # Named steps.

    def _positions(self, s: _State, start: int, end: int) -> np.ndarray:
        return np.maximum(np.arange(start, end)[None, :] - s.pad[:, None], 0)  # (B, T)

    def _base_step(self, s: _State, ids: np.ndarray, num_logits: int = 1) -> np.ndarray:
        """Full step on ids (B, T) at the base cache's next positions; logits (B, N, V)."""
        start = s.pool.lengths[BASE]
        end = start + ids.shape[1]
        out = self.backend.run(C.FULL_STEP, {
            C.INPUT_IDS: np.ascontiguousarray(ids), C.POSITION_IDS: self._positions(s, start, end),
            C.ATTENTION_MASK: s.mask[:, :end], C.NUM_LOGITS_INPUT: np.array([num_logits], dtype=np.int64),
            **s.pool.feeds(BASE)}, s.pool.output_buffers(BASE, hidden=True))
        s.pool.commit(BASE, out, ids.shape[1])
        s.pool.keep_hidden(start, out[C.HIDDEN_STATES])
        s.stats.base_calls += 1
        return out[C.LOGITS]

    def _module_step(self, s: _State) -> np.ndarray:
        """Recycle step on every token the module has not seen, each with h one position
        earlier (zero before a row's first token); logits (B, V) for the next token."""
        return self._module_verified(s)[0]

    def _module_verified(self, s: _State):
        """_module_step, also returning the module's module_hidden_states (B, T, dim; in the
        pool's memory, valid until its next module step)."""
        start, end = s.pool.lengths[MODULE], s.length
        return self._module_call(s, s.tokens[:, start:end], s.pool.module_hidden(s.pad, start, end))

    def _module_call(self, s: _State, ids: np.ndarray, prev):
        """The module on ids (B, T) paired with prev (B, T, dim; from the pool) at its
        cache's next positions; a copy of the logits (B, V) at the last position, and the
        module_hidden_states output."""
        start = s.pool.lengths[MODULE]
        end = start + ids.shape[1]
        out = self.backend.run(C.RECYCLE_STEP, {
            C.INPUT_IDS: np.ascontiguousarray(ids), C.HIDDEN_STATES: prev,
            C.POSITION_IDS: self._positions(s, start, end), C.ATTENTION_MASK: s.mask[:, :end],
            C.NUM_LOGITS_INPUT: np.array([1], dtype=np.int64), **s.pool.feeds(MODULE)},
            s.pool.output_buffers(MODULE, hidden=True))
        s.pool.commit(MODULE, out, end - start)
        s.stats.module_calls += 1
        return out[C.LOGITS][:, -1].copy(), out[C.MODULE_HIDDEN_STATES]

    def _module_chain(self, s: _State, room: int) -> tuple[list[int], list]:
        """Up to `room` drafts from the module: the first from the verified tokens, each
        next one from the module's own (g, draft), while the module's top probability for
        the position reaches min_probability. The chained positions leave the module cache
        again: they are recomputed from the base's h once verified."""
        logits, g = self._module_verified(s)
        drafts, qs, chained = [], [], 0
        if not confident(logits[0], s.request.drafts.min_probability):
            return drafts, qs  # not sure enough of even one draft: a plain base step is cheaper
        while True:
            draft, q = self._propose(s, logits[0])
            drafts.append(draft)
            qs.append(q)
            if len(drafts) == room:
                break
            logits, g = self._module_call(s, np.array([[draft]]), s.pool.chained_hidden(g))  # (g_j, d_{j+1})
            chained += 1
            if not confident(logits[0], s.request.drafts.min_probability):
                break
        s.pool.rollback(MODULE, chained)
        return drafts, qs

    def _probs(self, s: _State, logits: np.ndarray) -> np.ndarray:
        return probabilities(logits, s.request.sampling)

    def _draw(self, s: _State, logits: np.ndarray) -> np.ndarray:
        """One token per row from logits (B, V). Greedy is the argmax itself: the same token
        as drawing from its one-hot distribution, without building it."""
        if s.request.sampling.greedy:
            return logits.argmax(-1)
        return np.array([draw(self._probs(s, row), s.rng) for row in logits])

    def _propose(self, s: _State, logits: np.ndarray) -> tuple[int, np.ndarray | None]:
        """A draft from the module's logits (V,) and the distribution q it was drawn from
        (None under greedy, where only the argmax matters)."""
        if s.request.sampling.greedy:
            return int(logits.argmax()), None
        q = self._probs(s, logits)
        return draw(q, s.rng), q

    def _accept(self, s: _State, draft: int, q: np.ndarray | None, base_logits: np.ndarray) -> tuple[bool, int]:
        """The speculative acceptance test against the base's logits (V,) for the draft's
        position (q None: a deterministic lookup draft); greedy: accept iff the draft is
        the base's argmax, else emit the argmax."""
        if s.request.sampling.greedy:
            token = int(base_logits.argmax())
            return token == draft, token
        return accept_draft(draft, self._probs(s, base_logits), q, s.rng)

    def _emit(self, s: _State, column: np.ndarray):
        """Append one token per row, yield it, and return True when every row is done."""
        now = time.perf_counter()
        if s.first_token_at is None:
            s.first_token_at = now
            s.stats.prefill_seconds = now - s.started
        s.tokens[:, s.length] = column
        s.length += 1
        generated = s.length - s.prompt_end
        for row, token in enumerate(column):
            if s.finish[row] is not None:
                continue
            if token in s.stop_ids:
                s.finish[row] = "stop"
                continue
            s.n_tokens[row] = generated
            s.finish[row] = self._finish_after(s.request, s.tokens[row, s.prompt_end:s.length], s.length)
        s.stats.generated_tokens = sum(s.n_tokens)
        yield column
        return all(f is not None for f in s.finish)

    def _finish_after(self, request: Request, generated, length: int) -> str | None:
        """Why a row stops after emitting its last token (not a stop token), or None:
        `generated` is its output so far, `length` its positions, prompt included."""
        if request.stop_strings:
            text = self.codec.decode([int(t) for t in generated])
            if any(stop in text for stop in request.stop_strings):
                return "stop"
        if len(generated) >= request.max_new_tokens:
            return "max_new_tokens"
        if length >= self.capacity:
            return "length"
        return None
