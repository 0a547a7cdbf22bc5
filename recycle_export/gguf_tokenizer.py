"""A GGUF file's tokenizer rebuilt as a `tokenizers` Tokenizer (tokenizer.json's text), the
way the Hugging Face tokenizer.json of the same model is built:

    gpt2 (byte-level BPE) with llama.cpp's pre-tokenizer names: default / gpt2 (GPT-2's
        split), smollm / starcoder (digits one by one first), llama-bpe (Llama 3: digits in
        groups of up to three), qwen2 (Qwen2/2.5/3: digits one by one, NFC first)
    llama (SentencePiece BPE: Llama 2, Mistral, Phi-3): merges recovered from the pieces'
        scores as transformers' generate_merges does, bytes as <0xNN> fallbacks, spaces as
        U+2581 with one prepended: by a Metaspace pre-tokenizer as LlamaTokenizer does, or for
        phi3 by a normalizer, as Phi-3's own tokenizer.json does (they differ on text that
        starts with a space)

Control and user-defined tokens become special tokens. transformers' own GGUF tokenizer
conversion (transformers.integrations.gguf) is the oracle in tests/recycle_export/test_families.py.
"""

from __future__ import annotations

from runtime.errors import GGUFError

# llama.cpp pre-tokenizer names of byte-level BPE -> the split before the byte-level mapping:
# None (GPT-2's own regex), "digits" (single digits, then GPT-2's regex) or a regex of its own.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_LEVEL_PRE = {"default": None, "gpt2": None, "smollm": "digits", "starcoder": "digits",
                  "llama-bpe": LLAMA3_SPLIT, "smaug-bpe": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}
NFC_PRE = ("qwen2",)  # Qwen's tokenizer.json normalizes to NFC first
UNKNOWN_TOKEN, CONTROL_TOKEN, USER_DEFINED_TOKEN = 2, 3, 4  # gguf TokenType
SPACE = "\u2581"  # SentencePiece's visible space


def tokenizer_json(fields, architecture: str) -> str:
    """The tokenizer of a GGUF file (gguf_import._Fields over its metadata) as tokenizer.json text.

    Raises:
        GGUFError: a tokenizer model or pre-tokenizer not listed above, or a key it needs missing.
    """
    from tokenizers import AddedToken

    kind = fields.require("tokenizer.ggml.model")
    tokens = fields.require("tokenizer.ggml.tokens")
    types = fields.get("tokenizer.ggml.token_type", [1] * len(tokens))
    if kind == "gpt2":
        tokenizer = _byte_level_bpe(fields, tokens)
    elif kind == "llama":
        tokenizer = _sentencepiece_bpe(fields, tokens, types, architecture)
    else:
        raise GGUFError(f"{fields.source}: tokenizer {kind!r} is not supported; expected 'gpt2' (byte-level "
                        "BPE) or 'llama' (SentencePiece BPE)")
    special = [AddedToken(tok, special=True, normalized=False)
               for tok, kind_ in zip(tokens, types) if kind_ in (CONTROL_TOKEN, USER_DEFINED_TOKEN)]
    tokenizer.add_special_tokens(special)
    return tokenizer.to_str(pretty=False)


def _byte_level_bpe(fields, tokens: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    pre = fields.get("tokenizer.ggml.pre", "default")
    if pre not in BYTE_LEVEL_PRE:
        raise GGUFError(f"{fields.source}: tokenizer 'gpt2' with pre-tokenizer {pre!r} is not supported; "
                        f"expected one of {sorted(BYTE_LEVEL_PRE)}")
    merges = [tuple(m.split(" ", 1)) for m in fields.require("tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    split = BYTE_LEVEL_PRE[pre]
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif split == "digits":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if pre in NFC_PRE:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def sentencepiece_merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges from SentencePiece pieces and scores (transformers' SentencePieceExtractor):
    every split of a piece into two pieces of the vocabulary, ranked by the piece's score,
    ties by the parts' ids."""
    merges = []
    for piece, piece_id in vocab.items():
        local = [(piece[:i], piece[i:]) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        local.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        merges += [(left, right, scores[piece_id]) for left, right in local]
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)  # stable: ties keep the order above
    return [(left, right) for left, right, _ in merges]


def _sentencepiece_bpe(fields, tokens: list[str], types: list[int], architecture: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    scores = fields.require("tokenizer.ggml.scores")
    if len(scores) != len(tokens):
        raise GGUFError(f"{fields.source}: tokenizer.ggml.scores holds {len(scores)} scores for {len(tokens)} tokens")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    unknown = fields.get("tokenizer.ggml.unknown_token_id")
    if unknown is None:
        unknown = next((i for i, kind in enumerate(types) if kind == UNKNOWN_TOKEN), None)
    tokenizer = Tokenizer(models.BPE(vocab, sentencepiece_merges(vocab, scores),
                                     unk_token=None if unknown is None else tokens[int(unknown)],
                                     fuse_unk=True, byte_fallback=True))
    prefix = bool(fields.get("tokenizer.ggml.add_space_prefix", True))
    if architecture == "phi3":
        tokenizer.normalizer = normalizers.Sequence(
            ([normalizers.Prepend(SPACE)] if prefix else []) + [normalizers.Replace(" ", SPACE)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=SPACE, prepend_scheme="first" if prefix else "never", split=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tokenizer
