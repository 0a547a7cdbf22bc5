"""Where verify's drafts come from (docs/design.md section 2): prompt lookup, which needs no
model, else the model's answer store, else the decoder's module chain. Shared by the runtime
and the reference decoder so that both propose the same drafts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.errors import ArtifactError
from runtime.files import write_bytes

SOURCES = ("lookup", "store", "module")  # where a step's drafts came from (runtime.request.Stats)
# The answer store's shortest suffix: 2 gave more tokens per base step than 3 on the held-out
# real-task answers and the benchmark's (benchmarks/lookup_offline.py --store).
STORE_NGRAM = 2
# How often a drafted token is accepted once the drafts before it were, by source and by the
# length of the suffix match that proposed the draft (index 0: 2 tokens ... index 6: 8 or
# more): SmolLM2's greedy answers to the 144 held-out prompts of the training data
# (`benchmarks/lookup_offline.py --data DIR --kinds "" --acceptance`). worth_drafting weighs
# them against the engine's step costs.
ACCEPTANCE = {"lookup": (0.57, 0.65, 0.71, 0.77, 0.81, 0.86, 0.97),
              "store": (0.29, 0.38, 0.42, 0.50, 0.60, 0.65, 0.87)}


def lookup_draft(tokens: np.ndarray, ngram: int, room: int) -> list[int]:
    """A prompt-lookup draft for the positions after `tokens` (prompt and output so far):
    find the longest suffix of `tokens` that occurred earlier (at its latest occurrence
    among the longest), and propose the tokens that followed it, as many as the suffix is
    long and at most `room`; a follower that reaches the end of the text goes on as the
    repeat it is part of. A suffix shorter than `ngram` tokens proposes nothing ([]).

    The longer the suffix that matched, the more the text is repeating itself, and the
    more of the follower the base goes on to accept (measured on real-task answers:
    docs/design.md section 2), so the draft grows with the evidence.

    Example: tokens ... a b c d ... x b c with ngram 2 proposes [d, ...] (2 tokens).
    """
    tokens = np.asarray(tokens)
    last = len(tokens) - 1
    if ngram < 1 or room < 1 or last < ngram:
        return []
    # ends: the earlier positions j (each with a follower) where a suffix of `length` tokens
    # ends, i.e. tokens[j - length + 1 .. j] == tokens[last - length + 1 .. last].
    ends, length = np.flatnonzero(tokens[:-1] == tokens[-1]), 1
    while len(ends) and length < max(ngram, room) and length <= last:
        longer = ends[(ends >= length) & (tokens[np.maximum(ends - length, 0)] == tokens[last - length])]
        if not len(longer):
            break
        ends, length = longer, length + 1
    if not len(ends) or length < ngram:
        return []
    # The follower runs from `start` to the end of the text and then on through the draft
    # itself, as a repeat continues: a period of `period` tokens ("... 5 2 5 2" -> 5 2 5 ...).
    start = int(ends[-1]) + 1
    period = last + 1 - start
    return [int(tokens[start + i % period]) for i in range(min(length, room))]


ANSWER_STORE = "answers.npy"  # its file in a checkpoint and an export folder


def answer_store_tokens(answers) -> np.ndarray:
    """Answers (sequences of token ids) as an answer store holds them: back to back, each
    but the last followed by AnswerStore.SEPARATOR; int32."""
    parts = []
    for answer in answers:
        parts += [np.asarray(answer, dtype=np.int32), np.array([AnswerStore.SEPARATOR], np.int32)]
    return np.concatenate(parts[:-1]) if parts else np.zeros(0, np.int32)


def write_answer_store(path: Path, tokens: np.ndarray) -> None:
    """Write an answer store's tokens (answer_store_tokens) to `path` atomically, as .npy."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(tokens, dtype=np.int32), allow_pickle=False)
    write_bytes(path, buffer.getvalue())


def read_answer_store(path: Path, vocab_size: int, error=ArtifactError) -> np.ndarray:
    """An answer store's tokens from its .npy file, checked.

    Raises: `error` when the file is missing, unreadable, not a 1-D integer array, or holds
    ids outside the vocabulary.
    """
    if not Path(path).is_file():
        raise error(f"answer store {path} not found")
    try:
        tokens = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise error(f"{path}: not an answer store ({exc})") from None
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise error(f"{path}: not an answer store (a {tokens.dtype} array of shape {tokens.shape}; "
                    "expected 1-D token ids)")
    if len(tokens) and not (tokens.max() < vocab_size and tokens.min() >= AnswerStore.SEPARATOR):
        raise error(f"{path}: token ids outside the vocabulary [0, {vocab_size})")
    return tokens.astype(np.int32)


class AnswerStore:
    """The model's own answers to other prompts, searched like prompt lookup (retrieval
    drafts, as REST does): the longest suffix of the text, at least `ngram` tokens, that
    also ends somewhere in the store proposes what followed it there, as many tokens as the
    suffix is long. Where the suffix ends at several places, each drafted token is the one
    that follows most of them (then only those go on), so a common phrasing wins.

    `tokens` holds the answers back to back, each followed by SEPARATOR. The index is the
    store read backwards, its positions sorted by the WINDOW tokens that precede them (a
    suffix array of the reversed store, cut at WINDOW): the places where the text's suffix
    ends are then one contiguous run, found by binary search.
    """

    SEPARATOR = -1
    WINDOW = 16  # longer than any draft (runtime.request.MAX_DRAFT)

    def __init__(self, tokens: np.ndarray):
        """`tokens`: as answer_store_tokens writes them."""
        self.tokens = np.append(np.asarray(tokens, dtype=np.int32), np.int32(self.SEPARATOR))
        # backwards[r] is tokens[n - 1 - r]; a position's key is the WINDOW tokens from there on.
        self._backwards = np.concatenate([self.tokens[::-1], np.full(self.WINDOW, self.SEPARATOR, np.int32)])
        keys = np.lib.stride_tricks.sliding_window_view(self._backwards, self.WINDOW)[:len(self.tokens)]
        self._sorted = np.lexsort(keys.T[::-1]).astype(np.int32)  # by key[0], then key[1], ...

    @classmethod
    def from_answers(cls, answers) -> "AnswerStore":
        """A store of these answers (each a sequence of token ids)."""
        return cls(answer_store_tokens(answers))

    @classmethod
    def load(cls, path: Path, vocab_size: int, error=ArtifactError) -> "AnswerStore":
        """Raises: `error` (see read_answer_store)."""
        return cls(read_answer_store(path, vocab_size, error))

    def __len__(self) -> int:
        return len(self.tokens) - 1

    def draft(self, tokens: np.ndarray, ngram: int, room: int) -> list[int]:
        """A draft for the positions after `tokens` (prompt and output so far), at most `room`
        tokens; [] when no suffix of `ngram` tokens or more occurs in the store."""
        if ngram < 1 or room < 1 or len(tokens) < ngram:
            return []
        suffix = tuple(int(t) for t in np.asarray(tokens)[:-self.WINDOW - 1:-1])  # backwards
        at = self._first(suffix, inclusive=True)
        length = max(self._common(suffix, k) for k in (at - 1, at) if 0 <= k < len(self._sorted))
        if length < ngram:
            return []
        run = self._sorted[self._first(suffix[:length], True):self._first(suffix[:length], False)]
        ends = len(self.tokens) - 1 - run.astype(np.int64)  # store positions where the suffix ends
        return self._follow(ends, min(length, room))

    def _key(self, k: int, length: int) -> tuple:
        r = int(self._sorted[k])
        return tuple(self._backwards[r:r + length].tolist())

    def _common(self, suffix: tuple, k: int) -> int:
        key, n = self._key(k, len(suffix)), 0
        while n < len(suffix) and key[n] == suffix[n]:
            n += 1
        return n

    def _first(self, pattern: tuple, inclusive: bool) -> int:
        """The first sorted position whose key, cut to len(pattern), is >= pattern
        (inclusive) or > pattern."""
        lo, hi = 0, len(self._sorted)
        while lo < hi:
            mid = (lo + hi) // 2
            key = self._key(mid, len(pattern))
            if key < pattern or (not inclusive and key == pattern):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _follow(self, ends: np.ndarray, length: int) -> list[int]:
        """Up to `length` tokens after the store positions `ends`, each the one that follows
        most of them (the smallest id among equals), stopping at an answer's end."""
        draft: list[int] = []
        for i in range(1, length + 1):
            followers = self.tokens[ends + i]  # the last token is a SEPARATOR, so ends + i stays inside
            values, counts = np.unique(followers, return_counts=True)
            top = values[np.argmax(counts)]
            if top == self.SEPARATOR:
                break
            draft.append(int(top))
            ends = ends[followers == top]
        return draft


def worth_drafting(draft: list[int], source: str, past: int, costs) -> int:
    """How many tokens of a lookup or store `draft` (as long as the suffix match that
    proposed it) are worth a wider base step over `past` positions on an engine whose step
    costs are `costs` (runtime.costs.StepCosts): the k that maximizes the expected tokens
    of the step, 1 + p + p^2 + ... + p^k with p from ACCEPTANCE, per unit of its cost
    relative to a 1-token step. 0: none is worth it."""
    table = ACCEPTANCE[source]
    p = table[min(max(len(draft), 2), len(table) + 1) - 2]
    widths = costs.relative_widths(past)  # widths[n - 1]: a step of n new tokens
    best, best_k, expected, chance = 1.0, 0, 1.0, 1.0
    for k in range(1, len(draft) + 1):
        chance *= p
        expected += chance
        value = expected / widths[min(k, len(widths) - 1)]
        if value > best:
            best, best_k = value, k
    return best_k


def make_drafts(tokens: np.ndarray, options, cache_left: int, tokens_left: int, stats,
                module_chain: Callable[[int], tuple[list[int], list]],
                store: AnswerStore | None = None, costs=None) -> tuple[list[int], list, str | None]:
    """verify's drafts for the positions after `tokens` (prompt and output so far): a
    prompt-lookup draft when there is one, else one from the answer `store`, else
    `module_chain(room)`, each as options allow (runtime.request.DraftOptions). At most
    options.max_draft tokens, and no more than the cache (`cache_left` positions) and
    max_new_tokens (`tokens_left`) leave room for. With the engine's step `costs`
    (runtime.costs.StepCosts), a lookup or store draft keeps only the tokens worth their
    wider step (worth_drafting), and a source left with none passes to the next. Counts the
    proposals in `stats` (runtime.request.Stats).

    Returns: the drafts, the distribution each was drawn from (None for a lookup or store
    draft, which is deterministic; the module's q otherwise, None under greedy), and their
    source (one of SOURCES; None when there are none).
    """
    room = min(options.max_draft, cache_left, tokens_left)

    def worth(drafts: list[int], source: str) -> list[int]:
        return drafts[:worth_drafting(drafts, source, len(tokens), costs)] if costs and drafts else drafts

    drafts, source = worth(lookup_draft(tokens, options.lookup_ngram, room), "lookup"), "lookup"
    if not drafts and store is not None and options.answer_store:
        drafts, source = worth(store.draft(tokens, STORE_NGRAM, room), "store"), "store"
    if drafts:
        qs = [None] * len(drafts)
    elif options.module and room > 0:
        (drafts, qs), source = module_chain(room), "module"
    else:
        return [], [], None
    stats.proposed(len(drafts), source)
    return drafts, qs, source

