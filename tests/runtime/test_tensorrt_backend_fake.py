"""runtime/backends/tensorrt.py's logic around TensorRT and CUDA calls, with stand-ins for
both (no GPU here): a profile switch only when the profile changes, TensorRT's RuntimeError
and a runtime it cannot create turned into one DeviceError, rollback copies on the
backend's stream."""

import sys
import types
from pathlib import Path

import pytest

from runtime import contract as C
from runtime.backends import tensorrt as backend
from runtime.errors import DeviceError
from tests.engines.fake_tensorrt import fake_tensorrt
from tests.runtime.fake_gpu import install_fake_cuda

DIMS = C.Dims(n_layers=2, recycle_layers=1, n_kv_heads=2, head_dim=16, dim=64, vocab_size=96, dtype="float16")


@pytest.fixture
def rt(monkeypatch):
    return install_fake_cuda(monkeypatch)


def test_pool_is_in_the_exports_dtype_and_rolls_back_on_the_backends_stream(rt):
    stream = object()
    pool = backend.DeviceKVPool(DIMS, batch=1, capacity=32, stream=stream)
    slots = 32 + C.DECODE_MAX_NEW
    assert pool.buffer_bytes == 1 * 2 * slots * 16 * 2  # float16: 2 bytes per element
    pool.lengths[backend.BASE] = 10
    pool.rollback(backend.BASE, 3)
    copies = [c for c in rt.calls if c[0] == "cudaMemcpy2DAsync"]
    row = 16 * 2
    assert copies == [("cudaMemcpy2DAsync", 7 * row, 10 * row, 7 * row, 2, stream)] * (2 * DIMS.n_layers)
    assert pool.lengths[backend.BASE] == 7
    pool.close()
    hidden_buffers = 4  # kept h, a full step's output, the module's output and its input
    assert sum(c[0] == "cudaFree" for c in rt.calls) == 2 * 2 * (DIMS.n_layers + DIMS.recycle_layers) + hidden_buffers


class FakeContext:
    def __init__(self, fail=None):
        self.selected, self.fail = [], fail

    def set_optimization_profile_async(self, index, stream):
        if self.fail == "raise":
            raise RuntimeError("Error in set optimization profile async.")
        self.selected.append(index)
        return self.fail != "false"


def _backend(context):
    trt = object.__new__(backend.TrtBackend)
    trt.contexts, trt.stream, trt.profile = {"full_step": context}, object(), {}
    return trt


def test_profile_switches_only_when_it_changes():
    context = FakeContext()
    trt = _backend(context)
    for new in (30, 1, 1, 2, 1, 30, 30, 1):  # prefill, decode steps, a second prompt
        trt._select_profile("full_step", new)
    assert context.selected == [1, 0, 1, 0]


@pytest.mark.parametrize("fail, reason", [("raise", ": Error in set optimization profile async."), ("false", "")])
def test_profile_failures_are_one_device_error(fail, reason):
    trt = _backend(FakeContext(fail))
    with pytest.raises(DeviceError, match=f"full_step: TensorRT cannot select optimization profile 0 for 1 new "
                                          f"tokens{reason}$"):
        trt._select_profile("full_step", 1)
    assert trt.profile == {}  # not recorded: the next step tries again


def test_a_runtime_tensorrt_cannot_create_is_one_device_error(monkeypatch, rt):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.3.0", fail="runtime"))
    h100 = {"name": "NVIDIA H100", "compute_capability": [9, 0]}
    monkeypatch.setattr(backend, "device_properties", lambda index: h100)
    record = types.SimpleNamespace(backend_version="10.3.0", device=h100, profiles=None)
    engine = types.SimpleNamespace(folder=Path("x/engines/hopper-fp16"), target="hopper-fp16", record=record)
    with pytest.raises(DeviceError, match=r"TensorRT could not create a runtime \(.*nullptr\): "
                                          "CUDA initialization failure with error: 35$"):
        backend.TrtBackend(types.SimpleNamespace(folder=Path("x")), engine)
