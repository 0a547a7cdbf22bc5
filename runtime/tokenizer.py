"""Text in and out: the bundled tokenizer.json through `tokenizers`, chat prompts through
the model's Jinja chat template."""

from __future__ import annotations

from runtime.errors import GenerationError


class TextCodec:
    """Encode prompts (optionally through the chat template) and decode tokens."""

    def __init__(self, tokenizer, chat_template: str | None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template

    @classmethod
    def from_json(cls, tokenizer_json: str | None, chat_template: str | None,
                  source: str) -> "TextCodec":
        """Raises: GenerationError when there is no tokenizer to encode text with."""
        from tokenizers import Tokenizer

        if tokenizer_json is None:
            raise GenerationError(f"{source} has no tokenizer.json, so text prompts cannot be encoded")
        return cls(Tokenizer.from_str(tokenizer_json), chat_template)

    def encode(self, text: str, chat: bool = False) -> list[int]:
        """Raises: GenerationError for an empty prompt or --chat without a chat template."""
        if not text:
            raise GenerationError("the prompt is empty")
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
        """Raises: GenerationError for a model without a chat template."""
        if not self.chat_template:
            raise GenerationError("this model has no chat template; drop --chat")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(self.chat_template).render(messages=messages, add_generation_prompt=True)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
