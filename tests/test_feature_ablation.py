"""benchmarks/feature_ablation.py on the tiny model: its `final` variant is train-recycler's
training (the same loss and states), the fusion starts as exactly the module it goes on from,
and its feature pass is the model's base step."""

import torch

from benchmarks.feature_ablation import Ablation, Featured, agreement, base_features, loss
from recycle_export.checkpoint import load_checkpoint
from recycle_export.distill_data import Sequence
from recycle_export.train import CHAIN, TrainOptions, _agreement, _batch, _module_states, recycler_loss


def _sequences(model, n=3, length=14, seed=0):
    """Sequences whose h is the base's own (as the shards hold), with their features."""
    g = torch.Generator().manual_seed(seed)
    seqs, featured = [], []
    for i in range(n):
        tokens = torch.randint(0, model.cfg.vocab_size, (length - i,), generator=g)
        feats = base_features(model, tokens[:-1])
        seq = Sequence(tokens, feats["h"], prompt_len=4)
        seqs.append(seq)
        featured.append(Featured(tokens, feats, 4))
    return seqs, featured


def test_feature_pass_is_the_base_step(tiny_chat_checkpoint):
    model = load_checkpoint(tiny_chat_checkpoint).model.eval()
    tokens = torch.arange(1, 12)
    feats = base_features(model, tokens)
    n = len(tokens)
    with torch.no_grad():
        h = model.base_step(tokens[None], torch.arange(n)[None], torch.ones(1, n, dtype=torch.long),
                            model.empty_kv(model.cfg.n_layers), 1).hidden[0]
    assert torch.allclose(feats["h"].float(), h, atol=2e-3)
    assert torch.allclose(model.base.norm(feats["pre"].float()), h, atol=2e-3)
    assert set(feats) == {"low", "mid", "pre", "h"}


def test_final_is_train_recyclers_training_and_fusion_starts_as_the_module(tiny_chat_checkpoint):
    model = load_checkpoint(tiny_chat_checkpoint).model.eval()
    seqs, featured = _sequences(model)
    options = TrainOptions(unroll=3)
    final = Ablation(model, "final", None)
    with torch.no_grad():
        ours = loss(final, featured, options, torch.Generator().manual_seed(5))
        theirs = recycler_loss(model, seqs, options, torch.Generator().manual_seed(5))
        assert torch.allclose(ours, theirs)
        fusion = Ablation(model, "fusion", None)
        fusion.start()
        x, _, h, mask = _batch(seqs, model.cfg.dim)
        for a, b in zip(fusion.states(featured, x, h, mask, CHAIN),
                        _module_states(model, x, h, mask, CHAIN)):
            assert torch.allclose(a, b, atol=1e-6)
    reference = _agreement(model, seqs)
    figures = agreement(final, featured)
    assert figures["position_agreement"] == [round(a, 4) for a in reference["position_agreement"]]
    assert figures["chain_accepted"] == round(reference["chain_accepted"], 3)
