"""runtime.evaluate against direct PyTorch computations on the tiny model."""

import math

import pytest
import torch

from runtime.evaluate import evaluate, nll_per_token
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
