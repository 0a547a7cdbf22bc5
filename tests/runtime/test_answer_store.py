"""verify's answer store (runtime.drafts.AnswerStore): its search against a plain definition,
the runtime against the reference decoder with store drafts, and the store's way from a
checkpoint through export into the runtime; and drafts cut to an engine's step costs
(runtime.costs, runtime.drafts.worth_drafting)."""

import numpy as np
import pytest

from recycle_export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from recycle_export.reference import ReferenceDecoder
from runtime.artifacts import GenerationRecord
from runtime.costs import StepCosts
from runtime.drafts import ANSWER_STORE, AnswerStore, answer_store_tokens, worth_drafting, write_answer_store
from runtime.errors import ArtifactError, CheckpointError
from runtime.generator import Generator, Request
from runtime.request import DraftOptions
from runtime.sampling import SamplingParams

NO_LOOKUP = DraftOptions(lookup_ngram=0)  # store drafts only


def test_store_drafts():
    store = AnswerStore.from_answers([[1, 2, 3, 4, 5], [9, 1, 2, 3, 7], [1, 2, 3, 4, 6]])
    # "1 2 3" ends in all three answers: 4 follows two of them, then 5 and 6 tie (the smaller
    # wins), and that answer ends
    assert store.draft(np.array([8, 1, 2, 3]), 2, 5) == [4, 5]
    assert store.draft(np.array([9, 1, 2, 3]), 2, 5) == [7]  # the longer suffix "9 1 2 3" ends once
    assert store.draft(np.array([8, 1, 2, 3]), 2, 1) == [4]  # room
    assert store.draft(np.array([0, 3, 4]), 2, 5) == [5]  # as long as the match, at most
    assert store.draft(np.array([4, 5]), 2, 5) == []  # the answer ends there
    assert store.draft(np.array([0, 5, 9]), 2, 5) == []  # "5 9" spans two answers: not in the store
    assert store.draft(np.array([0, 3]), 2, 5) == []  # one token is shorter than ngram
    assert store.draft(np.array([0, 3]), 1, 5) == [4]
    assert AnswerStore.from_answers([]).draft(np.array([1, 2]), 1, 3) == []
    assert len(store) == 17  # 15 tokens and 2 separators


def test_store_matches_a_plain_search():
    """The binary search over the reversed store against the definition, on random stores
    and texts of a small alphabet."""
    def plain(answers, tokens, ngram, room):
        tokens = list(tokens)
        for length in range(min(len(tokens), AnswerStore.WINDOW), ngram - 1, -1):
            suffix = tokens[len(tokens) - length:]
            ends = [(a, j) for a, answer in enumerate(answers) for j in range(length - 1, len(answer))
                    if answer[j - length + 1:j + 1] == suffix]
            if not ends:
                continue
            draft = []
            for i in range(1, min(length, room) + 1):
                followers = [answers[a][j + i] if j + i < len(answers[a]) else -1 for a, j in ends]
                top = min(set(followers), key=lambda t: (-followers.count(t), t))
                if top == -1:
                    break
                draft.append(top)
                ends = [end for end, f in zip(ends, followers) if f == top]
            return draft
        return []

    rng = np.random.default_rng(0)
    for _ in range(300):
        answers = [rng.integers(0, 4, size=int(rng.integers(1, 25))).tolist() for _ in range(int(rng.integers(1, 6)))]
        store = AnswerStore.from_answers(answers)
        for _ in range(5):
            tokens = rng.integers(0, 4, size=int(rng.integers(1, 30)))
            ngram, room = int(rng.integers(1, 4)), int(rng.integers(1, 16))
            assert store.draft(tokens, ngram, room) == plain(answers, tokens, ngram, room), (answers, tokens)


@pytest.fixture(scope="module")
def generator(tiny_artifacts):
    return Generator.from_artifacts(tiny_artifacts, threads=1)


def own_answers(generator, prompts, max_new_tokens=24):
    """The model's greedy answers to `prompts`: a store whose drafts it agrees with."""
    request = Request("standard", max_new_tokens=max_new_tokens, stop_token_ids=())
    return [generator.generate(p, request).tokens for p in prompts]


def test_verify_with_store_drafts_equals_reference_and_standard(generator, tiny):
    """Store drafts (alone and behind prompt lookup and before the module) are proposed,
    accepted, and leave greedy verify equal to standard and the runtime equal to the reference."""
    store = AnswerStore.from_answers(own_answers(generator, [[5, 17, 3], [41, 9, 60], [88, 12]]))
    with_store = Generator(generator.backend, generator.artifacts, store=store)
    fields = ("base_calls", "module_calls", "drafts_proposed", "drafts_accepted", "lookup_proposed",
              "lookup_accepted", "store_proposed", "store_accepted", "proposed_at", "accepted_at")
    for drafts in (NO_LOOKUP, DraftOptions(), DraftOptions(max_draft=3, module=True, min_probability=0.0)):
        accepted = 0
        # prompts that end where a stored answer goes on, and others
        for prompt in ([2, 5, 17, 3], [41, 9, 60], [7, 88, 12], [30, 31]):
            request = Request("verify", max_new_tokens=24, stop_token_ids=(), drafts=drafts)
            ours = with_store.generate(prompt, request)
            ref = ReferenceDecoder(tiny, store=store).generate(prompt, request)
            standard = generator.generate(prompt, Request("standard", max_new_tokens=24, stop_token_ids=()))
            assert ours.tokens == ref.tokens == standard.tokens
            assert [getattr(ours.stats, f) for f in fields] == [getattr(ref.stats, f) for f in fields]
            accepted += ours.stats.store_accepted
            sampled = Request("verify", SamplingParams(temperature=0.8, top_k=20, seed=3), 20, stop_token_ids=(),
                              drafts=drafts)
            assert with_store.generate(prompt, sampled).tokens == ReferenceDecoder(tiny, store=store).generate(
                prompt, sampled).tokens
        assert accepted > 0
    off = Request("verify", max_new_tokens=24, stop_token_ids=(), drafts=DraftOptions(answer_store=False))
    assert with_store.generate([2, 5, 17, 3], off).stats.store_proposed == 0


def test_the_store_goes_from_checkpoint_through_export(tiny, tmp_path):
    from recycle_export.export import export

    answers = answer_store_tokens([[5, 6, 7], [8, 9]])
    ckpt = tmp_path / "ckpt"
    save_checkpoint(Checkpoint(tiny, False, GenerationRecord(eos_token_ids=(2,)), answers=answers), ckpt)
    assert load_checkpoint(ckpt).answers.tolist() == [5, 6, 7, -1, 8, 9]
    manifest = export(ckpt, tmp_path / "artifacts")
    assert manifest.answer_store == ANSWER_STORE and ANSWER_STORE in manifest.files
    store = Generator.from_artifacts(tmp_path / "artifacts").store
    assert store is not None and store.tokens.tolist() == [5, 6, 7, -1, 8, 9, -1]
    from recycle_export.describe import describe

    assert "answer store (verify's drafts): answers.npy, 6 positions" in describe(tmp_path / "artifacts")
    (tmp_path / "artifacts" / ANSWER_STORE).write_bytes(b"changed")
    with pytest.raises(ArtifactError, match="changed since export"):
        Generator.from_artifacts(tmp_path / "artifacts")


def test_an_export_without_a_store_has_none(tiny_artifacts):
    assert Generator.from_artifacts(tiny_artifacts).store is None


@pytest.mark.parametrize("tokens, message", [(np.array([1, 96]), "outside the vocabulary"),
                                             (np.array([1, -2]), "outside the vocabulary"),
                                             (np.zeros((2, 2), np.int32), "not an answer store"),
                                             (np.array([0.5]), "not an answer store")])
def test_a_bad_store_is_refused_on_load(tiny, tmp_path, tokens, message):
    ckpt = tmp_path / "ckpt"
    save_checkpoint(Checkpoint(tiny, False), ckpt)
    write_answer_store(ckpt / ANSWER_STORE, np.zeros(1, np.int32))
    np.save(ckpt / ANSWER_STORE, tokens)  # what a hand-made file might hold
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt)


FLAT = StepCosts((100,), (1, 16), ((10.0, 10.0),))  # a wider step costs nothing more
STEEP = StepCosts((100, 1000), (1, 2, 4, 16), ((10.0, 15.0, 25.0, 100.0), (10.0, 20.0, 40.0, 160.0)))


def test_step_costs_interpolate():
    assert STEEP.relative(1, 100) == 1.0 and STEEP.relative(2, 100) == 1.5
    assert STEEP.relative(3, 100) == 2.0  # between 2 and 4 new tokens
    assert STEEP.relative(2, 550) == pytest.approx(1.75)  # between the pasts
    assert STEEP.relative(17, 5000) == 16.0 and STEEP.relative(2, 10) == 1.5  # clamped at the edges


@pytest.mark.parametrize("table, message", [
    ({"pasts": [100], "news": [2, 4], "ms": [[1.0, 2.0]]}, "news from 1"),
    ({"pasts": [100, 50], "news": [1], "ms": [[1.0], [1.0]]}, "increasing"),
    ({"pasts": [100], "news": [1, 2], "ms": [[1.0]]}, "1 rows of 2 positive numbers"),
    ({"pasts": [100], "news": [1, 2], "ms": [[1.0, -2.0]]}, "positive")])
def test_bad_step_costs_are_refused(table, message):
    from runtime.records import Fields

    with pytest.raises(ArtifactError, match=message):
        StepCosts.from_json(Fields(table, "engine.json", "rebuild"))


def test_drafts_are_cut_to_what_a_wider_step_is_worth():
    ten = list(range(10))
    assert worth_drafting(ten, "lookup", 100, FLAT) == 10  # free width: the whole draft
    # p = 0.97 (a match of 8 or more): 1 + .97 + .94 + .91 = 3.82 tokens for 2.5 steps at k = 3,
    # 4.70 for 3.125 at k = 4
    assert worth_drafting(ten, "lookup", 100, STEEP) == 3
    # a 2-token store match (p = 0.29): 1.29 tokens for 1.5 steps, not worth it
    assert worth_drafting([1, 2], "store", 100, STEEP) == 0
    assert worth_drafting([1, 2], "store", 100, FLAT) == 2
    assert worth_drafting([1, 2], "lookup", 1000, STEEP) == 0  # 1.57 tokens for 2 steps


def test_verify_with_step_costs_equals_reference_and_standard(generator, tiny):
    """Drafts cut by an engine's step costs: the runtime and the reference make the same
    cuts, and greedy verify still gives standard's tokens."""
    store = AnswerStore.from_answers(own_answers(generator, [[5, 17, 3], [41, 9, 60], [88, 12]]))
    steep = StepCosts((16, 48), (1, 2, 4, 16), ((10.0, 13.0, 17.0, 40.0), (10.0, 14.0, 20.0, 60.0)))
    with_costs = Generator(generator.backend, generator.artifacts, store=store, costs=steep)
    uncut = Generator(generator.backend, generator.artifacts, store=store)
    cut = 0
    for prompt in ([2, 5, 17, 3], [41, 9, 60], [7, 8, 7, 8, 7, 8, 7], [30, 31]):
        request = Request("verify", max_new_tokens=24, stop_token_ids=())
        ours = with_costs.generate(prompt, request)
        ref = ReferenceDecoder(tiny, store=store, costs=steep).generate(prompt, request)
        assert ours.tokens == ref.tokens == generator.generate(prompt, Request("standard", max_new_tokens=24,
                                                                               stop_token_ids=())).tokens
        assert ours.stats.by_source == ref.stats.by_source and ours.stats.base_calls == ref.stats.base_calls
        cut += uncut.generate(prompt, request).stats.drafts_proposed - ours.stats.drafts_proposed
    assert cut > 0
