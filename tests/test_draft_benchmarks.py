"""The pure parts of the draft benchmarks (benchmarks/lookup_offline.py,
benchmarks/verify_drafts.py): the offline replay of verify over a greedy text, the step-cost
interpolation, and the configuration names."""

import numpy as np
import pytest

from benchmarks.lookup_offline import fixed_draft, step_cost, walk
from benchmarks.verify_drafts import parse_config
from runtime.drafts import lookup_draft
from runtime.request import DraftOptions


def test_fixed_draft_is_the_old_rule():
    assert fixed_draft(np.array([1, 2, 3, 9, 1, 2]), 3) == [3, 9, 1]  # 3 tokens after any 2-token match
    assert fixed_draft(np.array([1, 2, 3, 1, 2, 4, 1, 2]), 1) == [4]  # the latest occurrence
    assert fixed_draft(np.array([1, 2, 3, 4]), 3) == []


def test_walk_replays_verify_over_a_greedy_text():
    text = np.array([5, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 9])  # prompt [5, 1, 2, 3, 4], then the answer
    never = lambda tokens, left: []  # noqa: E731
    assert walk(text, 5, never, None)[0] == 8  # no drafts: one base step per token
    # Steps: no match ("4"), a 1-token match only ("1"), "1 2" drafts [3, 4] (both right, then
    # 1), "1 2 3 4 1" drafts 2 of its 5 followers (the room left: [2, 3], right, then 9).
    steps, ms, standard_ms = walk(text, 5, lambda t, left: lookup_draft(t, 2, min(15, left)),
                                  lambda new, past: 1.0 + 0.1 * (new - 1))
    assert steps == 4
    assert ms == pytest.approx(1.0 + 1.0 + 1.2 + 1.2) and standard_ms == pytest.approx(8.0)


def test_step_cost_interpolates_and_clamps():
    cost = step_cost({100: {1: 10.0, 4: 16.0}, 1000: {1: 20.0, 4: 40.0}})
    assert cost(1, 100) == 10.0 and cost(4, 1000) == 40.0
    assert cost(2, 100) == pytest.approx(12.0)  # between 1 and 4 new tokens
    assert cost(1, 550) == pytest.approx(15.0)  # between the pasts
    assert cost(1, 50) == 10.0 and cost(8, 5000) == 40.0  # clamped at the table's edges


def test_configuration_names():
    assert parse_config("lookup n2 k15") == DraftOptions(15, 2, False, answer_store=False)
    assert parse_config("lookup n2 k15 + store") == DraftOptions(15, 2, False)
    assert parse_config("lookup n2 k15 + store, uncut") == DraftOptions(15, 2, False)
    assert parse_config("lookup n3 k7 + module p0.3") == DraftOptions(7, 3, True, 0.3, answer_store=False)
    assert parse_config("lookup n3 k7 + store + module p0.3") == DraftOptions(7, 3, True, 0.3)
    assert parse_config("module chain k3 p0") == DraftOptions(3, 0, True, 0.0, answer_store=False)
    assert parse_config("one module draft") == DraftOptions(1, 0, True, 0.0, answer_store=False)
    with pytest.raises(ValueError):
        parse_config("lookup k3")
