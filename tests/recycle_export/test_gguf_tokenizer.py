"""GGUF tokenizers of each family rebuilt by recycle_export.gguf_tokenizer, against
transformers' own GGUF tokenizer conversion (and Qwen2Tokenizer) on small vocabularies."""

from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

import gguf  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from tokenizers.pre_tokenizers import ByteLevel  # noqa: E402

from recycle_export.gguf_import import _Fields  # noqa: E402
from recycle_export.gguf_tokenizer import tokenizer_json  # noqa: E402
from runtime.errors import GGUFError  # noqa: E402

TEXTS = ("hello world 12345 it's", "Ünïcödé  \n\n x", "hello<|end|>world", "  hi", "hi  hello", "héllo wörld\n",
         "hello</s>world")
BPE_MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2", "12 3", "4 5",
              "' s", "Ġ Ġ"]
SPM_PIECES = ["▁", "h", "e", "l", "o", "w", "r", "d", "i", "▁h", "he", "ll", "lo", "▁he", "llo", "▁hello",
              "▁w", "or", "▁wor", "ld", "▁world", "▁▁", "hi", "▁hi"]


def _write(path: Path, arch: str, fill) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    fill(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def byte_level_gguf(path: Path, arch: str, pre: str) -> Path:
    tokens = sorted(ByteLevel.alphabet()) + ["".join(m.split(" ")) for m in BPE_MERGES] + ["<|end|>"]

    def fill(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types([1] * (len(tokens) - 1) + [3])
        w.add_token_merges(BPE_MERGES)
    return _write(path, arch, fill)


def sentencepiece_gguf(path: Path, arch: str) -> Path:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SPM_PIECES

    def fill(w):
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(SPM_PIECES))])
        w.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES))
        w.add_unk_token_id(0)
    return _write(path, arch, fill)


def ours(path: Path, arch: str) -> Tokenizer:
    return Tokenizer.from_str(tokenizer_json(_Fields(gguf.GGUFReader(path), str(path)), arch))


def oracle(path: Path) -> Tokenizer:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    architecture, tokenizer, _ = get_gguf_tokenizer(str(path))
    return convert_gguf_tokenizer(architecture, tokenizer)[0]


def assert_same(a: Tokenizer, b: Tokenizer, texts=TEXTS) -> None:
    for text in texts:
        ids = a.encode(text, add_special_tokens=False).ids
        assert ids == b.encode(text, add_special_tokens=False).ids, text
        assert a.decode(ids) == b.decode(ids), text


@pytest.mark.parametrize("arch, pre", [("llama", "llama-bpe"), ("llama", "gpt2"), ("qwen2", "qwen2"),
                                       ("qwen3", "qwen2")])
def test_byte_level_bpe(tmp_path, arch, pre):
    path = byte_level_gguf(tmp_path / "t.gguf", arch, pre)
    assert_same(ours(path, arch), oracle(path))


def test_qwen2_normalizes_like_its_own_tokenizer(tmp_path):
    """Qwen2Tokenizer applies NFC first (transformers' GGUF conversion does not): ours follows
    the model's own tokenizer."""
    path = byte_level_gguf(tmp_path / "t.gguf", "qwen2", "qwen2")
    vocab = {tok: i for i, tok in enumerate(gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].contents())}
    qwen = transformers.Qwen2Tokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in BPE_MERGES])
    assert_same(ours(path, "qwen2"), qwen.backend_tokenizer, TEXTS[:2] + ("A\u0301 e\u0301",))


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_sentencepiece_bpe(tmp_path, arch):
    """Llama 2 / Mistral (Metaspace) and Phi-3 (a normalizer): byte fallback, merges from scores."""
    path = sentencepiece_gguf(tmp_path / "t.gguf", arch)
    assert_same(ours(path, arch), oracle(path))


def test_refuses_other_tokenizers(tmp_path):
    def fill(w):
        w.add_tokenizer_model("t5")
        w.add_token_list(["a", "b"])
    path = _write(tmp_path / "t.gguf", "llama", fill)
    with pytest.raises(GGUFError, match="tokenizer 't5' is not supported"):
        ours(path, "llama")
    path = byte_level_gguf(tmp_path / "u.gguf", "llama", "tekken")
    with pytest.raises(GGUFError, match="pre-tokenizer 'tekken' is not supported"):
        ours(path, "llama")
