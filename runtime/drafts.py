"""Draft sources for verify that need no model: prompt lookup (docs/design.md section 2).
Shared by the runtime and the reference decoder so that both propose the same drafts."""

from __future__ import annotations

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
