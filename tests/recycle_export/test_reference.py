"""The reference decoder's schedules (docs/design.md section 2)."""

import numpy as np
import pytest
import torch

from recycle_export.reference import ReferenceDecoder
from runtime.errors import GenerationError
from runtime.request import DraftOptions, Request

# verify as the paper-style one-draft schedule: a module draft every step, whatever its confidence.
ONE_MODULE_DRAFT = DraftOptions(max_draft=1, lookup_ngram=0, module=True, min_probability=0.0)
from runtime.sampling import SamplingParams, probabilities
from tests.conftest import tiny_model

PROMPTS = [[5, 17, 3], [88], [41, 9, 60, 2, 33, 70, 12], [1, 1, 1, 1]]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("max_new", [1, 2, 7, 20])
def test_verify_greedy_equals_standard(tiny, prompt, max_new):
    dec = ReferenceDecoder(tiny)
    standard = dec.generate(prompt, Request("standard", max_new_tokens=max_new, stop_token_ids=()))
    verify = dec.generate(prompt, Request("verify", drafts=ONE_MODULE_DRAFT, max_new_tokens=max_new, stop_token_ids=()))
    assert verify.tokens == standard.tokens
    assert verify.finish_reason == standard.finish_reason == "max_new_tokens"
    assert len(standard.tokens) == max_new


def test_verify_greedy_exercises_accept_and_reject():
    """On a tiny vocabulary some random drafts match the base: both paths run, and the
    output still equals standard's."""
    model = tiny_model(seed=3, vocab_size=8)
    dec = ReferenceDecoder(model)
    proposed = accepted = 0
    for seed in range(6):
        prompt = list(np.random.default_rng(seed).integers(0, 8, 4))
        standard = dec.generate(prompt, Request("standard", max_new_tokens=24, stop_token_ids=()))
        verify = dec.generate(prompt, Request("verify", drafts=ONE_MODULE_DRAFT, max_new_tokens=24, stop_token_ids=()))
        assert verify.tokens == standard.tokens
        proposed += verify.stats.drafts_proposed
        accepted += verify.stats.drafts_accepted
        assert verify.stats.base_calls < standard.stats.base_calls or verify.stats.drafts_accepted == 0
    assert 0 < accepted < proposed


def test_alternate_schedule(tiny):
    """Hand-computed schedule for a 5-token prompt and 9 new tokens x5..x13."""
    prompt = [5, 17, 3, 88, 41]
    result = ReferenceDecoder(tiny).generate(prompt, Request("alternate", max_new_tokens=9, stop_token_ids=()))
    schedule = [(c.kind, c.positions) for c in result.calls]
    assert schedule == [
        ("base", [0, 1, 2, 3, 4]),        # B(x0..x4) -> x5
        ("module", [0, 1, 2, 3, 4, 5]),   # R((h-1,x0)..(h4,x5)) -> x6
        ("base", [5, 6]),                 # B(x5, x6) -> x7
        ("module", [6, 7]),               # R((h5,x6), (h6,x7)) -> x8
        ("base", [7, 8]),
        ("module", [8, 9]),
        ("base", [9, 10]),
        ("module", [10, 11]),
        ("base", [11, 12]),               # -> x13, the 9th token
    ]
    assert len(result.tokens) == 9
    assert result.stats.base_calls == 5 and result.stats.module_calls == 4

    # The module was fed (h_{j-1}, x_j): compare with one full base pass over the sequence.
    sequence = prompt + result.tokens
    with torch.no_grad():
        full = tiny.base_step(torch.tensor([sequence]), torch.arange(len(sequence))[None],
                              torch.ones(1, len(sequence), dtype=torch.long), tiny.empty_kv(2))
    h = full.hidden[0]
    for call in result.calls:
        if call.kind != "module":
            continue
        assert call.token_ids == [sequence[j] for j in call.positions]
        for row, j in zip(call.hidden, call.positions):
            expected = torch.zeros_like(row) if j == 0 else h[j - 1]
            assert (row - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("max_new", [1, 2, 3, 8, 15])
def test_alternate_call_counts(tiny, max_new):
    result = ReferenceDecoder(tiny).generate([5, 17, 3], Request("alternate", max_new_tokens=max_new, stop_token_ids=()))
    assert len(result.tokens) == max_new
    base_calls, module_calls = result.stats.base_calls, result.stats.module_calls
    assert abs(base_calls - module_calls) <= 1
    for call in result.calls[2:]:
        assert len(call.positions) == 2


def test_stop_token_and_length(tiny):
    dec = ReferenceDecoder(tiny)
    free = dec.generate([5, 17, 3], Request("standard", max_new_tokens=10, stop_token_ids=()))
    stop = free.tokens[4]
    first = free.tokens.index(stop)
    for strategy in ("standard", "verify"):
        stopped = dec.generate([5, 17, 3], Request(strategy, max_new_tokens=10, stop_token_ids=(stop,)))
        assert stopped.finish_reason == "stop"
        assert stopped.tokens == free.tokens[:first]
    # max_seq_len is 64: a 60-token prompt leaves room for 4 tokens.
    long = dec.generate([7] * 60, Request("alternate", max_new_tokens=10, stop_token_ids=()))
    assert long.finish_reason == "length" and len(long.tokens) == 4


@pytest.mark.parametrize("prompt,strategy,max_new,message", [
    ([], "standard", 4, "empty"),
    ([1] * 64, "standard", 4, "maximum sequence length"),
    ([1, 96], "standard", 4, "outside the vocabulary"),
    ([1, -1], "standard", 4, "outside the vocabulary"),
    ([1], "greedy", 4, "unknown strategy"),
    ([1], "standard", 0, "max_new_tokens"),
])
def test_bad_requests(tiny, prompt, strategy, max_new, message):
    with pytest.raises(GenerationError, match=message):
        ReferenceDecoder(tiny).generate(prompt, Request(strategy, max_new_tokens=max_new, stop_token_ids=()))


def _chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token with zero probability was drawn"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def _base_next_probs(model, sampling: SamplingParams):
    """The base's sampling distribution of the token after a sequence, computed directly."""
    def next_probs(seq):
        with torch.no_grad():
            out = model.base_step(torch.tensor([seq]), torch.arange(len(seq))[None],
                                  torch.ones(1, len(seq), dtype=torch.long), model.empty_kv(2))
        return probabilities(out.logits[0, -1].double().numpy(), sampling)
    return next_probs


def test_verify_sampling_preserves_base_distribution():
    """Over many seeds, verify's first two tokens (the base's x_n and the verified draft
    x_{n+1}) follow the base's exact joint distribution p(x_n) p(x_{n+1} | x_n), and so
    does the bonus token x_{n+2}'s marginal."""
    vocab = 6
    model = tiny_model(seed=5, vocab_size=vocab)
    sampling = dict(temperature=1.0)
    prompt = [1, 4, 2]
    dec = ReferenceDecoder(model)
    next_probs = _base_next_probs(model, SamplingParams(**sampling))

    p0 = next_probs(prompt)
    joint = np.stack([p0[a] * next_probs(prompt + [a]) for a in range(vocab)])  # (V, V)
    third = sum(joint[a, b] * next_probs(prompt + [a, b]) for a in range(vocab) for b in range(vocab))

    n = 3000
    pairs = np.zeros((vocab, vocab))
    thirds = np.zeros(vocab)
    accepted = proposed = 0
    for seed in range(n):
        result = dec.generate(prompt, Request("verify", SamplingParams(seed=seed, **sampling), max_new_tokens=3, stop_token_ids=(),
                                                  drafts=ONE_MODULE_DRAFT))
        pairs[result.tokens[0], result.tokens[1]] += 1
        thirds[result.tokens[2]] += 1
        accepted += result.stats.drafts_accepted
        proposed += result.stats.drafts_proposed
    assert 0.05 < accepted / proposed < 0.95, "both the accept and the resample path must run"
    # Critical values of chi-square at p = 0.001: 35 cells -> df 35: 66.6; 6 cells -> df 5: 20.5.
    assert _chi_square(pairs.ravel(), joint.ravel()) < 66.6
    assert _chi_square(thirds, third) < 20.5


def test_chained_and_lookup_verify_sampling_preserves_base_distribution():
    """With up to three drafts per step from prompt lookup and full module chains, verify's
    first three tokens still follow the base's exact joint distribution."""
    vocab = 4
    model = tiny_model(seed=5, vocab_size=vocab)
    sampling = dict(temperature=1.0)
    prompt = [1, 3, 1, 2, 1]
    dec = ReferenceDecoder(model)
    next_probs = _base_next_probs(model, SamplingParams(**sampling))

    joint = np.zeros((vocab,) * 3)
    p0 = next_probs(prompt)
    for a in range(vocab):
        p1 = next_probs(prompt + [a])
        for b in range(vocab):
            joint[a, b] = p0[a] * p1[b] * next_probs(prompt + [a, b])
    counts = np.zeros((vocab,) * 3)
    stats = {"lookup": 0, "accepted": 0, "proposed": 0}
    for seed in range(2000):
        for drafts in (DraftOptions(max_draft=3, lookup_ngram=1), DraftOptions(max_draft=3, lookup_ngram=0, module=True,
                                                                                min_probability=0.0)):
            result = dec.generate(prompt, Request("verify", SamplingParams(seed=seed, **sampling), max_new_tokens=3,
                                                  stop_token_ids=(), drafts=drafts))
            counts[tuple(result.tokens)] += 1
            stats["lookup"] += result.stats.lookup_proposed
            stats["accepted"] += result.stats.drafts_accepted
            stats["proposed"] += result.stats.drafts_proposed
    assert stats["lookup"] > 0 and 0 < stats["accepted"] < stats["proposed"]
    # 64 cells -> df 63; chi-square critical value at p = 0.001: 103.4.
    assert _chi_square(counts.ravel(), joint.ravel()) < 103.4

