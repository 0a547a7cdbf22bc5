"""Quality of a recyclable module on held-out prompts, measured with the exported graphs.

- top-1 agreement: on the base's own greedy answer, how often the module's argmax at
  position j equals the base's argmax (teacher-forced, one call of each graph per prompt);
- verify acceptance: drafts accepted / proposed by the verify strategy (greedy);
- quality cost of alternate: per-token negative log-likelihood, under the base, of the text
  alternate generates, against the text standard generates, as a relative difference.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Callable

import numpy as np

from runtime import contract as C
from runtime.bench import OVERALL, text_table
from runtime.generator import Generator
from runtime.request import STRATEGIES, DraftOptions, Request
from runtime.kv import BASE, MODULE, prompt_feeds


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


def base_states(backend, dims: C.Dims, tokens: list[int], num_logits: int | None = None,
                pool=None) -> tuple[np.ndarray, np.ndarray]:
    """One base call over all of `tokens` from an empty cache: the logits of the last
    `num_logits` positions (default: all), (N, V), and h at every position, (T, dim)."""
    pool = pool or backend.new_kv_pool(dims, 1, len(tokens))
    out = backend.run(C.FULL_STEP, {**prompt_feeds(tokens, num_logits or len(tokens)), **pool.feeds(BASE)},
                      pool.output_buffers(BASE))
    return out[C.LOGITS][0], out[C.HIDDEN_STATES][0]


def teacher_forced(backend, dims: C.Dims, tokens: list[int],
                   with_module: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Base and module logits at every position of `tokens`: two (T, V) arrays, the module
    fed the base's h_{j-1} as in decoding (None when with_module is False)."""
    pool = backend.new_kv_pool(dims, 1, len(tokens))
    base_logits, hidden = base_states(backend, dims, tokens, pool=pool)
    if not with_module:
        return base_logits, None
    prev = np.concatenate([np.zeros_like(hidden[:1]), hidden[:-1]])[None]  # (1, T, dim): h_{j-1}
    module = backend.run(C.RECYCLE_STEP, {**prompt_feeds(tokens, len(tokens)), C.HIDDEN_STATES: prev,
                                          **pool.feeds(MODULE)}, pool.output_buffers(MODULE))
    return base_logits, module[C.LOGITS][0]


def _answer_nll(base_logits: np.ndarray, prompt_len: int, answer: list[int]) -> float:
    logp = _log_softmax(base_logits[prompt_len - 1:prompt_len + len(answer) - 1])  # predictions of the answer
    return float(-logp[np.arange(len(answer)), answer].sum())


def nll_per_token(gen: Generator, prompt: list[int], answer: list[int]) -> tuple[float, int]:
    """Summed NLL of `answer` after `prompt` under the base, and the token count."""
    base_logits, _ = teacher_forced(gen.backend, gen.dims, prompt + answer, with_module=False)
    return _answer_nll(base_logits, len(prompt), answer), len(answer)


@dataclass
class _Counts:
    """One prompt's sums, added up over a group of prompts."""
    agree: int = 0
    agree_total: int = 0
    proposed: int = 0
    accepted: int = 0
    nll_standard: float = 0.0
    tokens_standard: int = 0
    nll_alternate: float = 0.0
    tokens_alternate: int = 0

    def __add__(self, other: "_Counts") -> "_Counts":
        return _Counts(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def evaluation(self, prompts: int) -> Evaluation:
        nll_std = self.nll_standard / max(self.tokens_standard, 1)
        nll_alt = self.nll_alternate / max(self.tokens_alternate, 1)
        return Evaluation(prompts, self.agree / max(self.agree_total, 1), self.agree_total,
                          self.accepted / max(self.proposed, 1), nll_std, nll_alt,
                          (nll_alt - nll_std) / nll_std if nll_std else float("nan"))


# verify as a measure of the module: one module draft every step, whatever its confidence
# (verify's defaults draft by prompt lookup and the answer store, which say nothing of the module).
MODULE_DRAFTS = DraftOptions(max_draft=1, lookup_ngram=0, module=True, min_probability=0.0, answer_store=False)


def _count(gen: Generator, prompt: list[int], max_new_tokens: int) -> _Counts:
    counts = _Counts()
    answers = {}
    for strategy in STRATEGIES:
        result = gen.generate(prompt, Request(strategy, max_new_tokens=max_new_tokens, drafts=MODULE_DRAFTS))
        answers[strategy] = result.tokens
        counts.proposed += result.stats.drafts_proposed
        counts.accepted += result.stats.drafts_accepted
    # Agreement on the base's own answer: the module at j against the base at j; the same
    # base logits give the standard answer's NLL.
    standard = answers["standard"]
    base_logits, module_logits = teacher_forced(gen.backend, gen.dims, prompt + standard)
    span = slice(len(prompt) - 1, len(prompt) + len(standard) - 1)
    counts.agree = int((base_logits[span].argmax(-1) == module_logits[span].argmax(-1)).sum())
    counts.agree_total = span.stop - span.start
    counts.nll_standard = _answer_nll(base_logits, len(prompt), standard)
    counts.tokens_standard = len(standard)
    if answers["alternate"]:
        counts.nll_alternate, counts.tokens_alternate = nll_per_token(gen, prompt, answers["alternate"])
    return counts


def evaluate(gen: Generator, prompts: list[list[int]], max_new_tokens: int = 64,
             progress: Callable[[int, int], None] = lambda done, total: None) -> Evaluation:
    """Raises: GenerationError for a prompt the Generator refuses."""
    return evaluate_by_group(gen, prompts, [OVERALL] * len(prompts), max_new_tokens, progress)[OVERALL]


def evaluate_by_group(gen: Generator, prompts: list[list[int]], groups: list[str], max_new_tokens: int = 64,
                      progress: Callable[[int, int], None] = lambda done, total: None) -> dict[str, Evaluation]:
    """The evaluation of each group of prompts (a label per prompt, e.g. a task kind; in
    first-seen order) and of all of them, under "overall"; every figure pools its group's
    tokens. Raises: GenerationError for a prompt the Generator refuses."""
    assert len(groups) == len(prompts)
    sums: dict[str, _Counts] = {g: _Counts() for g in dict.fromkeys(groups)}
    sizes = {g: groups.count(g) for g in sums}
    for i, (prompt, group) in enumerate(zip(prompts, groups)):
        sums[group] = sums[group] + _count(gen, prompt, max_new_tokens)
        progress(i + 1, len(prompts))
    report = {g: c.evaluation(sizes[g]) for g, c in sums.items()}
    report[OVERALL] = sum(sums.values(), _Counts()).evaluation(len(prompts))
    return report


@dataclass
class GatePoint:
    """alternate at one confidence gate (Request.min_confidence), against standard."""

    gate: float
    tokens_per_base_call: float  # after the prefill; standard: 1
    speedup: float  # decode tokens/s against standard's, same prompts, same sitting
    nll_increase: float  # per-token NLL of its text under the base, relative to standard's


@dataclass
class _Run:
    """One schedule's sums over prompts: its text's NLL under the base, and its speed."""

    nll: float = 0.0
    tokens: int = 0
    decoded: int = 0  # tokens after each prompt's first
    base_steps: int = 0  # base calls after the prefill
    seconds: float = 0.0  # of decoding

    def add(self, gen: Generator, prompt: list[int], request: Request) -> None:
        result = gen.generate(prompt, request)
        if result.tokens:
            nll, count = nll_per_token(gen, prompt, result.tokens)
            self.nll, self.tokens = self.nll + nll, self.tokens + count
        self.decoded += result.stats.generated_tokens - 1
        self.base_steps += result.stats.base_calls - 1
        self.seconds += result.stats.decode_seconds

    @property
    def nll_per_token(self) -> float:
        return self.nll / max(self.tokens, 1)

    @property
    def speed(self) -> float:
        return self.decoded / self.seconds if self.seconds else float("nan")


def gate_curve(gen: Generator, prompts: list[list[int]], gates: tuple[float, ...], max_new_tokens: int = 64,
               progress: Callable[[int, int], None] = lambda done, total: None) -> list[GatePoint]:
    """Speed against quality cost of alternate's confidence gate, so a user can pick a point:
    gate 0 is the paper's alternate, gate 1 standard. Standard runs again here, beside the
    gates, so that the speedups come from one sitting. Raises: GenerationError for a bad prompt."""
    standard, runs = _Run(), {gate: _Run() for gate in gates}
    for i, prompt in enumerate(prompts):
        standard.add(gen, prompt, Request("standard", max_new_tokens=max_new_tokens))
        for gate, run in runs.items():
            run.add(gen, prompt, Request("alternate", max_new_tokens=max_new_tokens, min_confidence=gate))
        progress(i + 1, len(prompts))
    base = standard.nll_per_token
    return [GatePoint(gate, run.decoded / max(run.base_steps, 1), run.speed / standard.speed,
                      (run.nll_per_token - base) / base if base else float("nan"))
            for gate, run in runs.items()]


def table(report: dict[str, Evaluation]) -> str:
    """evaluate_by_group's report, one row per group."""
    rows = [("kind", "prompts", "top-1 agreement", "tokens", "verify acceptance", "NLL standard", "NLL alternate",
             "alternate NLL cost")]
    for group, e in report.items():
        rows.append((group, str(e.prompts), f"{e.top1_agreement:.3f}", str(e.agreement_tokens),
                     f"{e.verify_acceptance:.3f}", f"{e.nll_standard:.4f}", f"{e.nll_alternate:.4f}",
                     f"{e.alternate_nll_increase:+.1%}"))
    return text_table(rows)
