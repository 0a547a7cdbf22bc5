"""A GPU that is host memory, for running runtime/backends/tensorrt.py end to end here.

FakeCudart is cuda-python's runtime module for the calls the backend makes, over "device"
buffers that are numpy arrays: a device pointer is the array's address, so every copy is a
memmove, and every device-side range a call touches is checked to lie inside one live
allocation (an AssertionError names the call otherwise, instead of corrupting memory).
`calls` records the allocations, frees and 2-D copies with their arguments. Like the real
module it has no synchronous copy.
FakeTensorRT is the `tensorrt` module's runtime side: a "plan" file names an exported
ONNX graph, which the execution context runs under ONNX Runtime on the tensors at the
addresses bound to it (keeping a copy of them in the plan's `fed`), writing its outputs to
the addresses bound for them.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from pathlib import Path

import numpy as np

from runtime import contract as C

HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE = 1, 2, 3


class FakeCudart(types.SimpleNamespace):
    def __init__(self):
        super().__init__(cudaError_t=types.SimpleNamespace(cudaSuccess=0),
                         cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice=HOST_TO_DEVICE,
                                                              cudaMemcpyDeviceToHost=DEVICE_TO_HOST,
                                                              cudaMemcpyDeviceToDevice=DEVICE_TO_DEVICE))
        self.buffers: dict[int, np.ndarray] = {}  # device pointer -> its memory
        self.calls: list[tuple] = []
        self.streams = 0

    def device(self, ptr: int, nbytes: int, call: str) -> None:
        """Check that [ptr, ptr + nbytes) lies inside one live allocation."""
        for base, array in self.buffers.items():
            if base <= ptr and ptr + nbytes <= base + array.nbytes:
                return
        raise AssertionError(f"{call}: {nbytes} bytes at {ptr:#x} are not inside one device allocation")

    def cudaMalloc(self, nbytes):
        self.calls.append(("cudaMalloc", nbytes))
        array = np.full(nbytes, 0xA5, dtype=np.uint8)  # not zeros: a read of unwritten memory shows
        self.buffers[array.ctypes.data] = array
        return 0, array.ctypes.data

    def cudaFree(self, ptr):
        self.calls.append(("cudaFree", ptr))
        assert ptr in self.buffers, f"cudaFree of {ptr:#x}, not an allocation"
        del self.buffers[ptr]
        return (0,)

    def _sides(self, kind, dst, src, dst_bytes, src_bytes, call):
        if kind in (HOST_TO_DEVICE, DEVICE_TO_DEVICE):
            self.device(dst, dst_bytes, call)
        if kind in (DEVICE_TO_HOST, DEVICE_TO_DEVICE):
            self.device(src, src_bytes, call)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        self._sides(kind, dst, src, nbytes, nbytes, "cudaMemcpyAsync")
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, height, kind, stream):
        self.calls.append(("cudaMemcpy2DAsync", dpitch, spitch, width, height, stream))
        assert width <= dpitch and width <= spitch, "cudaMemcpy2DAsync: width beyond a pitch"
        if height:
            self._sides(kind, dst, src, dpitch * (height - 1) + width, spitch * (height - 1) + width,
                        "cudaMemcpy2DAsync")
        for row in range(height):
            ctypes.memmove(dst + row * dpitch, src + row * spitch, width)
        return (0,)

    def cudaMemsetAsync(self, ptr, value, nbytes, stream):
        self.device(ptr, nbytes, "cudaMemsetAsync")
        ctypes.memset(ptr, value, nbytes)
        return (0,)

    def cudaStreamCreate(self):
        self.streams += 1
        return 0, f"stream{self.streams}"

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaGetDeviceCount(self):
        return 0, 1

    def cudaGetDeviceProperties(self, device):
        return 0, types.SimpleNamespace(name=b"Fake GPU", major=9, minor=0)


def install_fake_cuda(monkeypatch) -> FakeCudart:
    """A FakeCudart where the TensorRT backend and runtime.cuda look cuda-python up."""
    fake = FakeCudart()
    monkeypatch.setattr("runtime.backends.tensorrt.cudart", lambda: fake)
    monkeypatch.setattr("runtime.cuda.cudart", lambda: fake)
    return fake


def read(ptr: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A copy of the tensor at a host or fake-device address."""
    count = int(np.prod(shape))
    raw = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape).copy()


def write_plans(folder: Path, graphs: dict[str, Path]) -> dict[str, Path]:
    """A fake plan per graph: a file naming the exported ONNX graph it runs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, onnx_path in graphs.items():
        paths[name] = folder / f"{name}.plan"
        paths[name].write_text(json.dumps({"onnx": str(onnx_path)}))
    return paths


class _Plan:
    def __init__(self, trt, onnx_path: str):
        import onnxruntime as ort

        self.trt = trt
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = {o.name: o for o in self.session.get_outputs()}
        self.names = [*self.inputs, *self.outputs]
        self.num_io_tensors = len(self.names)
        self.fed: list[dict[str, np.ndarray]] = []  # the inputs of every execution

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name in self.inputs else self.trt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        value = self.inputs.get(name) or self.outputs[name]
        return tuple(d if isinstance(d, int) else -1 for d in value.shape)

    def get_tensor_dtype(self, name):
        value = self.inputs.get(name) or self.outputs[name]
        return types.SimpleNamespace(name=C.ELEMENT_TYPES[C.dtype_name(value.type, "onnxruntime")][2])

    def is_shape_inference_io(self, name):
        return name == "num_logits"

    def create_execution_context(self):
        return _Context(self)


class _Context:
    def __init__(self, plan: _Plan):
        self.plan = plan
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.profiles: list[int] = []
        self.executions = 0

    def set_optimization_profile_async(self, index, stream):
        self.profiles.append(index)
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def _dtype(self, name) -> str:
        return C.dtype_name(self.plan.get_tensor_dtype(name), "tensorrt")

    def get_tensor_shape(self, name):
        """An output's shape from the bound inputs' shapes (and num_logits' value), as
        TensorRT infers it."""
        batch, new = self.shapes["input_ids"]
        if name.startswith("present."):
            past = self.shapes[name.replace("present.", "past_key_values.")]
            return (*past[:2], past[2] + new, past[3])
        dim = self.plan.outputs[name].shape[-1]
        if name == "logits":
            return (batch, int(read(self.addresses["num_logits"], (1,), "int64")[0]), dim)
        return (batch, new, dim)

    def execute_async_v3(self, stream):
        feeds = {name: read(self.addresses[name], self.shapes[name], self._dtype(name)) for name in self.plan.inputs}
        self.plan.fed.append(feeds)
        outputs = self.plan.session.run(list(self.plan.outputs), feeds)
        for name, value in zip(self.plan.outputs, outputs):
            assert value.shape == self.get_tensor_shape(name), (name, value.shape, self.get_tensor_shape(name))
            value = np.ascontiguousarray(value.astype(self._dtype(name)))
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
        self.executions += 1
        return True


def fake_tensorrt_runtime(version: str = "10.3.0") -> types.ModuleType:
    """The `tensorrt` module as the runtime backend uses it."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            return _Plan(trt, json.loads(data)["onnx"])

    trt.ILogger, trt.Runtime = ILogger, Runtime
    return trt
