"""Our base model against Hugging Face LlamaForCausalLM on the same random weights."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from recycle_export.checkpoint import load_checkpoint  # noqa: E402

TOL = 1e-4  # float32 rounding: the two implementations order a few reductions differently


def _hf_model(tmp_path, tied: bool, n_kv_heads: int):
    cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=n_kv_heads, intermediate_size=128, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=tied, max_position_embeddings=128,
        attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            # Larger than the default init so that logits spread over several units.
            p.copy_(torch.randn_like(p) * (0.2 if p.dim() > 1 else 0.1) + (1.0 if p.dim() == 1 else 0.0))
    hf.save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize("tied,n_kv_heads", [(True, 2), (False, 2), (False, 1), (True, 4)])
def test_logits_match_transformers(tmp_path, tied, n_kv_heads):
    hf = _hf_model(tmp_path, tied, n_kv_heads)
    ours = load_checkpoint(tmp_path).model
    assert ours.cfg.tie_embeddings == tied and ours.cfg.n_kv_heads == n_kv_heads
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits  # (1, 12, V)
        full = ours.base_step(ids, torch.arange(12)[None], torch.ones(1, 12, dtype=torch.long),
                              ours.empty_kv(2), num_logits=12)
        assert (full.logits - expected).abs().max() <= TOL
        assert expected.abs().max() > 1.0, "logits too small for the comparison to mean much"

        # Incremental: prefill 5, then steps of 1, 2 and 4 tokens through the KV cache,
        # against HF's own cached steps and against the full-sequence logits.
        cache = transformers.DynamicCache()
        past, start = ours.empty_kv(2), 0
        for step in (5, 1, 2, 4):
            chunk = ids[:, start:start + step]
            out = ours.base_step(chunk, torch.arange(start, start + step)[None],
                                 torch.ones(1, start + step, dtype=torch.long), past, num_logits=step)
            hf_out = hf(chunk, past_key_values=cache, use_cache=True)
            assert (out.logits - hf_out.logits).abs().max() <= TOL
            assert (out.logits - expected[:, start:start + step]).abs().max() <= TOL
            assert out.present[0][0].shape == (1, n_kv_heads, start + step, 16)
            past, start = out.present, start + step


def test_left_padding_matches_unpadded(tiny):
    """Batch 2 with left padding gives the same logits on real tokens as each row alone."""
    long, short = [5, 17, 3, 88, 41, 9], [60, 2, 33]
    pad = len(long) - len(short)
    ids = torch.tensor([long, [0] * pad + short])
    mask = torch.tensor([[1] * len(long), [0] * pad + [1] * len(short)])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batch = tiny.base_step(ids, positions, mask, tiny.empty_kv(2, batch=2), num_logits=3)
        alone = tiny.base_step(torch.tensor([short]), torch.arange(3)[None],
                               torch.ones(1, 3, dtype=torch.long), tiny.empty_kv(2), num_logits=3)
        assert (batch.logits[1] - alone.logits[0]).abs().max() <= TOL
        # One more token each through the padded cache.
        step_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        step = tiny.base_step(torch.tensor([[7], [7]]), positions[:, -1:] + 1, step_mask, batch.present)
        alone_step = tiny.base_step(torch.tensor([[7]]), torch.tensor([[3]]),
                                    torch.ones(1, 4, dtype=torch.long), alone.present)
        assert (step.logits[1] - alone_step.logits[0]).abs().max() <= TOL
        assert torch.isfinite(step.logits).all()
