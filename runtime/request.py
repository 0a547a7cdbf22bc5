"""What a generation is asked to do and what it reports: the strategy names, the Request,
the Stats, and the one check of a request that the runtime and the reference decoder share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from runtime.contract import DECODE_MAX_NEW
from runtime.errors import GenerationError
from runtime.sampling import SamplingParams, is_integer

# The decoding schedules (docs/design.md section 2). Each decoder maps every name here to its
# schedule in one table; the CLI's choices and `evaluate` read this tuple.
STRATEGIES = ("standard", "alternate", "verify")


# verify's draft length limit: a base step checks the last token plus the drafts, and
# engines with shape profiles take at most DECODE_MAX_NEW new tokens in a decode step.
MAX_DRAFT = DECODE_MAX_NEW - 1


@dataclass(frozen=True)
class DraftOptions:
    """How verify drafts (docs/design.md section 2). Each base step checks up to max_draft
    drafted tokens: a prompt-lookup draft when a suffix of at least lookup_ngram tokens
    occurred before (what followed its longest such suffix, as many tokens as that suffix is
    long; 0 switches lookup off), otherwise, with answer_store, a draft from the model's store
    of its own answers (runtime.drafts.AnswerStore; exports without one have none),
    otherwise, with module, a chain from the module that drafts while the module's top
    probability for the position reaches min_probability (none at all when it is not that
    sure of the first)."""

    # The defaults are the fastest lossless configuration measured on the real-task set
    # (benchmarks/tasks; docs/design.md section 2): the committed module's drafts are right
    # too rarely on real tasks to pay for its calls and the wider base step, so only prompt
    # lookup and store drafts unless asked; with module=True, 0.5 was the best gate measured.
    max_draft: int = MAX_DRAFT
    lookup_ngram: int = 2
    module: bool = False
    min_probability: float = 0.5
    answer_store: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_draft <= MAX_DRAFT:
            raise GenerationError(f"max_draft must be in 1..{MAX_DRAFT}, got {self.max_draft}")
        if self.lookup_ngram < 0:
            raise GenerationError(f"lookup_ngram must be >= 0 (0 switches lookup off), got {self.lookup_ngram}")
        if not 0.0 <= self.min_probability <= 1.0:
            raise GenerationError(f"min_probability must be in [0, 1], got {self.min_probability}")
        if not self.module and not self.lookup_ngram and not self.answer_store:
            raise GenerationError("verify needs a draft source: prompt lookup, the answer store, the module "
                                  "or several")


@dataclass(frozen=True)
class Request:
    """What to generate. Checked on construction (the CLI builds one too, so both share
    this check); `check_request` adds what depends on the model.

    Raises:
        GenerationError: an unknown strategy, sampling that is not a SamplingParams,
            max_new_tokens not a positive integer, stop_token_ids or stop_strings not a
            list or tuple (a lone string is refused, not split into characters), a negative
            or non-integer stop token, an empty stop string, drafts that are not a
            DraftOptions, or min_confidence outside [0, 1].
    """

    strategy: str = "standard"
    sampling: SamplingParams = SamplingParams()
    max_new_tokens: int = 64
    stop_token_ids: tuple[int, ...] | None = None  # None: the model's end-of-sequence tokens
    stop_strings: tuple[str, ...] = ()
    drafts: DraftOptions = DraftOptions()  # verify only
    # alternate only: emit the module's token unverified only when its top probability is at
    # least this; otherwise the base computes that position (0: the paper's alternate; 1: standard).
    min_confidence: float = 0.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise GenerationError(f"unknown strategy {self.strategy!r}; expected one of {', '.join(STRATEGIES)}")
        if not isinstance(self.sampling, SamplingParams):
            raise GenerationError(f"sampling must be a SamplingParams, got {type(self.sampling).__name__}")
        if not is_integer(self.max_new_tokens) or self.max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.stop_token_ids is not None:
            if not isinstance(self.stop_token_ids, (list, tuple)):
                raise GenerationError(f"stop_token_ids must be a list of token ids, got {self.stop_token_ids!r}")
            if not all(is_integer(t) and t >= 0 for t in self.stop_token_ids):
                raise GenerationError(f"stop_token_ids must be non-negative integers, got {list(self.stop_token_ids)}")
            object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if not isinstance(self.stop_strings, (list, tuple)):
            raise GenerationError(f"stop_strings must be a list of strings, got {self.stop_strings!r} "
                                  f"(write ({self.stop_strings!r},) for one)")
        if not all(isinstance(s, str) and s for s in self.stop_strings):
            raise GenerationError(f"stop strings must be non-empty strings, got {list(self.stop_strings)!r}")
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if not isinstance(self.drafts, DraftOptions):
            raise GenerationError(f"drafts must be a DraftOptions, got {type(self.drafts).__name__}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise GenerationError(f"min_confidence must be in [0, 1], got {self.min_confidence}")


@dataclass
class Stats:
    base_calls: int = 0
    module_calls: int = 0
    drafts_proposed: int = 0  # drafted tokens, all sources
    drafts_accepted: int = 0
    lookup_proposed: int = 0  # of those, from prompt lookup
    lookup_accepted: int = 0
    store_proposed: int = 0  # from the answer store
    store_accepted: int = 0
    # Per draft position (index 0: the first draft after a base step), all sources.
    proposed_at: list[int] = field(default_factory=lambda: [0] * MAX_DRAFT)
    accepted_at: list[int] = field(default_factory=lambda: [0] * MAX_DRAFT)
    batch: int = 1
    prompt_tokens: int = 0
    generated_tokens: int = 0  # over all rows
    prefill_seconds: float = 0.0  # up to the first generated token
    decode_seconds: float = 0.0  # from the first generated token to the last

    def proposed(self, count: int, source: str) -> None:
        """Count `count` drafts proposed for one base step, from `source` (runtime.drafts.SOURCES)."""
        self.drafts_proposed += count
        self.lookup_proposed += count if source == "lookup" else 0
        self.store_proposed += count if source == "store" else 0
        for i in range(count):
            self.proposed_at[i] += 1

    def accepted(self, position: int, source: str) -> None:
        """Count the draft at `position` (0-based within its step), from `source`, as accepted."""
        self.drafts_accepted += 1
        self.lookup_accepted += source == "lookup"
        self.store_accepted += source == "store"
        self.accepted_at[position] += 1

    @property
    def acceptance(self) -> float | None:
        return self.drafts_accepted / self.drafts_proposed if self.drafts_proposed else None

    @property
    def by_source(self) -> dict[str, tuple[int, int]]:
        """(accepted, proposed) drafts per source (runtime.drafts.SOURCES)."""
        module = (self.drafts_accepted - self.lookup_accepted - self.store_accepted,
                  self.drafts_proposed - self.lookup_proposed - self.store_proposed)
        return {"lookup": (self.lookup_accepted, self.lookup_proposed),
                "store": (self.store_accepted, self.store_proposed), "module": module}

    @property
    def acceptance_at(self) -> list[float | None]:
        """Acceptance of the drafts at each draft position: a later draft counts as proposed
        only when it was drafted, and is accepted only after every earlier one was."""
        return [a / p if p else None for a, p in zip(self.accepted_at, self.proposed_at)]

    @property
    def tokens_per_base_call(self) -> float | None:
        """Generated tokens per base call after the prefill (verify: 1 + accepted drafts)."""
        steps = self.base_calls - 1
        return (self.generated_tokens - self.batch) / steps if steps > 0 else None

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens after each row's first, per second of decoding; None when no row went past
        its first token (nothing was decoded to time)."""
        decoded = self.generated_tokens - self.batch
        return decoded / self.decode_seconds if decoded > 0 and self.decode_seconds > 0 else None


def check_request(prompts: list[list[int]], request: Request, max_seq_len: int, vocab_size: int) -> None:
    """Refuse a request no decoder can run.

    Raises:
        GenerationError: an unknown strategy, no prompts, an empty prompt, one that leaves
            no room to generate within max_seq_len, a token id outside the vocabulary,
            verify with more than one prompt, or max_new_tokens < 1.
    """
    if not prompts:
        raise GenerationError("no prompts given")
    if request.strategy == "verify" and len(prompts) > 1:
        raise GenerationError("verify decodes one prompt at a time; use standard or alternate for a batch")
    for prompt in prompts:
        if not prompt:
            raise GenerationError("the prompt is empty")
        if not all(is_integer(t) for t in prompt):
            raise GenerationError("prompt token ids must be integers")
        if len(prompt) >= max_seq_len:
            raise GenerationError(f"the prompt has {len(prompt)} tokens; the maximum sequence length "
                                  f"is {max_seq_len}, leaving no room to generate")
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise GenerationError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")


# More intra-op threads than this many per core only slow decoding down (1000 threads on a
# 2-core machine ran 4x slower than 2).
THREADS_PER_CORE = 4


def check_threads(threads: int | None) -> None:
    """Refuse a thread count outside 1 .. THREADS_PER_CORE x the machine's cores (None: the
    backend's default, all cores).

    Raises:
        GenerationError: naming the allowed range and the machine's cores.
    """
    if threads is None:
        return
    cores = os.cpu_count() or 1
    if not is_integer(threads) or not 1 <= threads <= THREADS_PER_CORE * cores:
        raise GenerationError(f"threads must be an integer in 1..{THREADS_PER_CORE * cores} "
                              f"({THREADS_PER_CORE} per core; this machine has {cores}), got {threads!r}")
