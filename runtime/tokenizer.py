"""Text in and out: the bundled tokenizer.json through `tokenizers`, chat prompts through
the model's Jinja chat template."""

from __future__ import annotations

from runtime.errors import GenerationError


class TextCodec:
    """Encode prompts (optionally through the chat template) and decode tokens."""

    def __init__(self, tokenizer, chat_template: str | None, template=None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self._template = template  # the compiled chat template

    @classmethod
    def from_json(cls, tokenizer_json: str | None, chat_template: str | None, source: str,
                  vocab_size: int | None = None, error: type = GenerationError) -> "TextCodec":
        """Parse the tokenizer and compile the chat template, so that a corrupt file is
        refused when a checkpoint or an export is loaded, not in the middle of a command.

        Raises:
            `error` (GenerationError by default): no tokenizer, a tokenizer.json the
                `tokenizers` library cannot read, one with more tokens than the model's
                vocabulary `vocab_size`, or a chat template with a syntax error.
        """
        from tokenizers import Tokenizer

        if tokenizer_json is None:
            raise error(f"{source} has no tokenizer.json, so text prompts cannot be encoded")
        try:
            tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # the tokenizers library raises plain Exception for any bad file
            raise error(f"{source}: tokenizer.json cannot be read by the tokenizers library "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if vocab_size is not None and size > vocab_size:
            raise error(f"{source}: tokenizer.json has {size} tokens, more than the model's vocabulary "
                        f"of {vocab_size}")
        return cls(tokenizer, chat_template, compile_chat_template(chat_template, source, error))

    def encode(self, text: str, chat: bool = False) -> list[int]:
        """Raises: GenerationError for an empty prompt, text that is not valid Unicode, or
        --chat without a chat template."""
        if not text:
            raise GenerationError("the prompt is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise GenerationError("the prompt is not valid UTF-8 text") from None
        if chat:
            return self.encode_messages([{"role": "user", "content": text}])
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_messages(self, messages: list[dict]) -> list[int]:
        """A whole conversation ({"role", "content"} turns, the last from the user) through
        the chat template, ready for the assistant's next turn.

        Raises: GenerationError for no messages or a model without a chat template."""
        if not messages:
            raise GenerationError("the conversation has no messages")
        return self.tokenizer.encode(self.render_chat(messages), add_special_tokens=False).ids

    def render_chat(self, messages: list[dict]) -> str:
        """Raises: GenerationError without a chat template, or when rendering it fails."""
        if not self.chat_template:
            raise GenerationError("this model has no chat template; drop --chat")
        template = self._template or compile_chat_template(self.chat_template, "the chat template")
        from jinja2 import TemplateError

        try:
            return template.render(messages=messages, add_generation_prompt=True)
        except TemplateError as exc:
            raise GenerationError(f"the chat template failed to render: {exc}") from None

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def compile_chat_template(template: str | None, source: str, error: type = GenerationError):
    """The chat template compiled in a sandbox, or None without one.

    Raises: `error` naming the line of a syntax error."""
    if not template:
        return None
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return env.from_string(template)
    except TemplateSyntaxError as exc:
        raise error(f"{source}: the chat template has a syntax error on line {exc.lineno}: {exc.message}") from None


class TextDelta:
    """A stream's text, released only once it can no longer change: not while it ends in an
    incomplete UTF-8 character (the tokenizer shows U+FFFD), nor while its tail could be
    the start of a stop string (which is never sent)."""

    def __init__(self, codec, stops: tuple[str, ...]):
        self.codec, self.stops = codec, stops
        self.tokens: list[int] = []
        self.sent = ""

    def add(self, token: int) -> str:
        self.tokens.append(token)
        text = self.codec.decode(self.tokens)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        safe = len(text)
        for stop in self.stops:
            found = text.find(stop)
            if found >= 0:
                safe = min(safe, found)
            else:
                safe = min(safe, len(text) - _partial(text, stop))
        delta = text[len(self.sent):safe]
        self.sent += delta
        return delta

    def rest(self, final: str) -> str:
        """What is left to send of the generation's final text (cut before a stop string)."""
        return final[len(self.sent):] if final.startswith(self.sent) else ""


def _partial(text: str, stop: str) -> int:
    """The length of the longest end of `text` that begins `stop` (shorter than all of it)."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0
