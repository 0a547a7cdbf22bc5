"""Where verify's drafts come from (docs/design.md section 2): prompt lookup, which needs no
model, else the decoder's module chain. Shared by the runtime and the reference decoder so
that both propose the same drafts."""

from __future__ import annotations

from typing import Callable

import numpy as np


def lookup_draft(tokens: np.ndarray, ngram: int, room: int) -> list[int]:
    """The tokens that followed the latest earlier occurrence of the last `ngram` tokens of
    `tokens` (prompt and output so far), at most `room` of them; [] when there is none.

    Example: tokens ... a b c ... x a b with ngram 2 proposes [c, ...].
    """
    tokens = np.asarray(tokens)
    if ngram < 1 or room < 1 or len(tokens) <= ngram:
        return []
    pattern = tokens[-ngram:]
    # Windows that end before the last token, so a match is earlier and has a follower.
    windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], ngram)  # (T - ngram, ngram)
    hits = np.flatnonzero((windows == pattern).all(axis=1))
    if not len(hits):
        return []
    start = int(hits[-1]) + ngram
    return [int(t) for t in tokens[start:start + room]]


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

