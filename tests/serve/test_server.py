"""The OpenAI-compatible server (serve/), driven over loopback HTTP by the official `openai`
client and by raw HTTP: answers equal the runtime's own for the same request, streamed or
not; every error has OpenAI's shape and names its parameter; concurrent clients each get
their own prompt's answer (standard ones decoded in a continuous batch); a client that
goes away cancels its generation."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from recycle_export.export import ExportOptions, export  # noqa: E402
from runtime.generator import Generator  # noqa: E402
from runtime.request import Request  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402
from serve.app import Settings, create_app, listen  # noqa: E402

MODEL = "tiny-chat"


@pytest.fixture(scope="module")
def generator(tiny_chat_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "art"
    export(tiny_chat_checkpoint, out, ExportOptions(max_seq_len=256))  # character tokens
    with Generator.from_artifacts(out) as gen:
        yield gen


@contextmanager
def running(generator, **settings):
    """A server on a free loopback port in a thread of this process; yields its base URL."""
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(generator, Settings(MODEL, **settings)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the server to start")
    host, port = sock.getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def url(generator):
    with running(generator, max_batch=4, max_queue=64) as base:
        yield base


def client(base: str, key: str = "unused") -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def expected(generator, ids, max_tokens, strategy="verify", stop=(), **sampling) -> str:
    """The runtime's own answer, the oracle for the server's."""
    request = Request(strategy, SamplingParams(**sampling), max_tokens, stop_strings=tuple(stop))
    return generator.generate(ids, request).text


def chat_ids(generator, text):
    return generator.encode_messages([{"role": "user", "content": text}])


def raw(base: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, parsed JSON or text) of one plain HTTP request."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request(method, path, body, headers or {})
    answer = connection.getresponse()
    data = answer.read().decode()
    connection.close()
    try:
        return answer.status, json.loads(data)
    except ValueError:
        return answer.status, data


# Answers.


def test_chat_and_completions_equal_the_runtimes_answers(generator, url):
    c = client(url)
    messages = [{"role": "user", "content": "Name a colour."}]
    answer = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    ids = generator.encode_messages(messages)
    assert answer.choices[0].message.content == expected(generator, ids, 12, temperature=0.0)
    assert answer.choices[0].message.role == "assistant" and answer.object == "chat.completion"
    assert answer.usage.prompt_tokens == len(ids) and answer.usage.completion_tokens <= 12
    assert answer.choices[0].finish_reason in ("stop", "length")

    answer = c.completions.create(model=MODEL, prompt="Once upon", max_tokens=9, temperature=0,
                                  extra_body={"strategy": "standard", "top_k": 5})
    assert answer.choices[0].text == expected(generator, generator.encode("Once upon"), 9, "standard", temperature=0.0)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    [model] = c.models.list().data
    assert model.id == MODEL and c.models.retrieve(MODEL).id == MODEL


def test_streams_carry_the_same_text_and_end_with_done(generator, url):
    c = client(url)
    messages = [{"role": "user", "content": "Tell me more."}]
    chunks = list(c.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == expected(generator, generator.encode_messages(messages), 20, temperature=0.0)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 20

    pieces = list(c.completions.create(model=MODEL, prompt="abc", max_tokens=7, temperature=0, stream=True,
                                       extra_body={"strategy": "alternate"}))
    assert "".join(p.choices[0].text for p in pieces) == expected(generator, generator.encode("abc"), 7, "alternate",
                                                                  temperature=0.0)
    status, body = raw(url, "POST", "/v1/completions", json.dumps(
        {"model": MODEL, "prompt": "abc", "max_tokens": 3, "stream": True}).encode())
    assert status == 200 and body.endswith("data: [DONE]\n\n")


def test_a_stop_string_ends_the_answer_and_is_never_sent(generator, url):
    c = client(url)
    full = expected(generator, chat_ids(generator, "Go on."), 40, temperature=0.0)
    stop = full[10:12]
    cut = full[:full.find(stop)]
    messages = [{"role": "user", "content": "Go on."}]
    answer = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0, stop=[stop])
    assert answer.choices[0].message.content == cut and answer.choices[0].finish_reason == "stop"
    chunks = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0, stop=stop,
                                       stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == cut


def test_seeded_sampling_repeats_and_matches_the_runtime(generator, url):
    c = client(url)
    kwargs = dict(model=MODEL, prompt="xyz", max_tokens=10, temperature=0.9, top_p=0.95, seed=7)
    first, second = (c.completions.create(**kwargs).choices[0].text for _ in range(2))
    assert first == second == expected(generator, generator.encode("xyz"), 10, temperature=0.9, top_p=0.95, seed=7)


# Errors.


def _refused(call, error, status: int, param: str | None):
    with pytest.raises(error) as caught:
        call()
    assert caught.value.status_code == status
    body = caught.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["param"] == param, body
    assert "Traceback" not in body["message"]
    return body


@pytest.mark.parametrize("field, value, param", [
    ("temperature", -1, "temperature"), ("temperature", "hot", "temperature"), ("top_p", 0, "top_p"),
    ("n", 2, "n"), ("max_tokens", 0, "max_tokens"), ("max_tokens", 10 ** 6, "max_tokens"),
    ("seed", -3, "seed"), ("stop", ["a"] * 5, "stop"), ("logprobs", True, "logprobs"),
    ("stream_options", {"include_usage": True}, "stream_options")])
def test_invalid_parameters_are_named(url, field, value, param):
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], field: value}
    _refused(lambda: client(url).chat.completions.create(**kwargs), openai.BadRequestError, 400, param)


@pytest.mark.parametrize("extra, param", [({"strategy": "fast"}, "strategy"), ({"top_k": -1}, "top_k"),
                                          ({"max_draft": 16}, "max_draft"), ({"frobnicate": 1}, "frobnicate"),
                                          ({"lookup_ngram": 0, "answer_store": False}, "lookup_ngram"),
                                          ({"answer_store": "yes"}, "answer_store")])
def test_invalid_extras_are_named(url, extra, param):
    call = lambda: client(url).completions.create(model=MODEL, prompt="hi", extra_body=extra)  # noqa: E731
    _refused(call, openai.BadRequestError, 400, param)


def test_bad_messages_and_prompts(generator, url):
    c = client(url)
    _refused(lambda: c.chat.completions.create(model=MODEL, messages=[]), openai.BadRequestError, 400, "messages")
    _refused(lambda: c.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "x"}]),
             openai.BadRequestError, 400, "messages[0].role")
    _refused(lambda: c.completions.create(model=MODEL, prompt=["a", "b"]), openai.BadRequestError, 400, "prompt")
    _refused(lambda: c.completions.create(model=MODEL, prompt=[1, 500]), openai.BadRequestError, 400, "prompt")
    body = _refused(lambda: c.completions.create(model=MODEL, prompt="x" * 300), openai.BadRequestError, 400, "prompt")
    assert body["code"] == "context_length_exceeded" and "256" in body["message"]
    body = _refused(lambda: c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}]),
                    openai.NotFoundError, 404, "model")
    assert body["code"] == "model_not_found"
    answer = c.completions.create(model=MODEL, prompt=[5, 6, 7], max_tokens=3, temperature=0)  # token ids
    assert answer.usage.prompt_tokens == 3


def test_raw_http_errors_have_openais_shape(url):
    for body, status, code in ((b'{"model": ', 400, "invalid_json"), (b"\xff\xfe", 400, "invalid_json"),
                               (b"[1, 2]", 400, None), (b"{}", 400, "invalid_value"),
                               (b" " * (2 << 20), 413, "request_too_large")):
        got, answer = raw(url, "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        assert got == status and answer["error"]["code"] == code, answer
    assert raw(url, "GET", "/v2/everything")[0] == 404
    status, answer = raw(url, "DELETE", "/v1/models")
    assert status == 405 and set(answer["error"]) == {"message", "type", "param", "code"}
    assert raw(url, "GET", "/v1/models/other")[0] == 404


def test_an_api_key_is_required_when_set(generator):
    with running(generator, api_key="sesame") as base:
        _refused(lambda: client(base, "wrong").models.list(), openai.AuthenticationError, 401, None)
        assert raw(base, "GET", "/metrics")[0] == 401
        assert raw(base, "GET", "/health")[0] == 200  # a load balancer's probe needs no key
        assert client(base, "sesame").models.list().data[0].id == MODEL


# Concurrency.


def test_concurrent_clients_each_get_their_own_answer(generator, url):
    """32 clients x 8 requests, greedy, half of them streamed, over 8 prompts and two
    strategies: every answer equals the runtime's single-request answer for its prompt."""
    prompts = [f"Question {i}: what is {'abcdefgh'[i]}?" for i in range(8)]
    wanted = {(p, s): expected(generator, chat_ids(generator, p), 16, s, temperature=0.0)
              for p in prompts for s in ("verify", "standard")}

    def one_client(n: int) -> list[bool]:
        c = client(url)
        ok = []
        for k in range(8):
            prompt, strategy, stream = prompts[(n + k) % 8], ("verify", "standard")[k % 2], (n + k) % 2 == 0
            kwargs = dict(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0,
                          extra_body={"strategy": strategy})
            if stream:
                text = "".join(ch.choices[0].delta.content or "" for ch in
                               c.chat.completions.create(stream=True, **kwargs))
            else:
                text = c.chat.completions.create(**kwargs).choices[0].message.content
            ok.append(text == wanted[prompt, strategy])
        return ok

    start = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        results = [ok for oks in pool.map(one_client, range(32)) for ok in oks]
    seconds = time.perf_counter() - start
    assert len(results) == 256 and all(results), f"{results.count(False)} answers differ"
    status, health = raw(url, "GET", "/health")
    assert status == 200 and health == {"status": "ok", "model": MODEL, "queue_depth": 0, "batch_size": 0}
    steps, rows = _metric(url, "batched_steps_total"), _metric(url, "batched_rows_total")
    assert rows > steps > 0  # standard requests shared batched base calls
    print(f"load test: 256 requests from 32 clients in {seconds:.1f}s ({256 / seconds:.0f} requests/s), "
          f"{rows / steps:.2f} rows per batched step")


def test_a_fused_engine_batches_too(generator):
    """The continuous batch on a fused CPU engine (one in-place pool of slots): 8 clients x
    3 greedy standard requests through 3 slots each get the engine's own answer."""
    from engines.build import build

    build(generator.artifacts.folder, "cpu", "fp32")
    prompts = [f"Say {word}." for word in ("yes", "no", "maybe", "something longer than that")]
    with Generator.from_artifacts(generator.artifacts.folder, engine="cpu-fp32") as fused:
        wanted = {p: expected(fused, chat_ids(fused, p), 24, "standard", temperature=0.0) for p in prompts}
        with running(fused, max_batch=3) as base:
            def one_client(n: int) -> list[bool]:
                c = client(base)
                return [c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompts[(n + k) % 4]}], max_tokens=24,
                    temperature=0, extra_body={"strategy": "standard"}).choices[0].message.content
                    == wanted[prompts[(n + k) % 4]] for k in range(3)]

            with ThreadPoolExecutor(8) as pool:
                results = [ok for oks in pool.map(one_client, range(8)) for ok in oks]
            assert all(results), f"{results.count(False)} answers differ"
            assert _metric(base, "batched_rows_total") > _metric(base, "batched_steps_total") > 0


class SlowGenerator:
    """The Generator with a pause before each token, so that a test can act mid-generation;
    counts the tokens each generation produced. One-at-a-time generations pause in their
    stream; the continuous batch pauses in every base call of its backend, whose calls
    count as the tokens of one generation (these tests run one at a time). With `hold`, a
    one-at-a-time generation waits for that event before its first token, so that it cannot
    end (a sampled end-of-sequence) before the test has acted."""

    def __init__(self, generator, pause: float, hold: threading.Event | None = None):
        self.generator, self.pause, self.tokens, self.hold = generator, pause, [], hold
        self.backend = SlowBackend(generator.backend, self)

    def __getattr__(self, name):
        return getattr(self.generator, name)

    def stream(self, ids, request):
        inner, count = self.generator.stream(ids, request), len(self.tokens)
        self.tokens.append(0)

        class Slow:
            def __iter__(slow):
                if self.hold is not None:
                    assert self.hold.wait(30), "the test never released the held generation"
                for token in inner:
                    time.sleep(self.pause)
                    self.tokens[count] += 1
                    yield token

            result, close = inner.result, inner.close
        return Slow()


class SlowBackend:
    def __init__(self, backend, slow: SlowGenerator):
        self.inner, self.slow = backend, slow

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, graph, feeds, kv_outputs=None):
        time.sleep(self.slow.pause)
        if not self.slow.tokens:
            self.slow.tokens.append(0)
        self.slow.tokens[0] += graph == "full_step"
        return self.inner.run(graph, feeds, kv_outputs)


def wait_for(condition, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds}s for {what}"
        time.sleep(0.01)


def _metric(base: str, name: str) -> float:
    text = raw(base, "GET", "/metrics")[1]
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(f"recycle_{name} ")))


def test_a_full_queue_answers_429(generator):
    hold = threading.Event()
    slow = SlowGenerator(generator, 0.0, hold)
    with running(slow, max_batch=1, max_queue=0) as base:
        c = client(base)
        with ThreadPoolExecutor(1) as pool:
            # greedy: sampled (the API's default temperature 1), the first token can be the end
            # token, and the finished request then has no completion tokens to count
            busy = pool.submit(lambda: c.completions.create(model=MODEL, prompt="a", max_tokens=20, temperature=0,
                                                            extra_body={"strategy": "verify"}))  # one at a time
            try:
                wait_for(lambda: _metric(base, "batch_size") >= 1, "the first request to start")
                body = _refused(lambda: c.completions.create(model=MODEL, prompt="b", max_tokens=2),
                                openai.RateLimitError, 429, None)
            finally:
                hold.set()
            assert body["code"] == "queue_full"
            assert busy.result().usage.completion_tokens > 0


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_cancels_its_generation(generator, stream):
    slow = SlowGenerator(generator, 0.02)
    with running(slow, max_batch=1) as base:
        host, port = base.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("POST", "/v1/completions", json.dumps(
            {"model": MODEL, "prompt": "hello", "max_tokens": 200, "temperature": 0, "stream": stream,
             "strategy": "standard"}).encode())
        if stream:
            answer = connection.getresponse()
            assert answer.readline().startswith(b"data: ")
        else:
            wait_for(lambda: slow.tokens and slow.tokens[0] >= 3, "three tokens")
        connection.sock.close()
        connection.close()
        wait_for(lambda: _metric(base, "generations_cancelled_total") >= 1, "the generation to be cancelled")
        assert _metric(base, "generations_cancelled_total") == 1
        assert slow.tokens[0] < 100  # stopped early, not run to max_tokens
        assert _metric(base, "batch_size") == 0 and raw(base, "GET", "/health")[0] == 200


# Start-up.


def test_serve_refuses_bad_options_in_one_line(generator, tiny_artifacts):
    from click.testing import CliRunner

    from cli import main
    from runtime.errors import ServerError

    folder = str(generator.artifacts.folder)
    for args, message in ((["--max-batch", "0"], "--max-batch must be in 1..256, got 0"),
                          (["--max-queue", "-1"], "--max-queue must be in 0..100000, got -1"),
                          (["--api-key", " "], "--api-key must not be empty"),
                          (["--port", "70000"], "cannot listen on 127.0.0.1:70000")):
        result = CliRunner().invoke(main, ["serve", "--artifacts", folder, *args])
        assert result.exit_code == 1 and result.output.startswith(f"Error: {message}"), result.output
    with listen("127.0.0.1", 0) as taken:
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(main, ["serve", "--artifacts", folder, "--port", port])
        assert result.exit_code == 1 and result.output.startswith(f"Error: cannot listen on 127.0.0.1:{port}")
    with Generator.from_artifacts(tiny_artifacts) as no_tokenizer:
        with pytest.raises(ServerError, match="has no tokenizer.json"):
            create_app(no_tokenizer, Settings(MODEL))
