"""runtime.evaluate against direct PyTorch computations on the tiny model."""

import math

import pytest
import torch

from runtime.evaluate import evaluate, gate_curve, nll_per_token
from runtime.generator import Generator


@pytest.fixture(scope="module")
def generator(tiny_artifacts):
    return Generator.from_artifacts(tiny_artifacts, threads=1)


def test_nll_matches_pytorch(generator, tiny):
    prompt, answer = [5, 17, 3], [40, 41, 42, 7]
    total, count = nll_per_token(generator, prompt, answer)
    seq = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = tiny.base_step(seq, torch.arange(7)[None], torch.ones_like(seq), tiny.empty_kv(2), 7).logits[0]
    expected = -torch.log_softmax(logits.double(), -1)[2:6].gather(1, torch.tensor(answer)[:, None]).sum()
    assert count == 4 and total == pytest.approx(float(expected), rel=1e-5)


def test_evaluation_figures(generator):
    figures = evaluate(generator, [[5, 17, 3], [88, 2]], max_new_tokens=10)
    assert figures.prompts == 2 and figures.agreement_tokens > 0
    assert 0.0 <= figures.top1_agreement <= 1.0 and 0.0 <= figures.verify_acceptance <= 1.0
    assert figures.nll_standard > 0 and math.isfinite(figures.alternate_nll_increase)
    assert figures.alternate_nll_increase == pytest.approx(
        (figures.nll_alternate - figures.nll_standard) / figures.nll_standard)


def test_gate_curve_spans_alternate_to_standard(generator):
    """Gate 1 is standard (its text, one token per base call, no NLL cost); gate 0 is the
    paper's alternate (about two tokens per base call)."""
    alternate, standard = gate_curve(generator, [[5, 17, 3], [41, 9, 60, 2]], (0.0, 1.0), max_new_tokens=12)
    assert standard.tokens_per_base_call == 1.0 and standard.nll_increase == 0.0
    assert alternate.tokens_per_base_call > 1.5
    assert alternate.speedup > 0 and standard.speedup > 0

