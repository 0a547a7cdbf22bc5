"""What a base step costs by its width: measured once per engine at build time (engine.json
`step_costs`), so that verify drafts only as many tokens as are worth a wider step on that
engine (runtime.drafts.worth_drafting; docs/design.md section 2).

A step that checks k drafts takes k + 1 new tokens. On a float32 CPU engine that is nearly
free up to 16 new tokens (1.6x one token); on an int4 engine over a long prompt a 3-token step
already costs 1.6x one token. Also the timing loop benchmarks/step_latency.py uses.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from runtime import contract as C
from runtime.kv import BASE, MODULE

PASTS = (64, 512, 1536)  # past positions measured (those within the export's max_seq_len)
NEWS = (1, 2, 3, 4, 6, 8, 12, 16)  # new tokens per step measured (contract.DECODE_MAX_NEW at most)


@dataclass(frozen=True)
class StepCosts:
    """Milliseconds of a base step by past positions (rows) and new tokens (columns)."""

    pasts: tuple[int, ...]
    news: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]  # ms[i][j]: pasts[i] positions, news[j] new tokens

    def milliseconds(self, new: int, past: int) -> float:
        """A step of `new` tokens over `past` positions: linear in both between the measured
        points, clamped at their edges."""
        return _along(self.pasts, past, lambda i: _along(self.news, new, lambda j: self.ms[i][j]))

    def relative(self, new: int, past: int) -> float:
        """The cost of a step of `new` tokens over `past` positions, in steps of 1 token over
        as many: linear in both between the measured points, clamped at their edges."""
        return self.relative_widths(past)[min(max(new, 1), self.news[-1]) - 1]

    def relative_widths(self, past: int) -> list[float]:
        """relative(new, past) for new = 1 .. news[-1], at index new - 1: one interpolation
        over the pasts for all the widths a draft weighs (runtime.drafts.worth_drafting)."""
        ratios = [_along(self.pasts, past, lambda i: self.ms[i][j] / self.ms[i][0]) for j in range(len(self.news))]
        return [_along(self.news, new, lambda j: ratios[j]) for new in range(1, self.news[-1] + 1)]

    def to_json(self) -> dict:
        return {"pasts": list(self.pasts), "news": list(self.news), "ms": [list(row) for row in self.ms]}

    @classmethod
    def from_json(cls, f) -> "StepCosts":
        """From a runtime.records.Fields of engine.json's `step_costs`; fails naming the field."""
        pasts, news, ms = f.ints("pasts"), f.ints("news"), f.get("ms", list)
        if not pasts or not news or list(pasts) != sorted(set(pasts)) or list(news) != sorted(set(news)) or news[0] != 1:
            f.fail("pasts", "and news must be increasing, news from 1")
        if len(ms) != len(pasts) or any(not isinstance(row, list) or len(row) != len(news) or
                                        not all(isinstance(v, (int, float)) and v > 0 for v in row) for row in ms):
            f.fail("ms", f"must be {len(pasts)} rows of {len(news)} positive numbers")
        return cls(tuple(pasts), tuple(news), tuple(tuple(float(v) for v in row) for row in ms))


def _along(points: tuple[int, ...], x: float, value) -> float:
    """value(i) at x, interpolated linearly between points[i] (clamped at the ends)."""
    x = min(max(x, points[0]), points[-1])
    hi = next(i for i, p in enumerate(points) if p >= x)
    if points[hi] == x or hi == 0:
        return value(hi)
    lo = hi - 1
    return value(lo) + (value(hi) - value(lo)) * (x - points[lo]) / (points[hi] - points[lo])


def step_feeds(gen, pool, cache: str, new: int) -> dict:
    """Feeds of a step of `new` placeholder tokens at the cache's next positions."""
    start = pool.lengths[cache]
    f = {C.INPUT_IDS: np.ones((1, new), np.int64), C.POSITION_IDS: np.arange(start, start + new)[None],
         C.ATTENTION_MASK: np.ones((1, start + new), np.int64), C.NUM_LOGITS_INPUT: np.array([1], np.int64),
         **pool.feeds(cache)}
    if cache == MODULE:
        f[C.HIDDEN_STATES] = np.zeros((1, new, gen.dims.dim), dtype=gen.dims.dtype)
    return f


def step(gen, pool, cache: str, new: int) -> None:
    """One step of a runtime.generator.Generator's backend on `new` placeholder tokens."""
    graph = C.FULL_STEP if cache == BASE else C.RECYCLE_STEP
    out = gen.backend.run(graph, step_feeds(gen, pool, cache, new), pool.output_buffers(cache))
    pool.commit(cache, out, new)


def timed_steps(gen, pool, steps: dict, repeats: int, warmup: int = 3) -> dict:
    """Seconds of each step in `steps` (name -> (cache, new tokens)), interleaved round by
    round and rolled back after each, so every step sees the same past; the first `warmup`
    rounds are not kept."""
    times: dict = {name: [] for name in steps}
    for round_ in range(repeats + warmup):
        for name, (cache, new) in steps.items():
            start = time.perf_counter()
            step(gen, pool, cache, new)
            elapsed = time.perf_counter() - start
            pool.rollback(cache, new)
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def measure_step_costs(gen, repeats: int = 5, pasts: tuple[int, ...] = PASTS,
                       news: tuple[int, ...] = NEWS) -> StepCosts:
    """The base step's median milliseconds for each of `news` new tokens (those within
    contract.DECODE_MAX_NEW) over each of `pasts` past positions that fit the export, on
    `gen` (a runtime.generator.Generator)."""
    news = tuple(n for n in news if n <= C.DECODE_MAX_NEW)
    pasts = tuple(p for p in pasts if p + news[-1] <= gen.capacity) or (max(gen.capacity - news[-1], 1),)
    rows = []
    for past in pasts:
        pool = gen.backend.new_kv_pool(gen.dims, 1, past + news[-1])
        try:
            step(gen, pool, BASE, past)  # the prefill: a cache of `past` positions
            times = timed_steps(gen, pool, {new: (BASE, new) for new in news}, repeats)
        finally:
            pool.close()
        rows.append(tuple(round(statistics.median(times[new]) * 1e3, 3) for new in news))
    return StepCosts(pasts, news, tuple(rows))
