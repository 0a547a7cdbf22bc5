"""TensorRT backend: both plans on one CUDA stream, the KV pool resident on the device.

Every KV layer owns two device buffers of full capacity ([batch, kv_heads, max_seq_len + 4,
head_dim]). A step reads `past` from one and the engine writes `present` (past + new,
contiguous) into the other; committing swaps the two, so no KV byte crosses the PCIe bus
and nothing is copied between steps. Only token ids, positions and masks go up, and
logits and hidden states come down. tensorrt and cuda-python are imported lazily.

Written against TensorRT 10 and 11 (every call it makes is in both majors' Python bindings);
not run in this repository's CI (no GPU there): benchmarks/tensorrt_gpu.py checks it against
the ONNX Runtime CPU run on a GPU machine, and tests/test_typecheck.py type-checks its
TensorRT calls against tensorrt-stubs.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.backends.base import Backend, check_against_contract
from runtime.cuda import check, cudart, device_properties
from runtime.engines import EngineInfo, rebuild_hint
from runtime.errors import ArtifactError, DeviceError
from runtime.kv import BASE, MODULE

if TYPE_CHECKING:  # annotations only; each function imports tensorrt itself, after require_tensorrt()
    import tensorrt

log = logging.getLogger(__name__)


def require_tensorrt() -> None:
    """Check that TensorRT 10 or newer is installed; then `import tensorrt` is safe.

    Raises: DeviceError when TensorRT is not installed or older than 10."""
    try:
        import tensorrt as trt
    except ImportError:
        raise DeviceError("TensorRT is not installed: pip install 'recycle-export[tensorrt]' "
                          "on a machine with an NVIDIA GPU and a CUDA 12 driver ([tensorrt-cu13] for CUDA 13; "
                          "on a Jetson, JetPack 6's TensorRT and [jetson]); `cli.py build --list-targets` "
                          "says which each target needs") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise DeviceError(f"TensorRT {trt.__version__} found; the builder needs TensorRT 10 or newer")


def make_logger() -> tuple[tensorrt.ILogger, list[str]]:
    """A TensorRT logger that forwards to `logging`, and the list it appends every error
    message to, so that a failed build or load reports them all."""
    import tensorrt as trt

    errors: list[str] = []

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity <= trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger(), errors


def shape_tuple(shape: tensorrt.Dims) -> tuple[int, ...]:
    """A TensorRT Dims as a tuple (Dims iterates through __getitem__, which the stubs do not
    show as iteration)."""
    return tuple(shape[i] for i in range(len(shape)))


@dataclass
class DeviceTensor:
    """A contiguous tensor in device memory (the KV pool hands these to the backend)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str


class DeviceKVPool:
    """KVPool's interface over device buffers, swapped rather than copied between steps,
    and the base's hidden state per position kept in device memory too: hidden_states go
    from the full step's output to the module's input without a trip through the host.
    The backend that made a pool frees it in its close(); a pool may also be closed alone."""

    def __init__(self, dims: C.Dims, batch: int, capacity: int, stream: Any = None):
        self.rt = cudart()
        self.dims, self.batch, self.capacity = dims, batch, capacity
        self.stream = stream  # the backend's: copies are ordered with its steps
        self.layers = {BASE: C.full_step(dims).kv_layers, MODULE: C.recycle_step(dims).kv_layers}
        self.lengths = {BASE: 0, MODULE: 0}
        self.itemsize = np.dtype(dims.dtype).itemsize  # the export's dtype, which the plans keep at their I/O
        self.slots = capacity + C.DECODE_MAX_NEW  # a verify step may briefly hold a draft past capacity
        self.buffer_bytes = batch * dims.n_kv_heads * self.slots * dims.head_dim * self.itemsize
        self.row = dims.dim * self.itemsize  # one position's hidden state
        self.current: dict[str, int] = {}  # past tensor name -> device pointer holding the cache
        self.spare: dict[str, int] = {}  # past tensor name -> the buffer the next present goes to
        self.hidden: dict[str, int] = {}  # the hidden-state buffers below, (batch, slots, dim) each
        try:
            for layers in self.layers.values():
                for i in layers:
                    for name in (C.past_key(i), C.past_value(i)):
                        self.current[name] = self._malloc(self.buffer_bytes)
                        self.spare[name] = self._malloc(self.buffer_bytes)
            # "kept": h_j per position; "step": a full step's hidden_states output; "module_out":
            # a recycle step's module_hidden_states; "module_in": a recycle step's hidden_states input.
            for name in ("kept", "step", "module_out", "module_in"):
                self.hidden[name] = self._malloc(batch * self.slots * self.row)
        except DeviceError:
            self.close()
            raise

    def _malloc(self, nbytes: int) -> int:
        return int(check(self.rt.cudaMalloc(nbytes), "cudaMalloc"))

    def close(self) -> None:
        for ptr in (*self.current.values(), *self.spare.values(), *self.hidden.values()):
            self.rt.cudaFree(ptr)
        self.current, self.spare, self.hidden = {}, {}, {}

    def _shape(self, length: int) -> tuple[int, ...]:
        return (self.batch, self.dims.n_kv_heads, length, self.dims.head_dim)

    def feeds(self, cache: str) -> dict[str, DeviceTensor]:
        shape = self._shape(self.lengths[cache])
        return {name(i): DeviceTensor(self.current[name(i)], shape, self.dims.dtype)
                for i in self.layers[cache] for name in (C.past_key, C.past_value)}

    def output_buffers(self, cache: str, hidden: bool = False) -> dict[str, int]:
        """Output name -> the device buffer the engine writes it into: present.*, and with
        `hidden` the graph's hidden-state output (which then comes back as a DeviceTensor
        for keep_hidden or chained_hidden, instead of as a numpy array)."""
        buffers = {present(i): self.spare[past(i)] for i in self.layers[cache]
                   for past, present in ((C.past_key, C.present_key), (C.past_value, C.present_value))}
        if hidden:
            buffers.update({C.HIDDEN_STATES: self.hidden["step"]} if cache == BASE
                           else {C.MODULE_HIDDEN_STATES: self.hidden["module_out"]})
        return buffers

    def commit(self, cache: str, outputs: dict[str, Any], new: int) -> None:
        self.lengths[cache] += new
        assert self.lengths[cache] <= self.slots
        for i in self.layers[cache]:
            for name in (C.past_key(i), C.past_value(i)):
                self.current[name], self.spare[name] = self.spare[name], self.current[name]

    def rollback(self, cache: str, n: int) -> None:
        """Drop the last n positions: re-pitch every [B*H] row into the spare buffer, on the
        backend's stream (the legacy default stream would order against every other one)."""
        old, new = self.lengths[cache], self.lengths[cache] - n
        row = self.dims.head_dim * self.itemsize
        for i in self.layers[cache]:
            for name in (C.past_key(i), C.past_value(i)):
                self._copy_2d(self.spare[name], new * row, self.current[name], old * row, new * row,
                              self.batch * self.dims.n_kv_heads)
                self.current[name], self.spare[name] = self.spare[name], self.current[name]
        self.lengths[cache] = new

    def _copy_2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int) -> None:
        if width and height:
            check(self.rt.cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.stream),
                  "cudaMemcpy2DAsync")

    def _copy(self, dst: int, src: int, nbytes: int) -> None:
        if nbytes:
            check(self.rt.cudaMemcpyAsync(dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                                          self.stream), "cudaMemcpyAsync")

    def keep_hidden(self, start: int, hidden: DeviceTensor) -> None:
        """Keep a full step's hidden_states (B, T, dim, from output_buffers) as positions
        start .. start+T-1."""
        new = hidden.shape[1]
        self._copy_2d(self.hidden["kept"] + start * self.row, self.slots * self.row, hidden.ptr, new * self.row,
                      new * self.row, self.batch)

    def module_hidden(self, pad: np.ndarray, start: int, end: int) -> DeviceTensor:
        """The module's hidden_states input for positions start .. end-1: h_{j-1} for each
        position j, zero where row r has none (j - 1 < pad[r]: its first token, or padding;
        always a leading run of the row's positions)."""
        new, into = end - start, self.hidden["module_in"]
        for r in range(self.batch):
            zeros = min(max(int(pad[r]) + 1 - start, 0), new)  # positions j with j - 1 < pad[r]
            row_start = into + r * new * self.row
            if zeros:
                check(self.rt.cudaMemsetAsync(row_start, 0, zeros * self.row, self.stream), "cudaMemsetAsync")
            source = self.hidden["kept"] + (r * self.slots + start + zeros - 1) * self.row
            self._copy(row_start + zeros * self.row, source, (new - zeros) * self.row)
        return DeviceTensor(into, (self.batch, new, self.dims.dim), self.dims.dtype)

    def chained_hidden(self, states: DeviceTensor) -> DeviceTensor:
        """The module's hidden_states input for a chained draft: its own
        module_hidden_states (B, T, dim, from output_buffers) at the last position."""
        new = states.shape[1]
        self._copy_2d(self.hidden["module_in"], self.row, states.ptr + (new - 1) * self.row, new * self.row,
                      self.row, self.batch)
        return DeviceTensor(self.hidden["module_in"], (self.batch, 1, self.dims.dim), self.dims.dtype)


def check_plan_compatibility(engine: EngineInfo, trt_version: str, device: dict[str, Any], rebuild: str) -> None:
    """Refuse plans built by another TensorRT version, for another GPU, or with a decode
    profile narrower than the contract's DECODE_MAX_NEW (before verify drafted up to 15
    tokens, the decode profile ended at 4 new tokens).

    Raises:
        ArtifactError: naming what the plan was built with and what is here.
    """
    for graph, profiles in (engine.record.profiles or {}).items():
        decode = next((p for p in profiles if p["name"] == "decode"), None)
        if decode is not None and decode["ranges"][C.NEW][2] < C.DECODE_MAX_NEW:
            raise ArtifactError(f"{engine.folder}: {graph}'s decode profile takes up to {decode['ranges'][C.NEW][2]} "
                                f"new tokens, and this runtime's verify steps take up to {C.DECODE_MAX_NEW}; {rebuild}")
    if engine.record.backend_version != trt_version:
        raise ArtifactError(f"{engine.folder} was built with TensorRT {engine.record.backend_version}, this is "
                            f"TensorRT {trt_version}: plans do not move between versions; {rebuild}")
    built = engine.record.device
    if list(device["compute_capability"]) != list(built["compute_capability"]):
        raise ArtifactError(f"{engine.folder} was built for {built['name']} (compute capability "
                            f"{tuple(built['compute_capability'])}), this GPU is {device['name']} "
                            f"({tuple(device['compute_capability'])}); {rebuild} on this device")


class TrtBackend(Backend):
    """full_step.plan and recycle_step.plan of one engine folder on GPU 0."""

    def __init__(self, artifacts: Artifacts, engine: EngineInfo, device: int = 0):
        require_tensorrt()
        import tensorrt as trt

        self.rt = cudart()
        rebuild = rebuild_hint(artifacts.folder, engine.target)
        check_plan_compatibility(engine, trt.__version__, device_properties(device), rebuild)
        self.logger, self.errors = make_logger()
        try:
            self.runtime = trt.Runtime(self.logger)
        except TypeError as e:  # what the bindings raise when createInferRuntime returns null
            raise DeviceError(f"TensorRT could not create a runtime ({e}): {'; '.join(self.errors)}") from None
        self.stream = check(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        self.engines: dict[str, tensorrt.ICudaEngine] = {}
        self.contexts: dict[str, tensorrt.IExecutionContext] = {}
        for name, path in engine.graph_paths().items():
            plan = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if plan is None:
                raise ArtifactError(f"TensorRT cannot load {path}: {'; '.join(self.errors)}; {rebuild}")
            context = plan.create_execution_context()
            if context is None:
                raise DeviceError(f"TensorRT cannot create an execution context for {path}")
            self.engines[name], self.contexts[name] = plan, context
            check_against_contract(name, self.graph_io(name), C.graphs(artifacts.dims)[name], rebuild)
        self.scratch: dict[tuple[str, str], tuple[int, int]] = {}  # (graph, tensor) -> (ptr, bytes)
        self.profile: dict[str, int] = {}  # graph -> the optimization profile its context has selected
        self.pools: list[DeviceKVPool] = []
        self._lock = threading.Lock()  # one execution context per graph

    def new_kv_pool(self, dims: C.Dims, batch: int, capacity: int) -> DeviceKVPool:
        pool = DeviceKVPool(dims, batch, capacity, self.stream)
        self.pools = [p for p in self.pools if p.current] + [pool]  # forget pools already closed
        return pool

    def close(self) -> None:
        """Free every pool this backend made, its scratch buffers and its stream."""
        with self._lock:
            for pool in self.pools:
                pool.close()
            for ptr, _ in self.scratch.values():
                self.rt.cudaFree(ptr)
            if self.stream is not None:
                self.rt.cudaStreamDestroy(self.stream)
            self.pools, self.scratch, self.stream = [], {}, None
            self.contexts, self.engines = {}, {}

    def graph_io(self, graph: str) -> tuple[list[C.TensorSpec], list[C.TensorSpec]]:
        import tensorrt as trt

        plan = self.engines[graph]
        inputs: list[C.TensorSpec] = []
        outputs: list[C.TensorSpec] = []
        for i in range(plan.num_io_tensors):
            name = plan.get_tensor_name(i)
            dims = shape_tuple(plan.get_tensor_shape(name))
            shape = tuple(d if d >= 0 else f"dynamic{j}" for j, d in enumerate(dims))
            spec = C.TensorSpec(name, C.dtype_name(plan.get_tensor_dtype(name), "tensorrt"), shape)
            (inputs if plan.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        return inputs, outputs

    def _select_profile(self, graph: str, new: int) -> None:
        """Switch `graph`'s context to the profile for `new` tokens, only when it changes: a
        switch makes TensorRT update the context's resources.

        Raises: DeviceError when TensorRT refuses (the bindings raise RuntimeError for it)."""
        index = C.select_profile(new)
        if self.profile.get(graph) == index:
            return
        try:
            selected = self.contexts[graph].set_optimization_profile_async(index, self.stream)
        except RuntimeError as e:
            selected, reason = False, f": {e}"
        else:
            reason = ""
        if not selected:
            raise DeviceError(f"{graph}: TensorRT cannot select optimization profile {index} for {new} new "
                              f"tokens{reason}")
        self.profile[graph] = index

    def _scratch(self, graph: str, name: str, nbytes: int) -> int:
        ptr, size = self.scratch.get((graph, name), (0, 0))
        if size < nbytes:
            if ptr:
                self.rt.cudaFree(ptr)
            ptr, size = check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"), max(nbytes, 1)
            self.scratch[(graph, name)] = (ptr, size)
        return ptr

    def run(self, graph: str, feeds: dict[str, Any], kv_outputs: dict[str, int] | None = None) -> dict[str, Any]:
        """One step. DeviceTensor feeds are bound in place; numpy feeds are uploaded.
        Outputs named in `kv_outputs` (the pool's output_buffers: present.*, and hidden
        states the pool keeps on the device) are written to its buffers and come back as
        DeviceTensors; the others (logits always) come back as numpy arrays."""
        with self._lock:
            return self._run(graph, feeds, kv_outputs or {})

    def _run(self, graph: str, feeds: dict[str, Any], kv_outputs: dict[str, int]) -> dict[str, Any]:
        import tensorrt as trt

        rt, plan, ctx = self.rt, self.engines[graph], self.contexts[graph]
        self._select_profile(graph, feeds[C.INPUT_IDS].shape[1])
        keep_alive = []
        for name, value in feeds.items():
            if not ctx.set_input_shape(name, value.shape):
                raise ArtifactError(f"{graph}: input {name!r} shape {tuple(value.shape)} is outside the engine's "
                                    "profiles; rebuild with a larger --max-batch or max_seq_len")
            if isinstance(value, DeviceTensor):
                ptr = value.ptr
            elif plan.is_shape_inference_io(name):  # num_logits: read on the host
                value = np.ascontiguousarray(value)
                keep_alive.append(value)
                ptr = value.ctypes.data
            else:
                value = np.ascontiguousarray(value)
                ptr = self._scratch(graph, name, value.nbytes)
                check(rt.cudaMemcpyAsync(ptr, value.ctypes.data, value.nbytes,
                                         rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream), "upload")
                keep_alive.append(value)
            if not ctx.set_tensor_address(name, ptr):
                raise DeviceError(f"{graph}: cannot bind input {name!r}")
        host_outputs: dict[str, tuple[np.ndarray, int]] = {}
        results: dict[str, Any] = {}
        for i in range(plan.num_io_tensors):
            name = plan.get_tensor_name(i)
            if plan.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                continue
            shape = shape_tuple(ctx.get_tensor_shape(name))
            dtype = C.dtype_name(plan.get_tensor_dtype(name), "tensorrt")
            if name in kv_outputs:
                ptr = kv_outputs[name]
                results[name] = DeviceTensor(ptr, shape, dtype)
            else:
                array = np.empty(shape, dtype=dtype)
                ptr = self._scratch(graph, name, array.nbytes)
                host_outputs[name] = (array, ptr)
            if not ctx.set_tensor_address(name, ptr):
                raise DeviceError(f"{graph}: cannot bind output {name!r}")
        if not ctx.execute_async_v3(self.stream):
            raise DeviceError(f"{graph}: TensorRT execution failed: {'; '.join(self.errors)}")
        for name, (array, ptr) in host_outputs.items():
            check(rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes,
                                     rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), "download")
            results[name] = array
        check(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return results
