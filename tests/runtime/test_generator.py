"""The runtime against the PyTorch reference decoder, and its handling of bad input."""

import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from recycle_export.reference import ReferenceDecoder
from runtime.errors import ArtifactError, GenerationError, SamplingError
from runtime.drafts import lookup_draft
from runtime.generator import Generator, Request
from runtime.request import MAX_DRAFT, DraftOptions

# verify as the paper-style one-draft schedule: a module draft every step, whatever its confidence.
ONE_MODULE_DRAFT = DraftOptions(max_draft=1, lookup_ngram=0, module=True, min_probability=0.0)
from runtime.sampling import SamplingParams

PROMPTS = [[5, 17, 3], [88], [41, 9, 60, 2, 33, 70, 12]]


@pytest.fixture(scope="module")
def generator(tiny_artifacts):
    return Generator.from_artifacts(tiny_artifacts, threads=1)


@pytest.mark.parametrize("strategy", ["standard", "alternate", "verify"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokens_equal_reference(generator, tiny, strategy, prompt):
    for max_new in (1, 2, 9, 30):
        ours = generator.generate(prompt, Request(strategy, max_new_tokens=max_new, stop_token_ids=()))
        ref = ReferenceDecoder(tiny).generate(prompt, Request(strategy, max_new_tokens=max_new, stop_token_ids=()))
        assert ours.tokens == ref.tokens
        assert ours.finish_reason == ref.finish_reason
        assert (ours.stats.base_calls, ours.stats.module_calls) == (ref.stats.base_calls, ref.stats.module_calls)
        assert ours.stats.drafts_accepted == ref.stats.drafts_accepted


def test_verify_equals_standard_and_accepts_some(tmp_path_factory):
    """On a tiny vocabulary, random drafts are sometimes right: both verify paths run."""
    from recycle_export.checkpoint import Checkpoint, save_checkpoint
    from recycle_export.export import export
    from tests.conftest import tiny_model

    root = tmp_path_factory.mktemp("vocab8")
    save_checkpoint(Checkpoint(tiny_model(seed=3, vocab_size=8), False), root / "ckpt")
    export(root / "ckpt", root / "art")
    gen = Generator.from_artifacts(root / "art", threads=1)
    accepted = proposed = 0
    lookup_at = np.zeros(MAX_DRAFT, int)  # the default lookup drafts accepted per position
    for seed in range(6):
        prompt = np.random.default_rng(seed).integers(0, 8, 4).tolist()
        standard = gen.generate(prompt, Request("standard", max_new_tokens=24, stop_token_ids=()))
        verify = gen.generate(prompt, Request("verify", drafts=ONE_MODULE_DRAFT, max_new_tokens=24, stop_token_ids=()))
        assert verify.tokens == standard.tokens
        accepted += verify.stats.drafts_accepted
        proposed += verify.stats.drafts_proposed
        lookup = gen.generate(prompt, Request("verify", max_new_tokens=24, stop_token_ids=()))
        assert lookup.tokens == standard.tokens
        lookup_at += lookup.stats.accepted_at
    assert 0 < accepted < proposed
    assert lookup_at[3:].sum() > 0  # drafts longer than 3 were accepted (the text repeats itself)


def test_sampling_matches_reference_with_seed(generator, tiny):
    sampling = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=11)
    for strategy in ("standard", "alternate", "verify"):
        ours = generator.generate([5, 17, 3], Request(strategy, sampling, 20, stop_token_ids=()))
        ref = ReferenceDecoder(tiny).generate([5, 17, 3], Request(strategy, sampling, 20, stop_token_ids=()))
        assert ours.tokens == ref.tokens, strategy


def test_batch_with_left_padding_equals_single(generator):
    for strategy in ("standard", "alternate"):
        request = Request(strategy, max_new_tokens=12, stop_token_ids=())
        batch = generator.generate_batch(PROMPTS, request)
        for prompt, result in zip(PROMPTS, batch):
            assert result.tokens == generator.generate(prompt, request).tokens, strategy


def test_batch_rows_finish_independently(generator):
    request = Request("alternate", max_new_tokens=12, stop_token_ids=())
    alone = generator.generate(PROMPTS[0], request).tokens
    stop = alone[3]
    results = generator.generate_batch(PROMPTS, Request("alternate", max_new_tokens=12, stop_token_ids=(stop,)))
    assert results[0].finish_reason == "stop" and results[0].tokens == alone[:alone.index(stop)]


def test_streaming_yields_the_result_tokens(generator):
    stream = generator.stream([5, 17, 3], Request("verify", max_new_tokens=15, stop_token_ids=()))
    assert list(stream) == stream.result().tokens
    assert len(stream.result().tokens) == 15


def test_stop_token_is_not_returned(generator):
    free = generator.generate([5, 17, 3], Request("alternate", max_new_tokens=10, stop_token_ids=()))
    stop = free.tokens[5]
    stream = generator.stream([5, 17, 3], Request("alternate", max_new_tokens=10, stop_token_ids=(stop,)))
    streamed = list(stream)
    assert stream.result().finish_reason == "stop"
    assert streamed == stream.result().tokens == free.tokens[:free.tokens.index(stop)]


def test_kv_capacity_ends_with_length(generator):
    # max_seq_len is 64: a 60-token prompt leaves room for 4 tokens in every strategy.
    for strategy in ("standard", "alternate", "verify"):
        result = generator.generate([7] * 60, Request(strategy, max_new_tokens=50, stop_token_ids=()))
        assert result.finish_reason == "length" and len(result.tokens) == 4


@pytest.mark.parametrize("prompt,request_,message", [
    ([], {}, "the prompt is empty"),
    ([1] * 64, {}, "maximum sequence length is 64"),
    ([1, 96], {}, r"token id 96 is outside the vocabulary \[0, 96\)"),
    ([1], dict(strategy="fast"), "unknown strategy 'fast'"),
    ([1], dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    ([1], dict(stop_strings=("x",)), "stop strings need a tokenizer"),
])
def test_bad_requests(generator, prompt, request_, message):
    with pytest.raises(GenerationError, match=message):
        generator.generate(prompt, Request(**request_))


def test_verify_refuses_a_batch(generator):
    with pytest.raises(GenerationError, match="verify decodes one prompt at a time"):
        generator.generate_batch([[1], [2]], Request("verify"))


@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-2), "top_k must be an integer >= 0"),
])
def test_invalid_sampling(kwargs, message):
    with pytest.raises(SamplingError, match=message):
        SamplingParams(**kwargs)


def test_incompatible_artifacts(tiny_artifacts, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    manifest = json.loads((art / "manifest.json").read_text())
    (art / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ArtifactError, match="version 99, but this runtime reads .* re-run `cli.py export`"):
        Generator.from_artifacts(art)
    (art / "manifest.json").write_text(json.dumps({**manifest, "kv": {**manifest["kv"], "contract": "fixed-kv-v9"}}))
    with pytest.raises(ArtifactError, match="KV contract 'fixed-kv-v9'"):
        Generator.from_artifacts(art)
    # A graph swapped for another export's with its hash re-stamped in `files`: the hash its
    # validation measured differs; with that dropped too, the contract check still sees it.
    from runtime.files import hash_files

    shutil.copy(art / "full_step.onnx", art / "recycle_step.onnx")
    files = hash_files(art, skip=("manifest.json",))
    (art / "manifest.json").write_text(json.dumps({**manifest, "files": files}))
    with pytest.raises(ArtifactError, match="field files gives recycle_step.onnx another sha256"):
        Generator.from_artifacts(art)
    validation = {k: v for k, v in manifest["validation"].items() if k != "sha256"}
    (art / "manifest.json").write_text(json.dumps({**manifest, "files": files, "validation": validation}))
    with pytest.raises(ArtifactError, match="recycle_step: input 'hidden_states' is missing; re-run `cli.py export`"):
        Generator.from_artifacts(art)
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        Generator.from_artifacts(tmp_path)


def test_two_threads_match_single_runs(generator):
    jobs = [([5, 17, 3], "alternate"), ([41, 9, 60], "verify"), ([88], "standard"), ([2, 2], "alternate")]
    alone = [generator.generate(p, Request(s, max_new_tokens=25, stop_token_ids=())).tokens for p, s in jobs]
    results: dict[int, list[int]] = {}

    def work(indices):
        for _ in range(3):
            for i in indices:
                tokens = generator.generate(jobs[i][0], Request(jobs[i][1], max_new_tokens=25, stop_token_ids=())).tokens
                assert results.setdefault(i, tokens) == tokens

    threads = [threading.Thread(target=work, args=([0, 1],)), threading.Thread(target=work, args=([2, 3],))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(4)] == alone


def test_runtime_never_imports_torch(tiny_artifacts):
    code = ("import sys; from runtime.generator import Generator, Request; "
            f"g = Generator.from_artifacts({str(tiny_artifacts)!r}); g.generate([1, 2], Request('verify', max_new_tokens=3)); "
            "import runtime.bench, runtime.backends.onnxruntime, runtime.contract, runtime.kv; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_draft_vocabulary_runs_as_the_reference(tmp_path_factory):
    """A module restricted to a draft vocabulary exports (validated against PyTorch inside
    export), drafts only its tokens, and the runtime still equals the reference decoder;
    verify still equals standard."""
    from recycle_export.checkpoint import Checkpoint, save_checkpoint
    from recycle_export.export import export
    from recycle_export.describe import describe
    from tests.conftest import tiny_model

    root = tmp_path_factory.mktemp("draft_vocab")
    model = tiny_model(seed=3, vocab_size=8)
    draft_tokens = [0, 2, 3, 5, 6]
    model.recycler.set_draft_tokens(torch.tensor(draft_tokens))
    save_checkpoint(Checkpoint(model, False), root / "ckpt")
    export(root / "ckpt", root / "art")
    assert json.loads((root / "art" / "manifest.json").read_text())["draft_vocab"] == 5
    assert "module drafts from 5 tokens" in describe(root / "art")
    gen = Generator.from_artifacts(root / "art", threads=1)
    accepted = 0
    for seed in range(4):
        prompt = np.random.default_rng(seed).integers(0, 8, 4).tolist()
        runs = {}
        for strategy in ("standard", "alternate", "verify"):
            runs[strategy] = gen.generate(prompt, Request(strategy, max_new_tokens=20, stop_token_ids=()))
            ref = ReferenceDecoder(model).generate(prompt, Request(strategy, max_new_tokens=20, stop_token_ids=()))
            assert runs[strategy].tokens == ref.tokens
        assert runs["verify"].tokens == runs["standard"].tokens
        assert set(runs["alternate"].tokens[1::2]) <= set(draft_tokens)  # every 2nd token is the module's
        accepted += runs["verify"].stats.drafts_accepted
    assert accepted > 0


DRAFTS = [DraftOptions(max_draft=1, lookup_ngram=0, module=True, min_probability=0.0),  # one module draft a step (the paper's)
          DraftOptions(max_draft=3, lookup_ngram=0, module=True, min_probability=0.0),  # full module chains
          DraftOptions(max_draft=3, lookup_ngram=1, module=False),  # prompt lookup alone
          DraftOptions(max_draft=3, lookup_ngram=0, module=True, min_probability=0.05),  # chains the module is sure of
          DraftOptions(max_draft=MAX_DRAFT, lookup_ngram=1, module=True, min_probability=0.0),  # the longest drafts
          DraftOptions()]  # the defaults: lookup drafts as long as their match


@pytest.mark.parametrize("drafts", DRAFTS, ids=lambda d: f"k{d.max_draft}-n{d.lookup_ngram}-m{int(d.module)}")
def test_multi_token_drafts_equal_reference_and_standard(generator, tiny, drafts):
    """Every draft source and length: the runtime makes the reference's drafts and calls,
    and greedy verify gives standard's tokens."""
    beyond_three = 0  # drafts proposed at positions 4 and later
    for prompt in PROMPTS + [[7, 8, 7, 8, 7, 8, 7], [7, 8, 9, 10, 11, 12] * 2 + [7, 8, 9]]:
        request = Request("verify", max_new_tokens=30, stop_token_ids=(), drafts=drafts)
        ours = generator.generate(prompt, request)
        ref = ReferenceDecoder(tiny).generate(prompt, request)
        standard = generator.generate(prompt, Request("standard", max_new_tokens=30, stop_token_ids=()))
        assert ours.tokens == ref.tokens == standard.tokens
        fields = ("base_calls", "module_calls", "drafts_proposed", "drafts_accepted", "lookup_proposed",
                  "lookup_accepted", "proposed_at", "accepted_at")
        assert [getattr(ours.stats, f) for f in fields] == [getattr(ref.stats, f) for f in fields]
        st = ours.stats  # per draft position: the totals split, a later draft only after an earlier one
        assert sum(st.proposed_at) == st.drafts_proposed and sum(st.accepted_at) == st.drafts_accepted
        assert all(a <= p for a, p in zip(st.accepted_at, st.proposed_at))
        assert all(later <= earlier for earlier, later in zip(st.proposed_at, st.proposed_at[1:]))
        assert all(later <= earlier for earlier, later in zip(st.accepted_at, st.accepted_at[1:]))
        assert ours.stats.base_calls <= standard.stats.base_calls  # a step yields one token or more
        beyond_three += sum(st.proposed_at[3:])
    assert beyond_three > 0 or drafts.max_draft <= 3 or not drafts.module  # long chains are exercised


@pytest.mark.parametrize("drafts", DRAFTS, ids=lambda d: f"k{d.max_draft}-n{d.lookup_ngram}-m{int(d.module)}")
def test_multi_token_drafts_sample_as_the_reference(generator, tiny, drafts):
    sampling = SamplingParams(temperature=0.8, top_k=20, seed=5)
    for prompt in ([5, 17, 3], [7, 8, 7, 8, 7, 8, 7]):
        request = Request("verify", sampling, 25, stop_token_ids=(), drafts=drafts)
        assert generator.generate(prompt, request).tokens == ReferenceDecoder(tiny).generate(prompt, request).tokens


def test_lookup_draft():
    # the longest earlier suffix match, as many tokens as it is long (at most room)
    assert lookup_draft(np.array([1, 2, 3, 9, 1, 2]), 2, 3) == [3, 9]
    assert lookup_draft(np.array([7, 1, 2, 3, 9, 8, 4, 1, 2, 3]), 2, 5) == [9, 8, 4]
    assert lookup_draft(np.array([7, 1, 2, 3, 9, 8, 4, 1, 2, 3]), 2, 2) == [9, 8]  # room
    assert lookup_draft(np.array([1, 2, 3, 1, 2, 4, 1, 2]), 2, 1) == [4]  # the latest occurrence
    # the longest suffix wins over a later, shorter one ("1 2 3" at 1..3 over "2 3" at 5..6)
    assert lookup_draft(np.array([7, 1, 2, 3, 9, 5, 2, 3, 4, 0, 1, 2, 3]), 2, 5) == [9, 5, 2]
    assert lookup_draft(np.array([1, 2, 3, 4]), 2, 3) == []
    assert lookup_draft(np.array([1, 2, 9, 2]), 2, 3) == []  # a 1-token match is shorter than ngram
    assert lookup_draft(np.array([1, 2, 9, 2]), 1, 3) == [9]
    assert lookup_draft(np.array([5, 5, 5]), 1, 4) == [5, 5]  # "5 5" matched: a repeat goes on
    assert lookup_draft(np.array([3, 5, 2, 5, 2, 5, 2]), 1, 3) == [5, 2, 5]  # through its own draft
    assert lookup_draft(np.array([1, 2, 1, 2]), 0, 3) == []


def test_lookup_draft_matches_a_plain_search():
    """The vectorized search against the definition, on random texts of a small alphabet."""
    def plain(tokens, ngram, room):
        tokens = list(tokens)
        for length in range(min(max(ngram, room), len(tokens) - 1), ngram - 1, -1):
            suffix = tokens[len(tokens) - length:]
            ends = [j for j in range(length - 1, len(tokens) - 1) if tokens[j - length + 1:j + 1] == suffix]
            if ends:
                text = list(tokens)
                for i in range(min(length, room)):  # copy the follower on, as a repeat goes on
                    text.append(text[ends[-1] + 1 + i])
                return text[len(tokens):]
        return []

    rng = np.random.default_rng(0)
    for _ in range(300):
        tokens = rng.integers(0, 3, size=int(rng.integers(1, 30)))
        ngram, room = int(rng.integers(1, 4)), int(rng.integers(1, 8))
        assert lookup_draft(tokens, ngram, room) == plain(tokens, ngram, room), (tokens, ngram, room)


@pytest.mark.parametrize("options, message", [
    (dict(max_draft=0), "max_draft must be in 1..15"), (dict(max_draft=16), "max_draft must be in 1..15"),
    (dict(lookup_ngram=-1), "lookup_ngram must be >= 0"), (dict(min_probability=1.5), "min_probability"),
    (dict(module=False, lookup_ngram=0, answer_store=False), "needs a draft source")])
def test_bad_draft_options(options, message):
    with pytest.raises(GenerationError, match=message):
        DraftOptions(**options)


@pytest.mark.parametrize("gate", [0.0, 0.2, 0.5, 1.0])
def test_confidence_gate(generator, tiny, gate):
    """alternate with a confidence gate makes the reference's calls and tokens; a gate of 1
    gives standard's tokens (the module is never sure enough to skip the base)."""
    for prompt in PROMPTS:
        request = Request("alternate", max_new_tokens=20, stop_token_ids=(), min_confidence=gate)
        ours, ref = generator.generate(prompt, request), ReferenceDecoder(tiny).generate(prompt, request)
        assert ours.tokens == ref.tokens
        assert (ours.stats.base_calls, ours.stats.module_calls) == (ref.stats.base_calls, ref.stats.module_calls)
        if gate == 1.0:
            assert ours.tokens == generator.generate(prompt, Request("standard", max_new_tokens=20,
                                                                     stop_token_ids=())).tokens
