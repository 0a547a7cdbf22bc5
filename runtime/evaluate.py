"""Quality of a recyclable module on held-out prompts, measured with the exported graphs.

- top-1 agreement: on the base's own greedy answer, how often the module's argmax at
  position j equals the base's argmax (teacher-forced, one call of each graph per prompt);
- verify acceptance: drafts accepted / proposed by the verify strategy (greedy);
- quality cost of alternate: per-token negative log-likelihood, under the base, of the text
  alternate generates, against the text standard generates, as a relative difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from runtime import contract as C
from runtime.generator import Generator
from runtime.request import STRATEGIES, Request
from runtime.kv import BASE, MODULE


@dataclass
class Evaluation:
    prompts: int
    top1_agreement: float
    agreement_tokens: int
    verify_acceptance: float
    nll_standard: float  # mean per token, nats
    nll_alternate: float
    alternate_nll_increase: float  # relative: (alternate - standard) / standard


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def teacher_forced(backend, dims: C.Dims, tokens: list[int],
                   with_module: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Base and module logits at every position of `tokens`: two (T, V) arrays, the module
    fed the base's h_{j-1} as in decoding (None when with_module is False)."""
    n = len(tokens)
    pool = backend.new_kv_pool(dims, 1, n)
    ids = np.array([tokens], dtype=np.int64)
    common = {C.INPUT_IDS: ids, C.POSITION_IDS: np.arange(n)[None], C.ATTENTION_MASK: np.ones((1, n), np.int64),
              C.NUM_LOGITS_INPUT: np.array([n], dtype=np.int64)}
    base = backend.run(C.FULL_STEP, {**common, **pool.feeds(BASE)}, pool.output_buffers(BASE))
    if not with_module:
        return base[C.LOGITS][0], None
    hidden = base[C.HIDDEN_STATES]  # (1, T, dim)
    prev = np.concatenate([np.zeros_like(hidden[:, :1]), hidden[:, :-1]], axis=1)  # h_{j-1}
    module = backend.run(C.RECYCLE_STEP, {**common, C.HIDDEN_STATES: prev, **pool.feeds(MODULE)},
                         pool.output_buffers(MODULE))
    return base[C.LOGITS][0], module[C.LOGITS][0]


def _answer_nll(base_logits: np.ndarray, prompt_len: int, answer: list[int]) -> float:
    logp = _log_softmax(base_logits[prompt_len - 1:prompt_len + len(answer) - 1])  # predictions of the answer
    return float(-logp[np.arange(len(answer)), answer].sum())


def nll_per_token(gen: Generator, prompt: list[int], answer: list[int]) -> tuple[float, int]:
    """Summed NLL of `answer` after `prompt` under the base, and the token count."""
    base_logits, _ = teacher_forced(gen.backend, gen.dims, prompt + answer, with_module=False)
    return _answer_nll(base_logits, len(prompt), answer), len(answer)


def evaluate(gen: Generator, prompts: list[list[int]], max_new_tokens: int = 64,
             progress: Callable[[int, int], None] = lambda done, total: None) -> Evaluation:
    """Raises: GenerationError for a prompt the Generator refuses."""
    agree = agree_total = 0
    proposed = accepted = 0
    nll = {"standard": [0.0, 0], "alternate": [0.0, 0]}
    for i, prompt in enumerate(prompts):
        answers = {}
        for strategy in STRATEGIES:
            result = gen.generate(prompt, Request(strategy, max_new_tokens=max_new_tokens))
            answers[strategy] = result.tokens
            proposed += result.stats.drafts_proposed
            accepted += result.stats.drafts_accepted
        # Agreement on the base's own answer: the module at j against the base at j; the
        # same base logits give the standard answer's NLL.
        standard = answers["standard"]
        base_logits, module_logits = teacher_forced(gen.backend, gen.dims, prompt + standard)
        span = slice(len(prompt) - 1, len(prompt) + len(standard) - 1)
        agree += int((base_logits[span].argmax(-1) == module_logits[span].argmax(-1)).sum())
        agree_total += span.stop - span.start
        nll["standard"][0] += _answer_nll(base_logits, len(prompt), standard)
        nll["standard"][1] += len(standard)
        if answers["alternate"]:
            total, count = nll_per_token(gen, prompt, answers["alternate"])
            nll["alternate"][0] += total
            nll["alternate"][1] += count
        progress(i + 1, len(prompts))
    nll_std = nll["standard"][0] / max(nll["standard"][1], 1)
    nll_alt = nll["alternate"][0] / max(nll["alternate"][1], 1)
    return Evaluation(len(prompts), agree / max(agree_total, 1), agree_total,
                      accepted / max(proposed, 1), nll_std, nll_alt,
                      (nll_alt - nll_std) / nll_std if nll_std else float("nan"))
