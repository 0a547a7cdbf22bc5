"""runtime/backends/tensorrt.py end to end without a GPU: the Generator over TrtBackend, with
CUDA and TensorRT stood in for by tests/runtime/fake_gpu.py (device memory is host memory,
a plan runs its exported graph under ONNX Runtime), gives the tokens the ONNX Runtime
backend gives on the same graphs, under every schedule. So the backend's own work is
checked byte for byte: uploads, bindings, the KV pool's buffer swaps and rollback copies,
the output downloads, and the hidden-state hand-off between the two plans."""

import sys
import types

import numpy as np
import pytest

from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.backends import tensorrt as backend
from runtime.generator import Generator
from runtime.request import DraftOptions, Request, SamplingParams
from tests.runtime.fake_gpu import fake_tensorrt_runtime, install_fake_cuda, write_plans

PROMPTS = [[5, 9, 13, 2, 7, 5, 9, 13], [3, 4, 5, 6]]
REQUESTS = [Request("standard", max_new_tokens=12),
            Request("alternate", max_new_tokens=12),
            Request("verify", max_new_tokens=12,
                    drafts=DraftOptions(max_draft=3, lookup_ngram=0, module=True, min_probability=0.0)),
            Request("verify", max_new_tokens=12, drafts=DraftOptions(max_draft=4, lookup_ngram=1, module=True,
                                                                    min_probability=0.0)),
            Request("verify", max_new_tokens=12, sampling=SamplingParams(temperature=1.0, seed=3),
                    drafts=DraftOptions(max_draft=3, lookup_ngram=0, module=True, min_probability=0.0))]


@pytest.fixture(params=["tiny_artifacts", "tiny_fp16_artifacts"])
def export(request):
    """An export folder, made before `gpu` puts the fake tensorrt module in place."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt_runtime("10.3.0"))
    return install_fake_cuda(monkeypatch)


def _record_module_inputs(generator: Generator) -> list[np.ndarray]:
    """The hidden_states input of every recycle step the generator runs from now on."""
    fed, run = [], generator.backend.run

    def recording(graph, feeds, *args):
        if graph == C.RECYCLE_STEP:
            fed.append(np.array(feeds[C.HIDDEN_STATES]))
        return run(graph, feeds, *args)

    generator.backend.run = recording
    return fed


def _trt_generator(folder, tmp_path) -> Generator:
    artifacts = Artifacts.load(folder)
    plans = write_plans(tmp_path / "plans", {g: artifacts.graph_path(g) for g in (C.FULL_STEP, C.RECYCLE_STEP)})
    record = types.SimpleNamespace(backend_version="10.3.0", device={"name": "Fake GPU", "compute_capability": [9, 0]},
                                   profiles=None)
    engine = types.SimpleNamespace(folder=tmp_path / "plans", target="hopper-fp16", record=record,
                                   graph_paths=lambda: plans)
    return Generator(backend.TrtBackend(artifacts, engine), artifacts)


def test_the_tensorrt_backend_decodes_as_onnx_runtime_does(export, gpu, tmp_path):
    folder = export
    host = Generator.from_artifacts(folder)
    fed_on_host = _record_module_inputs(host)
    device = _trt_generator(folder, tmp_path)
    for r in REQUESTS:
        for prompt in PROMPTS:
            want, got = host.generate(prompt, r), device.generate(prompt, r)
            assert got.tokens == want.tokens, (r.strategy, r.drafts, prompt)
            assert got.stats.base_calls == want.stats.base_calls and got.stats.module_calls == want.stats.module_calls
    fed_on_device = [feeds[C.HIDDEN_STATES] for feeds in device.backend.engines[C.RECYCLE_STEP].fed]
    assert len(fed_on_device) == len(fed_on_host) and any(f.shape[1] > 1 for f in fed_on_host)
    for got, want in zip(fed_on_device, fed_on_host):  # h_{j-1}, zeros and chained states, byte for byte
        np.testing.assert_array_equal(got, want)
    batch = [Request("standard", max_new_tokens=6), Request("alternate", max_new_tokens=6)]
    for r in batch:  # left-padded rows: the padded positions' hidden states must not reach the module
        assert [x.tokens for x in device.generate_batch(PROMPTS, r)] == [x.tokens for x in host.generate_batch(PROMPTS, r)]
    # The hand-off stayed on the device: no hidden state was uploaded or downloaded, which
    # goes through a scratch buffer per (graph, tensor).
    assert sorted(device.backend.scratch) == sorted(
        [(C.FULL_STEP, name) for name in (C.INPUT_IDS, C.POSITION_IDS, C.ATTENTION_MASK, C.LOGITS)]
        + [(C.RECYCLE_STEP, name) for name in (C.INPUT_IDS, C.POSITION_IDS, C.ATTENTION_MASK, C.LOGITS)])
    device.close()
    assert gpu.buffers == {}  # every pool, scratch buffer and stream freed
