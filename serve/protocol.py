"""The OpenAI wire format: request bodies checked field by field into a runtime Request,
and the response, chunk and error bodies. Standard library and the runtime only, so it is
testable without a web stack.

Every check names the parameter it refuses (`APIError.param`), as OpenAI's API does; the
runtime's own checks (SamplingParams, DraftOptions, Request) run behind ours, so a value
they refuse is reported against the parameter that carried it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from runtime.errors import RecycleExportError
from runtime.request import STRATEGIES, DraftOptions, Request
from runtime.sampling import SamplingParams

# OpenAI's defaults: 16 new tokens for a legacy completion; chat has none, so a request that
# names no max_tokens gets this many (a client wanting more says so).
DEFAULT_COMPLETION_TOKENS = 16
DEFAULT_CHAT_TOKENS = 256
MAX_STOP_STRINGS = 4  # as OpenAI's API
ROLES = ("system", "user", "assistant")

# Fields clients send that change nothing here, and fields we refuse unless they hold the
# value that means "off" (OpenAI clients send some of them with their defaults).
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options",
           "max_tokens", "max_completion_tokens", "model", "messages", "prompt"}
OFF_VALUES = {"presence_penalty": (0, 0.0, None), "frequency_penalty": (0, 0.0, None), "logit_bias": (None, {}),
              "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
              "suffix": (None, ""), "tools": (None, []), "tool_choice": (None, "none"),
              "response_format": (None, {"type": "text"})}
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed")
DRAFT_FIELDS = ("max_draft", "lookup_ngram", "module_drafts", "min_draft_probability", "answer_store")
KNOWN = IGNORED | set(OFF_VALUES) | set(SAMPLING_FIELDS) | set(DRAFT_FIELDS) | {
    "stop", "stream", "n", "strategy", "min_confidence"}


class APIError(Exception):
    """An error answered in OpenAI's shape {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def invalid(param: str, message: str) -> APIError:
    return APIError(400, message, param, "invalid_value" if param else None)


@dataclass
class Spec:
    """One checked generation: what the scheduler runs and how to answer."""

    kind: str  # "chat" or "completion"
    prompt_ids: list[int]
    request: Request
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage
    id: str
    created: int

    @property
    def object(self) -> str:
        return "chat.completion" if self.kind == "chat" else "text_completion"


def parse(kind: str, body, generator, model_id: str, default_strategy: str, max_tokens_limit: int) -> Spec:
    """Check a request body (parsed JSON) and encode its prompt.

    Raises:
        APIError: 400 naming the parameter for any invalid field, an unsupported one, or a
            prompt that leaves no room within the model's context (code
            context_length_exceeded); 404 for another model.
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise invalid(unknown[0], f"unrecognized request argument: {unknown[0]}")
    for name, off in OFF_VALUES.items():
        if name in body and body[name] not in off:
            raise invalid(name, f"{name} is not supported by this server")
    model = _required(body, "model", str)
    if model != model_id:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {model_id!r}", "model",
                       "model_not_found")
    if kind == "chat":
        prompt_param, ids = "messages", _encode_messages(generator, body.get("messages"))
    else:
        prompt_param, ids = "prompt", _encode_prompt(generator, body.get("prompt"))
    if len(ids) >= generator.capacity:
        raise APIError(400, f"the prompt has {len(ids)} tokens; this model's context is {generator.capacity} "
                            f"tokens, which leaves no room to generate", prompt_param, "context_length_exceeded")
    n = _optional(body, "n", int, 1)
    if n != 1:
        raise invalid("n", f"n must be 1 (one choice per request), got {n!r}")
    stream = _optional(body, "stream", bool, False)
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict) and set(options) <= {"include_usage"}
                                    and isinstance(options.get("include_usage", False), bool)):
        raise invalid("stream_options", "stream_options must be {\"include_usage\": true|false}")
    if options and not stream:
        raise invalid("stream_options", "stream_options is only allowed with stream: true")
    request = _request(body, kind, default_strategy, max_tokens_limit)
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return Spec(kind, ids, request, stream, bool(options and options.get("include_usage")),
                f"{prefix}-{uuid.uuid4().hex}", int(time.time()))


def _request(body: dict, kind: str, default_strategy: str, max_tokens_limit: int) -> Request:
    name = "max_completion_tokens" if kind == "chat" and "max_completion_tokens" in body else "max_tokens"
    default = DEFAULT_CHAT_TOKENS if kind == "chat" else DEFAULT_COMPLETION_TOKENS
    max_tokens = _optional(body, name, int, min(default, max_tokens_limit))
    if not 1 <= max_tokens <= max_tokens_limit:
        raise invalid(name, f"{name} must be in 1..{max_tokens_limit}, got {max_tokens}")
    strategy = _optional(body, "strategy", str, default_strategy)
    if strategy not in STRATEGIES:
        raise invalid("strategy", f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    temperature = _optional(body, "temperature", (int, float), 1.0)  # OpenAI's default: sampling
    if not 0 <= temperature <= 2:
        raise invalid("temperature", f"temperature must be in [0, 2], got {temperature}")
    values = {"temperature": float(temperature), "top_p": float(_optional(body, "top_p", (int, float), 1.0)),
              "top_k": _optional(body, "top_k", int, 0), "seed": _optional(body, "seed", int, None)}
    sampling = _runtime(lambda: SamplingParams(**values), SAMPLING_FIELDS)
    defaults = DraftOptions()
    drafts = _runtime(lambda: DraftOptions(
        _optional(body, "max_draft", int, defaults.max_draft), _optional(body, "lookup_ngram", int, defaults.lookup_ngram),
        _optional(body, "module_drafts", bool, defaults.module),
        float(_optional(body, "min_draft_probability", (int, float), defaults.min_probability)),
        _optional(body, "answer_store", bool, defaults.answer_store)), DRAFT_FIELDS)
    min_confidence = float(_optional(body, "min_confidence", (int, float), 0.0))
    return _runtime(lambda: Request(strategy, sampling, max_tokens, stop_strings=_stop(body.get("stop")),
                                    drafts=drafts, min_confidence=min_confidence), ("min_confidence",))


def _runtime(build, params: tuple[str, ...]):
    """Run one of the runtime's own checks, reporting its refusal against the parameter its
    message names (its messages start with the field; DraftOptions says max_draft in 1..15)."""
    try:
        return build()
    except RecycleExportError as exc:
        message = str(exc)
        aliases = {"min_probability": "min_draft_probability", "verify needs a draft source": "lookup_ngram"}
        for alias, param in aliases.items():
            if message.startswith(alias):
                raise invalid(param, message) from None
        param = next((p for p in params if message.startswith(p)), params[0])
        raise invalid(param, message) from None


def _stop(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise invalid("stop", "stop must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP_STRINGS:
        raise invalid("stop", f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}")
    return tuple(stops)


def _encode_messages(generator, messages) -> list[int]:
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "messages must be a non-empty list of {\"role\", \"content\"} objects")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise invalid(f"messages[{i}].role", f"messages[{i}] must be an object whose role is one of "
                                                 f"{', '.join(ROLES)}")
        turns.append({"role": message["role"], "content": _content(message.get("content"), i)})
    if not generator.codec or not generator.codec.chat_template:
        raise invalid("messages", "this model has no chat template; use /v1/completions")
    return _encode(lambda: generator.encode_messages(turns), "messages")


def _content(content, i: int) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise invalid(f"messages[{i}].content", f"messages[{i}].content must be a string or a list of text parts")


def _encode_prompt(generator, prompt) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if generator.codec is None:
            raise invalid("prompt", "this model has no tokenizer; send the prompt as a list of token ids")
        return _encode(lambda: generator.encode(prompt), "prompt")
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        vocab = generator.dims.vocab_size
        if not all(0 <= t < vocab for t in prompt):
            raise invalid("prompt", f"prompt token ids must be in [0, {vocab})")
        return prompt
    raise invalid("prompt", "prompt must be a non-empty string or a list of token ids (one prompt per request)")


def _encode(encode, param: str) -> list[int]:
    try:
        return encode()
    except RecycleExportError as exc:
        raise invalid(param, str(exc)) from None


def _required(body: dict, name: str, kind):
    if name not in body:
        raise invalid(name, f"{name} is required")
    return _optional(body, name, kind, None)


def _optional(body: dict, name: str, kind, default):
    """body[name] when present and not null, checked against `kind`; bool is never an int."""
    value = body.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join({int: "an integer", float: "a number", str: "a string", bool: "a boolean"}[k]
                            for k in kinds)
        raise invalid(name, f"{name} must be {names}, got {value!r}")
    return value


# Responses.

FINISH_REASONS = {"stop": "stop", "max_new_tokens": "length", "length": "length"}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response(spec: Spec, model: str, text: str, finish_reason: str, completion_tokens: int) -> dict:
    finish = FINISH_REASONS[finish_reason]
    if spec.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": spec.id, "object": spec.object, "created": spec.created, "model": model, "choices": [choice],
            "usage": usage(len(spec.prompt_ids), completion_tokens)}


def chunk(spec: Spec, model: str, text: str | None, finish_reason: str | None = None, first: bool = False) -> dict:
    """One streamed chunk; text None with a finish_reason is the last one."""
    finish = FINISH_REASONS[finish_reason] if finish_reason else None
    if spec.kind == "chat":
        delta = {} if text is None else ({"role": "assistant", "content": text} if first else {"content": text})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"id": spec.id, "object": "chat.completion.chunk", "created": spec.created, "model": model,
                "choices": [choice]}
    choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {"id": spec.id, "object": "text_completion", "created": spec.created, "model": model, "choices": [choice]}


def usage_chunk(spec: Spec, model: str, completion_tokens: int) -> dict:
    """stream_options.include_usage's last chunk: no choices, the usage."""
    return {"id": spec.id, "object": "chat.completion.chunk" if spec.kind == "chat" else "text_completion",
            "created": spec.created, "model": model, "choices": [],
            "usage": usage(len(spec.prompt_ids), completion_tokens)}

