"""Concurrency over one loaded model: a bounded queue and one model thread that decodes up
to `max_batch` generations at once.

Generations of a strategy the runtime batches (runtime.batching.BATCHED: standard) are rows
of one continuous batch (runtime.batching.BatchDecoder): a request joins it at the next
step boundary through its own prefill, every step is one batched base call that gives each
row its next token, and a row that finishes, or whose client goes away, leaves without
stopping the others. The other strategies (alternate, verify; and every strategy on a
backend the batch decoder does not take, TensorRT) run one at a time: each is a
Generator stream of batch one, advanced by one token per round, in turn with the batch's
step. All graph calls run on this one thread, so the cores go to one call at a time.

`max_batch` bounds the generations decoding at once (batch rows and streams together: the
batch's slots). A request that finds them all taken waits in the queue; one that finds the
queue full as well is refused (429).

Events cross from the model thread to the request's event loop through
`loop.call_soon_threadsafe`; a client that goes away sets the job's `cancelled` flag, and
the model thread takes its generation out before its next token (or never starts it).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field

from runtime.batching import BATCHED, BatchDecoder, Row
from runtime.tokenizer import TextDelta
from serve.metrics import Metrics
from serve.protocol import APIError, Spec

log = logging.getLogger(__name__)


@dataclass
class Done:
    """The last event of a job: the text not yet sent, how it finished, and the runtime's stats."""

    text: str
    finish_reason: str
    completion_tokens: int
    stats: object


@dataclass
class Failed:
    message: str


@dataclass
class Job:
    spec: Spec
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # str (streamed text), then Done or Failed
    cancelled: threading.Event = field(default_factory=threading.Event)

    def push(self, event) -> None:
        """From the model thread: hand an event to the request's coroutine."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop closed (server shutting down): nobody is listening
            self.cancelled.set()


@dataclass(eq=False)
class _Running:
    """A job decoding: a row of the batch, or a stream of its own."""

    job: Job
    delta: TextDelta | None  # streamed requests: the text released so far
    row: Row | None = None
    stream: object = None  # runtime.generator.Stream
    tokens: object = None  # the stream's token iterator
    sent: int = 0  # the row's tokens handed to `delta`


class Scheduler:
    """One model thread over one Generator: at most `max_batch` generations at once, at
    most `max_queue` requests waiting."""

    def __init__(self, generator, max_batch: int, max_queue: int, metrics: Metrics):
        self.generator, self.max_batch, self.max_queue, self.metrics = generator, max_batch, max_queue, metrics
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closing = threading.Event()
        self._batching = BatchDecoder.supports(generator)
        self._decoder = BatchDecoder(generator, max_batch) if self._batching else None
        self._running: list[_Running] = []
        self._thread = threading.Thread(target=self._work, name="serve-model", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Raises: APIError 429 when max_batch requests run and max_queue more wait."""
        with self._lock:
            if self._in_flight >= self.max_batch + self.max_queue:
                raise APIError(429, f"the server is busy: {self.max_batch} requests running and {self.max_queue} "
                                    f"waiting; retry later", code="queue_full", kind="rate_limit_error")
            self._in_flight += 1
        self.metrics.change(queued=1)
        self._queue.put(job)

    def close(self) -> None:
        """Cancel what waits or runs (each generation stops before its next token) and join
        the model thread."""
        self._closing.set()
        self._queue.put(None)
        self._thread.join()

    # The model thread.

    def _work(self) -> None:
        while self._admit():
            for running in [r for r in self._running if r.job.cancelled.is_set()]:
                self._end(running, cancelled=True)
            if self._decoder is not None and len(self._decoder):
                self._step_batch()
            for running in [r for r in self._running if r.stream is not None]:
                self._step_stream(running)
        for running in list(self._running):
            self._end(running, cancelled=True)
        while True:  # what still waits is cancelled at once: the server is closing
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._start(job)

    def _admit(self) -> bool:
        """Start queued jobs while there is room, waiting for one when nothing runs; False
        once the server is closing."""
        while len(self._running) < self.max_batch and not self._closing.is_set():
            try:
                job = self._queue.get(block=not self._running)
            except queue.Empty:
                break
            if job is None:
                break
            self._start(job)
        return not self._closing.is_set()

    def _start(self, job: Job) -> None:
        self.metrics.change(queued=-1, running=1)
        running = _Running(job, TextDelta(self.generator.codec, job.spec.request.stop_strings)
                           if job.spec.stream else None)
        self._running.append(running)
        if job.cancelled.is_set() or self._closing.is_set():
            self._end(running, cancelled=True)
            return
        spec = job.spec
        try:
            if self._batching and spec.request.strategy in BATCHED:
                running.row = self._decoder.add(spec.prompt_ids, spec.request)
            else:
                running.stream = self.generator.stream(spec.prompt_ids, spec.request)
                running.tokens = iter(running.stream)
        except Exception:  # a bug: logged here, answered without the traceback
            self._fail(running)

    def _step_batch(self) -> None:
        rows = len(self._decoder.rows)
        try:
            self._decoder.step()
        except Exception:  # a backend failure: every row fails, and a fresh batch starts
            for running in [r for r in self._running if r.row is not None]:
                self._fail(running)
            self._decoder = BatchDecoder(self.generator, self.max_batch)
            return
        if rows:
            self.metrics.add(batched_steps=1, batched_rows=rows)
        for running in [r for r in self._running if r.row is not None]:
            row = running.row
            if running.delta is not None:
                self._send(running, row.tokens[running.sent:])
            running.sent = len(row.tokens)
            if row.finish_reason is not None:
                self._finish(running, row.result(self.generator.codec))

    def _step_stream(self, running: _Running) -> None:
        """One more token of a one-at-a-time generation."""
        try:
            token = next(running.tokens, None)
            if token is None:
                self._finish(running, running.stream.result())
            elif running.delta is not None:
                self._send(running, [token])
        except Exception:
            self._fail(running)

    def _send(self, running: _Running, tokens: list[int]) -> None:
        for token in tokens:
            if text := running.delta.add(token):
                running.job.push(text)

    def _finish(self, running: _Running, result) -> None:
        self.metrics.finished(result.stats)
        running.job.push(Done(running.delta.rest(result.text) if running.delta else result.text,
                              result.finish_reason, len(result.tokens), result.stats))
        self._end(running)

    def _fail(self, running: _Running) -> None:
        log.exception("generation %s failed", running.job.spec.id)
        running.job.push(Failed("the generation failed; the server's log has the details"))
        self._end(running)

    def _end(self, running: _Running, cancelled: bool = False) -> None:
        """Take a job out (cancelled: its client went away or the server is stopping)."""
        if cancelled:
            if running.row is not None:
                self._decoder.remove(running.row)
            if running.stream is not None:
                running.stream.close()  # frees its KV pool now
            self.metrics.add(generations_cancelled=1)
            running.job.push(Failed("the generation was cancelled: the client went away or the server is stopping"))
        self._running.remove(running)
        self.metrics.change(running=-1)
        with self._lock:
            self._in_flight -= 1
