"""Concurrency over one loaded model: a bounded queue and a pool of worker threads, each
decoding one request at a time through the shared, thread-safe Generator.

What this is and is not: generations run side by side on `max_batch` threads, each with its
own decoding state and KV cache, and the backend's sessions (ONNX Runtime releases the GIL
while a graph runs) are shared. They are not fused into one batched graph call: the runtime
batches only a fixed set of prompts in lockstep (`Generator.generate_batch`, standard and
alternate, on the exported graphs; the fused CPU engines decode one prompt at a time), so a
request could not join a batch at a step boundary, nor leave one early. A request that
finds every worker busy waits in the queue; one that finds the queue full is refused (429).

Events cross from a worker thread to the request's event loop through
`loop.call_soon_threadsafe`; a client that goes away sets the job's `cancelled` flag, and
the worker stops the generation before its next token (or never starts it).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field

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
        """From the worker thread: hand an event to the request's coroutine."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop closed (server shutting down): nobody is listening
            self.cancelled.set()


class Scheduler:
    """`max_batch` workers over one Generator; at most `max_queue` requests wait."""

    def __init__(self, generator, max_batch: int, max_queue: int, metrics: Metrics):
        self.generator, self.max_batch, self.max_queue, self.metrics = generator, max_batch, max_queue, metrics
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closing = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"serve-worker-{i}", daemon=True)
                         for i in range(max_batch)]
        for thread in self._threads:
            thread.start()

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
        the workers."""
        self._closing.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            self.metrics.change(queued=-1, running=1)
            try:
                self._run(job)
            finally:
                self.metrics.change(running=-1)
                with self._lock:
                    self._in_flight -= 1

    def _stopped(self, job: Job) -> bool:
        return job.cancelled.is_set() or self._closing.is_set()

    def _cancel(self, job: Job) -> None:
        self.metrics.add(generations_cancelled=1)
        job.push(Failed("the generation was cancelled: the client went away or the server is stopping"))

    def _run(self, job: Job) -> None:
        if self._stopped(job):
            self._cancel(job)
            return
        spec = job.spec
        try:
            stream = self.generator.stream(spec.prompt_ids, spec.request)
            delta = TextDelta(self.generator.codec, spec.request.stop_strings) if spec.stream else None
            for token in stream:
                if self._stopped(job):
                    stream.close()
                    self._cancel(job)
                    return
                if delta is not None and (text := delta.add(token)):
                    job.push(text)
            result = stream.result()
        except Exception:  # a bug or a backend failure: logged here, answered without the traceback
            log.exception("generation %s failed", spec.id)
            job.push(Failed("the generation failed; the server's log has the details"))
            return
        self.metrics.finished(result.stats)
        job.push(Done(delta.rest(result.text) if delta else result.text, result.finish_reason,
                      len(result.tokens), result.stats))
