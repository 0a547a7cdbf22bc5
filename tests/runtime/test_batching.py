"""Continuous batching (runtime/batching.py): every row of a batch that sequences join and
leave at different steps gets the tokens of the same request run alone, on both KV
contracts (the exported graphs and a fused CPU engine)."""

import shutil

import numpy as np
import pytest

from runtime.batching import BatchDecoder
from runtime.errors import GenerationError
from runtime.generator import Generator, Request
from runtime.sampling import SamplingParams

PROMPTS = [[5, 17, 3], [88], [41, 9, 60, 2, 33, 70, 12], [7, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [64, 30, 8, 19]]


@pytest.fixture(scope="module", params=["exported", "cpu-fp32"])
def generator(request, tiny_artifacts, tmp_path_factory):
    folder = tiny_artifacts
    if request.param != "exported":
        from engines.build import build

        folder = tmp_path_factory.mktemp("batching") / "art"
        shutil.copytree(tiny_artifacts, folder)
        build(folder, "cpu", "fp32")
    with Generator.from_artifacts(folder, engine=None if request.param == "exported" else request.param,
                                  threads=1) as gen:
        yield gen


def run(decoder: BatchDecoder, arrivals: list[tuple[int, list[int], Request]], leave: dict[int, int] | None = None):
    """Add each (step, prompt, request) once its step has come and a slot is free; take
    request i out after its leave[i]-th token. Returns the rows in arrival order and the
    largest number of rows a batched step decoded."""
    pending, rows, widest, step = list(arrivals), [], 0, 0
    leave = leave or {}
    while pending or len(decoder):
        while pending and pending[0][0] <= step and len(decoder) < decoder.slots:
            _, prompt, request = pending.pop(0)
            rows.append(decoder.add(prompt, request))
        widest = max(widest, len(decoder.rows))
        decoder.step()
        for i, n in leave.items():
            if i < len(rows) and rows[i].finish_reason is None and len(rows[i].tokens) >= n:
                decoder.remove(rows[i])
        step += 1
    return rows, widest


def test_greedy_rows_equal_their_requests_run_alone(generator):
    """Six sequences through four slots: they join at steps 0, 0, 2, 3, 5 and 9 (the last
    two when a slot frees), with different prompt lengths, max_new_tokens and stop tokens,
    and each one's tokens and finish reason are its single-request run's."""
    solo = generator.generate(PROMPTS[0], Request(max_new_tokens=30, stop_token_ids=()))
    stop = solo.tokens[6]  # row 0 stops early on this token; the others never see it as a stop
    requests = [Request(max_new_tokens=30, stop_token_ids=(stop,)), Request(max_new_tokens=4, stop_token_ids=()),
                Request(max_new_tokens=20, stop_token_ids=()), Request(max_new_tokens=1, stop_token_ids=()),
                Request(max_new_tokens=12, stop_token_ids=()), Request(max_new_tokens=25, stop_token_ids=())]
    arrivals = list(zip([0, 0, 2, 3, 5, 9], PROMPTS, requests))
    rows, widest = run(BatchDecoder(generator, 4), arrivals)
    assert widest >= 3
    for (_, prompt, request), row in zip(arrivals, rows):
        alone = generator.generate(prompt, request)
        assert row.tokens == alone.tokens and row.finish_reason == alone.finish_reason, prompt
        assert row.stats.generated_tokens == len(alone.tokens) and row.stats.base_calls == alone.stats.base_calls
    assert rows[0].finish_reason == "stop" and len(rows[0].tokens) < 30


def test_seeded_sampling_per_row(generator):
    """Each row samples with its own parameters and its own seeded generator, as alone."""
    params = [SamplingParams(temperature=0.8, seed=1), SamplingParams(temperature=1.2, top_k=10, seed=2),
              SamplingParams(), SamplingParams(temperature=0.9, top_p=0.8, seed=3)]
    arrivals = [(i, PROMPTS[i], Request(sampling=p, max_new_tokens=15, stop_token_ids=()))
                for i, p in enumerate(params)]
    rows, _ = run(BatchDecoder(generator, 3), arrivals)
    for (_, prompt, request), row in zip(arrivals, rows):
        assert row.tokens == generator.generate(prompt, request).tokens


def test_a_row_removed_midway_leaves_the_others_alone(generator):
    request = Request(max_new_tokens=16, stop_token_ids=())
    arrivals = [(0, p, request) for p in PROMPTS[:3]] + [(4, PROMPTS[3], request)]
    rows, _ = run(BatchDecoder(generator, 3), arrivals, leave={0: 3})
    assert rows[0].finish_reason is None and len(rows[0].tokens) == 3
    assert rows[0].tokens == generator.generate(PROMPTS[0], request).tokens[:3]
    for (_, prompt, _), row in zip(arrivals[1:], rows[1:]):  # the 4th joined the freed slot
        assert row.tokens == generator.generate(prompt, request).tokens


def test_rows_reach_the_end_of_the_context(generator):
    long_prompt = list(np.arange(60) % 90)  # the tiny export holds 64 positions
    rows, _ = run(BatchDecoder(generator, 2), [(0, long_prompt, Request(max_new_tokens=30, stop_token_ids=())),
                                                (0, [3], Request(max_new_tokens=8, stop_token_ids=()))])
    assert rows[0].finish_reason == "length" and len(rows[0].tokens) == 4
    assert rows[0].tokens == generator.generate(long_prompt, Request(max_new_tokens=30, stop_token_ids=())).tokens


def test_refusals(generator):
    decoder = BatchDecoder(generator, 1)
    with pytest.raises(GenerationError, match="verify does not batch"):
        decoder.add([1], Request("verify"))
    with pytest.raises(GenerationError, match="the prompt is empty"):
        decoder.add([], Request())
    decoder.add([1], Request())
    with pytest.raises(GenerationError, match=r"the batch is full \(1 sequences\)"):
        decoder.add([2], Request())
