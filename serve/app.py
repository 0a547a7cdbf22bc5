"""The HTTP server: OpenAI-compatible endpoints over one loaded Generator.

Stack: Starlette (routing, requests, streaming responses) on uvicorn (the ASGI server).
Both are Encode's, widely deployed (FastAPI is Starlette underneath; vLLM and many others
serve through uvicorn) and small: Starlette needs only anyio. FastAPI's pydantic models
would add a second validation layer whose errors we would have to rewrite into OpenAI's
shape; serve/protocol.py checks each field itself and names it, so plain Starlette is
enough. Server-sent events are written by hand (`data: {json}` lines): the format is two
lines of code and needs no package.

Security defaults: the server binds 127.0.0.1 unless told otherwise; with an API key every
endpoint but /health wants `Authorization: Bearer KEY` (compared in constant time); the chat
template renders in Jinja's sandbox (runtime/tokenizer.py); no endpoint reads or writes a
file a request names; a body over the limit is refused before it is read in full.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from runtime.errors import ServerError
from serve.metrics import Metrics
from serve.protocol import APIError, Spec, chunk, parse, response, usage_chunk
from serve.scheduler import Done, Job, Scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """How the server runs (cli.py serve's options), checked by `check`."""

    model_id: str
    strategy: str = "verify"
    max_batch: int = 2  # generations decoding at once (the continuous batch's slots)
    max_queue: int = 64
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_tokens: int | None = None  # largest max_tokens accepted (None: the model's context)

    def check(self) -> None:
        """Raises: ServerError naming the option."""
        from runtime.request import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ServerError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not 1 <= self.max_batch <= 256:
            raise ServerError(f"--max-batch must be in 1..256, got {self.max_batch}")
        if not 0 <= self.max_queue <= 100_000:
            raise ServerError(f"--max-queue must be in 0..100000, got {self.max_queue}")
        if self.api_key is not None and not self.api_key.strip():
            raise ServerError("--api-key must not be empty")
        if self.max_body_bytes < 1024:
            raise ServerError(f"--max-body-bytes must be at least 1024, got {self.max_body_bytes}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ServerError(f"--max-tokens must be >= 1, got {self.max_tokens}")


def create_app(generator, settings: Settings) -> Starlette:
    """The ASGI application over a loaded Generator (the caller closes it afterwards).

    Raises: ServerError for invalid settings or an export without a tokenizer."""
    settings.check()
    if generator.codec is None:
        raise ServerError(f"{generator.artifacts.folder} has no tokenizer.json, so it cannot answer text requests")
    metrics = Metrics(settings.max_batch, settings.max_queue)
    scheduler = Scheduler(generator, settings.max_batch, settings.max_queue, metrics)
    max_tokens = min(settings.max_tokens or generator.capacity, generator.capacity)
    started = int(time.time())

    def endpoint(name: str, handler, protected: bool = True):
        """A route's handler with the API key check, OpenAI-shaped errors and the request count."""
        async def run(request: Request):
            try:
                if protected:
                    _check_key(request, settings.api_key)
                answer = await handler(request)
            except APIError as exc:
                answer = JSONResponse(exc.body(), exc.status)
            metrics.request(name, answer.status_code)
            return answer
        return run

    async def completions(request: Request, kind: str):
        body = await _read_json(request, settings.max_body_bytes)
        spec = parse(kind, body, generator, settings.model_id, settings.strategy, max_tokens)
        job = Job(spec, asyncio.get_running_loop())
        scheduler.submit(job)
        if spec.stream:
            return StreamingResponse(_events(job, settings.model_id), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _answer(request, job, settings.model_id)

    async def chat(request: Request):
        return await completions(request, "chat")

    async def legacy(request: Request):
        return await completions(request, "completion")

    def model_card() -> dict:
        return {"id": settings.model_id, "object": "model", "created": started, "owned_by": "recycle-export"}

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request):
        if request.path_params["name"] != settings.model_id:
            raise APIError(404, f"the model {request.path_params['name']!r} does not exist", "model",
                           "model_not_found")
        return JSONResponse(model_card())

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": settings.model_id, "queue_depth": metrics.queued,
                             "batch_size": metrics.running})

    async def prometheus(request: Request):
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    async def not_found(request: Request, exc: HTTPException):
        status = exc.status_code
        message = (f"no such path: {request.method} {request.url.path}" if status == 404 else
                   f"{request.method} is not allowed on {request.url.path}" if status == 405 else str(exc.detail))
        metrics.request("other", status)
        return JSONResponse(APIError(status, message, code="not_found" if status == 404 else None).body(), status)

    async def server_error(request: Request, exc: Exception):
        log.exception("unhandled error answering %s %s", request.method, request.url.path, exc_info=exc)
        metrics.request("other", 500)
        return JSONResponse(APIError(500, "internal server error; the server's log has the details",
                                     kind="server_error").body(), 500)

    def lifespan(app):
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def span(app):
            yield
            await asyncio.to_thread(scheduler.close)
        return span(app)

    routes = [Route("/v1/chat/completions", endpoint("chat", chat), methods=["POST"]),
              Route("/v1/completions", endpoint("completions", legacy), methods=["POST"]),
              Route("/v1/models", endpoint("models", models), methods=["GET"]),
              Route("/v1/models/{name:path}", endpoint("models", model), methods=["GET"]),
              Route("/health", endpoint("health", health, protected=False), methods=["GET"]),
              Route("/metrics", endpoint("metrics", prometheus), methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: not_found, Exception: server_error})
    app.state.scheduler, app.state.metrics = scheduler, metrics
    return app


def _check_key(request: Request, key: str | None) -> None:
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "invalid or missing API key: send `Authorization: Bearer KEY`", code="invalid_api_key",
                       kind="authentication_error")


async def _read_json(request: Request, limit: int):
    """Raises: APIError 413 for a body over `limit` bytes (refused on its Content-Length,
    or as soon as that many bytes came), 400 for one that is not JSON."""
    too_big = APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_big
    try:
        return json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


async def _answer(request: Request, job: Job, model_id: str) -> JSONResponse:
    """Wait for a non-streamed generation, cancelling it if the client goes away first."""
    result = asyncio.ensure_future(job.events.get())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((result, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        answered = result.done()
        if not answered:  # the client went away (or the server is stopping)
            job.cancelled.set()
            result.cancel()
    if not answered:
        # Nobody reads this answer; its status (nginx's "client closed request") is for the metrics.
        raise APIError(499, "the client closed the connection; the generation was cancelled", code="cancelled")
    event = result.result()
    if not isinstance(event, Done):
        raise APIError(500, event.message, kind="server_error")
    return JSONResponse(response(job.spec, model_id, event.text, event.finish_reason, event.completion_tokens))


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _events(job: Job, model_id: str):
    """The server-sent events of a streamed generation, ending with `data: [DONE]`; the
    generation is cancelled when the client stops reading (the response is torn down)."""
    spec: Spec = job.spec
    try:
        if spec.kind == "chat":
            yield _sse(chunk(spec, model_id, "", first=True))
        while True:
            event = await job.events.get()
            if isinstance(event, str):
                yield _sse(chunk(spec, model_id, event))
                continue
            if isinstance(event, Done):
                if event.text:
                    yield _sse(chunk(spec, model_id, event.text))
                yield _sse(chunk(spec, model_id, None, event.finish_reason))
                if spec.include_usage:
                    yield _sse(usage_chunk(spec, model_id, event.completion_tokens))
            else:
                yield _sse(APIError(500, event.message, kind="server_error").body())
            break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # no effect once Done came; otherwise the generation stops before its next token


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the model loads so that a port in use fails at once.

    Raises: ServerError naming the address."""
    if not 0 <= port <= 65535:
        raise ServerError(f"cannot listen on {host}:{port}: a port is in 0..65535")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as exc:
        raise ServerError(f"cannot listen on {host}:{port}: {exc}") from None
    return sock


def serve(artifacts: str, engine: str | None, host: str, port: int, settings: Settings,
          threads: int | None = None, on_ready=None) -> None:
    """Load the model and answer requests until interrupted (Ctrl-C / SIGTERM).

    Raises: ServerError (bad settings, address in use, no tokenizer) and the errors of
    Generator.from_artifacts."""
    import uvicorn

    from runtime.generator import Generator

    settings.check()
    sock = listen(host, port)
    try:
        with Generator.from_artifacts(artifacts, engine, threads) as generator:
            app = create_app(generator, settings)
            config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)
            server = uvicorn.Server(config)
            if on_ready:
                on_ready(sock.getsockname()[:2])
            server.run(sockets=[sock])
    finally:
        sock.close()


def default_model_id(artifacts: str, engine: str | None) -> str:
    name = Path(artifacts).resolve().name
    return f"{name}-{engine}" if engine else name
