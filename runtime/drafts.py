"""Where verify's drafts come from (docs/design.md section 2): prompt lookup, which needs no
model, else the decoder's module chain. Shared by the runtime and the reference decoder so
that both propose the same drafts."""

from __future__ import annotations

from typing import Callable

import numpy as np


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


def make_drafts(tokens: np.ndarray, options, cache_left: int, tokens_left: int, stats,
                module_chain: Callable[[int], tuple[list[int], list]]) -> tuple[list[int], list, bool]:
    """verify's drafts for the positions after `tokens` (prompt and output so far): a
    prompt-lookup draft when there is one, else `module_chain(room)` when options allow
    (runtime.request.DraftOptions). At most options.max_draft tokens, and no more than the
    cache (`cache_left` positions) and max_new_tokens (`tokens_left`) leave room for.
    Counts the proposals in `stats` (runtime.request.Stats).

    Returns: the drafts, the distribution each was drawn from (None for a lookup draft,
    which is deterministic; the module's q otherwise, None under greedy), and whether
    they came from lookup.
    """
    room = min(options.max_draft, cache_left, tokens_left)
    drafts = lookup_draft(tokens, options.lookup_ngram, room)
    if drafts:
        qs, from_lookup = [None] * len(drafts), True
    elif options.module and room > 0:
        (drafts, qs), from_lookup = module_chain(room), False
    else:
        qs, from_lookup = [], False
    stats.proposed(len(drafts), from_lookup)
    return drafts, qs, from_lookup

