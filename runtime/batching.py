"""Continuous batching of `standard` over one loaded model (docs/design.md section 2,
"Continuous batches"): a sequence joins a running batch at a step boundary and leaves it
when it finishes (stop token, stop string, max_new_tokens, the context's end, or its
caller removing it), and the other rows go on.

Each row is one request with its own sampling parameters, random generator and stop
conditions. A row joins through its own prefill (a one-row base call on its prompt, which
gives its first token); from the next step on it takes part in every batched base call:
one new token per row, each at its own position. A row's tokens are the ones the same
request gets run alone through Generator.stream (greedy: tested token for token).

Where the rows' caches live depends on the engine's KV contract:

- inplace-kv-v1 (the fused CPU engines): one pool of `slots` fixed rows. A row keeps one
  slot from its prefill (a one-row view of the pool) to its end; a batched step runs over
  slots 0 .. the highest busy one, each row at its own length (its mask row's ones, which
  the backend turns into GroupQueryAttention's per-row seqlens_k). A free slot below the
  highest busy one decodes a dummy token at its position 0 and is ignored. Joining and
  leaving copy nothing.
- concat-kv-v1 (the exported graphs): the rows' caches as one left-padded batch, as in
  Generator.generate_batch. When the rows change, the batch is re-assembled in one copy:
  a new row's prefill cache placed right-aligned, a finished row dropped, the padding that
  every row has cut away. Every step of these graphs copies the whole cache anyway
  (present = concat(past, new)), so a change costs about one more step's copy.

Only standard batches: alternate's base and module calls take two new tokens per row, and
ONNX Runtime's GroupQueryAttention refuses more than one new token over a past in a batch
of several rows; verify's rows would accept different numbers of drafts. Those run one at
a time (serve/scheduler.py interleaves them with the batch).

Not thread-safe: one thread owns a BatchDecoder (the Generator itself may serve others).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import numpy as np

from runtime import contract as C
from runtime.errors import GenerationError
from runtime.generator import Result
from runtime.kv import BASE, KVPool, prompt_feeds
from runtime.request import Request, Stats
from runtime.sampling import draw, probabilities

BATCHED = ("standard",)  # the strategies a BatchDecoder decodes


@dataclass(eq=False)
class Row:
    """One sequence of a batch. Its caller reads `tokens` as they grow and `finish_reason`
    once set (the row has then left the batch)."""

    prompt: list[int]
    request: Request
    stop_ids: frozenset[int]
    rng: np.random.Generator
    started: float = field(default_factory=time.perf_counter)
    tokens: list[int] = field(default_factory=list)  # generated, without a stop token
    finish_reason: str | None = None  # "stop", "max_new_tokens" or "length"
    stats: Stats = field(default_factory=Stats)
    first_token_at: float | None = None
    slot: int = -1  # inplace-kv-v1: its row of the pool while it holds one

    @property
    def position(self) -> int:
        """Where the last emitted token goes: the next step feeds it there. Every earlier
        position is in the row's cache."""
        return len(self.prompt) + len(self.tokens) - 1

    def result(self, codec=None) -> Result:
        text = None
        if codec is not None:
            text = codec.decode(self.tokens)
            cuts = [text.find(stop) for stop in self.request.stop_strings if stop in text]
            text = text[:min(cuts)] if cuts else text
        return Result(list(self.tokens), self.finish_reason, self.stats, text)


class BatchDecoder:
    """Standard decoding of up to `slots` sequences at once over `generator`'s backend:
    `add` queues a sequence, each `step` is one step boundary, `remove` takes one out."""

    def __init__(self, generator, slots: int):
        """Raises: GenerationError for a backend without a host KV cache of either contract
        (TensorRT: one prompt at a time)."""
        if not self.supports(generator):
            raise GenerationError("continuous batching needs an ONNX Runtime engine (the exported graphs or a "
                                  "`cli.py build --target cpu` engine)")
        assert slots >= 1
        self.generator, self.slots = generator, slots
        if generator.backend.kv_contract == C.INPLACE_CONTRACT_NAME:
            self._caches = _SlotCaches(generator, slots)
        else:
            self._caches = _PaddedCaches(generator)
        self.rows: list[Row] = []  # decoding: in every batched step
        self.joining: list[Row] = []  # added, prefilled at the next step

    @staticmethod
    def supports(generator) -> bool:
        """Whether `generator`'s backend keeps host KV caches a batch can be built from."""
        return getattr(generator.backend, "kv_contract", None) in C.KV_CONTRACTS

    def __len__(self) -> int:
        return len(self.rows) + len(self.joining)

    def add(self, prompt_ids: list[int], request: Request) -> Row:
        """Queue a sequence; it joins at the next step boundary.

        Raises:
            GenerationError: an invalid prompt or request (as Generator.stream), a strategy
                that does not batch (BATCHED), or every slot taken.
        """
        prompt = list(prompt_ids)
        self.generator._check([prompt], request)
        if request.strategy not in BATCHED:
            raise GenerationError(f"{request.strategy} does not batch; batched strategies: {', '.join(BATCHED)}")
        if len(self) >= self.slots:
            raise GenerationError(f"the batch is full ({self.slots} sequences)")
        stop = request.stop_token_ids
        row = Row(prompt, request, frozenset(self.generator.artifacts.eos_token_ids if stop is None else stop),
                  np.random.default_rng(request.sampling.seed))
        row.stats.prompt_tokens = len(prompt)
        self.joining.append(row)
        return row

    def remove(self, row: Row) -> None:
        """Take a row out between steps (its caller went away); the others go on."""
        for rows in (self.rows, self.joining):
            if row in rows:
                rows.remove(row)
        self._caches.release(row)

    def step(self) -> list[Row]:
        """One step boundary: a batched base call gives every decoding row its next token,
        then every joining row runs its prefill, which gives its first. Returns the rows
        that finished (they have left the batch and freed their slots)."""
        finished = []
        if self.rows:
            logits = self._caches.step(self.rows)  # (rows, V)
            for row, row_logits in zip(self.rows, logits):
                row.stats.base_calls += 1
                self._emit(row, self._draw(row, row_logits))
            finished += [row for row in self.rows if row.finish_reason is not None]
        joining, self.joining = self.joining, []
        for row in joining:
            row.started = time.perf_counter()
            row_logits = self._caches.prefill(row)
            row.stats.base_calls += 1
            self._emit(row, self._draw(row, row_logits))
            (finished if row.finish_reason is not None else self.rows).append(row)
        for row in finished:
            self.remove(row)
        return finished

    @staticmethod
    def _draw(row: Row, logits: np.ndarray) -> int:
        """As Generator._draw, per row: the argmax under greedy, else a draw from the row's
        own distribution with its own random generator."""
        if row.request.sampling.greedy:
            return int(logits.argmax())
        return draw(probabilities(logits, row.request.sampling), row.rng)

    def _emit(self, row: Row, token: int) -> None:
        """As Generator._emit for one row."""
        now = time.perf_counter()
        if row.first_token_at is None:
            row.first_token_at = now
            row.stats.prefill_seconds = now - row.started
        row.stats.decode_seconds = now - row.first_token_at
        if token in row.stop_ids:
            row.finish_reason = "stop"
            return
        row.tokens.append(token)
        row.stats.generated_tokens = len(row.tokens)
        row.finish_reason = self.generator._finish_after(row.request, row.tokens, row.position + 1)


class _SlotCaches:
    """inplace-kv-v1: one pool of `slots` rows, a slot per sequence (see the module's docstring)."""

    def __init__(self, generator, slots: int):
        self.backend = generator.backend
        self.pool = self.backend.new_kv_slots(generator.dims, slots, generator.capacity)
        self.free = list(range(slots))  # a heap: the lowest free slot first keeps the busy ones packed
        self._views: dict[int, object] = {}  # n -> the pool's rows 0 .. n-1, bound once

    def prefill(self, row: Row) -> np.ndarray:
        """The prompt on a free slot (a one-row view); the logits (V,) after it."""
        row.slot = heapq.heappop(self.free)
        view = self.pool.rows(row.slot, row.slot + 1)
        try:
            out = self.backend.run(C.FULL_STEP, {**prompt_feeds(row.prompt, 1), **view.feeds(BASE)},
                                   view.output_buffers(BASE))
            return out[C.LOGITS][0, -1].copy()
        finally:
            view.close()  # a fresh view per prefill: its output buffers are sized by the prompt

    def release(self, row: Row) -> None:
        if row.slot >= 0:
            heapq.heappush(self.free, row.slot)
            row.slot = -1

    def step(self, rows: list[Row]) -> np.ndarray:
        """One new token per row at its own position, over slots 0 .. the highest busy one;
        the logits (rows, V) in `rows`' order."""
        n = max(row.slot for row in rows) + 1
        view = self._views.get(n)
        if view is None:
            view = self._views[n] = self.pool.rows(0, n)
        ids = np.zeros((n, 1), dtype=np.int64)  # a free slot: token 0 at its position 0
        positions = np.zeros((n, 1), dtype=np.int64)
        for row in rows:
            ids[row.slot], positions[row.slot] = row.tokens[-1], row.position
        totals = positions[:, 0] + 1
        mask = (np.arange(totals.max())[None, :] < totals[:, None]).astype(np.int64)  # (n, total): right-padded
        out = self.backend.run(C.FULL_STEP, {
            C.INPUT_IDS: ids, C.POSITION_IDS: positions, C.ATTENTION_MASK: mask,
            C.NUM_LOGITS_INPUT: np.array([1], dtype=np.int64), **view.feeds(BASE)}, view.output_buffers(BASE))
        return out[C.LOGITS][[row.slot for row in rows], -1]  # a copy: the buffer is reused


class _PaddedCaches:
    """concat-kv-v1: the rows' caches left-padded into one batch (see the module's docstring)."""

    def __init__(self, generator):
        self.backend, self.dims, self.capacity = generator.backend, generator.dims, generator.capacity
        self.layers = C.full_step(self.dims).kv_layers
        self.members: list[Row] = []  # the batch's rows, in order
        self.past: dict[str, np.ndarray] = {}  # past_key_values.* -> (rows, H_kv, width, D)
        self.pad = np.zeros(0, dtype=np.int64)  # left padding per member
        self.fresh: dict[Row, dict[str, np.ndarray]] = {}  # prefilled rows not yet in the batch

    def prefill(self, row: Row) -> np.ndarray:
        """The prompt alone; its cache waits in `fresh` for the next step. Logits (V,)."""
        pool = KVPool(self.dims, 1, self.capacity)
        out = self.backend.run(C.FULL_STEP, {**prompt_feeds(row.prompt, 1), **pool.feeds(BASE)})
        self.fresh[row] = {past(i): out[present(i)] for i in self.layers
                           for past, present in ((C.past_key, C.present_key), (C.past_value, C.present_value))}
        return out[C.LOGITS][0, -1]

    def release(self, row: Row) -> None:
        self.fresh.pop(row, None)  # a member leaves at the next re-assembly

    def _assemble(self, rows: list[Row]) -> None:
        """The batch of `rows`: each one's cache right-aligned in a width of the longest."""
        lengths = np.array([row.position for row in rows])  # cached positions per row
        width = int(lengths.max())
        index = {id(row): i for i, row in enumerate(self.members)}
        old_width = next(iter(self.past.values())).shape[2] if self.past else 0
        past = {}
        for name in (name(i) for i in self.layers for name in (C.past_key, C.past_value)):
            batch = np.zeros((len(rows), self.dims.n_kv_heads, width, self.dims.head_dim), dtype=self.dims.dtype)
            for i, (row, n) in enumerate(zip(rows, lengths)):
                if row in self.fresh:
                    batch[i, :, width - n:] = self.fresh[row][name][0]  # (H_kv, n, D)
                else:
                    batch[i, :, width - n:] = self.past[name][index[id(row)], :, old_width - n:]
            past[name] = batch  # zeros on the padding: masked, and finite
        for row in rows:
            self.fresh.pop(row, None)
        self.past, self.members, self.pad = past, list(rows), width - lengths

    def step(self, rows: list[Row]) -> np.ndarray:
        """One new token per row; the logits (rows, V) in `rows`' order."""
        if len(rows) != len(self.members) or any(a is not b for a, b in zip(rows, self.members)):
            self._assemble(rows)
        width = next(iter(self.past.values())).shape[2]
        out = self.backend.run(C.FULL_STEP, {
            C.INPUT_IDS: np.array([[row.tokens[-1]] for row in rows], dtype=np.int64),
            C.POSITION_IDS: np.array([[row.position] for row in rows], dtype=np.int64),
            C.ATTENTION_MASK: (np.arange(width + 1)[None, :] >= self.pad[:, None]).astype(np.int64),
            C.NUM_LOGITS_INPUT: np.array([1], dtype=np.int64), **self.past})
        for i in self.layers:
            self.past[C.past_key(i)], self.past[C.past_value(i)] = out[C.present_key(i)], out[C.present_value(i)]
        return out[C.LOGITS][:, -1]
