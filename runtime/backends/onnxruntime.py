"""ONNX Runtime backend: one InferenceSession per graph, CPU by default."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import numpy as np

from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.backends.base import Backend, check_against_contract
from runtime.errors import ArtifactError, GenerationError
from runtime.kv import InplaceKVPool, InplaceOutputs, KVPool

log = logging.getLogger(__name__)


class OrtBackend(Backend):
    """Both graphs of an export under ONNX Runtime.

    providers: execution providers in order of preference (CPU by default).
    threads: intra-op threads per session (default: the machine's cores, as ORT does).
    model_paths: graph name -> ONNX file, to run an optimized or quantized build instead
    of the exported graphs (their I/O is still checked against the contract).
    provider_options: per execution provider, its options (as an engine.json records them).
    kv_contract: the graphs' KV form (contract.KV_CONTRACTS). Under inplace-kv-v1 every step
    runs through an IO binding that reads and writes the pool's buffers in place; the
    binding of the KV buffers is made once per pool and graph.
    spinning: let the base graph's intra-op threads spin between operators instead of
    sleeping (much faster per step on a CPU; the cost is busy cores). The module graph then
    runs on the calling thread alone: a second spinning pool would fight the first for the
    cores while the two graphs alternate.
    """

    def __init__(self, artifacts: Artifacts, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 threads: int | None = None, model_paths: dict | None = None,
                 provider_options: dict[str, dict] | None = None, kv_contract: str = C.CONTRACT_NAME,
                 spinning: bool = False):
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise ArtifactError(f"execution provider {missing[0]} is not available in this onnxruntime "
                                f"(available: {', '.join(available)})")
        def session_options(threads: int, spin: bool):
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
            return options

        threads = threads or os.cpu_count() or 1
        per_graph = {C.FULL_STEP: session_options(threads, spinning),
                     C.RECYCLE_STEP: session_options(1, False) if spinning else session_options(threads, False)}
        self.kv_contract = kv_contract
        self.dims = artifacts.dims
        self._ort = ort
        self.sessions = {}
        for name, spec in C.graphs(artifacts.dims, kv_contract).items():
            path = (model_paths or {}).get(name) or artifacts.graph_path(name)
            try:
                session = ort.InferenceSession(
                    str(path), per_graph[name], providers=list(providers),
                    provider_options=[(provider_options or {}).get(p, {}) for p in providers])
            except (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf,
                    ort_errors.NoSuchFile, ort_errors.NotImplemented) as exc:
                raise ArtifactError(f"onnxruntime cannot load {path}: {exc}; re-run `cli.py export`") from None
            self.sessions[name] = session
            check_against_contract(name, self.graph_io(name), spec, "re-run `cli.py export`")
        self._output_names = {n: [o.name for o in s.get_outputs()] for n, s in self.sessions.items()}

    def graph_io(self, graph: str) -> tuple[list[C.TensorSpec], list[C.TensorSpec]]:
        def specs(values):
            return [C.TensorSpec(v.name, C.dtype_name(v.type, "onnxruntime"),
                                 tuple(d if isinstance(d, int) else str(d) for d in v.shape)) for v in values]

        session = self.sessions[graph]
        return specs(session.get_inputs()), specs(session.get_outputs())

    def new_kv_pool(self, dims: C.Dims, batch: int, capacity: int) -> KVPool | InplaceKVPool:
        """Raises: GenerationError for a batch on an in-place engine (one prompt at a time)."""
        if self.kv_contract == C.INPLACE_CONTRACT_NAME:
            if batch != 1:
                raise GenerationError(f"this engine ({C.INPLACE_CONTRACT_NAME}) decodes one prompt at a time; "
                                      "run a batch on the exported graphs or a TensorRT engine")
            return InplaceKVPool(dims, capacity, self._ort.OrtValue.ortvalue_from_numpy)
        return KVPool(dims, batch, capacity)

    def new_kv_slots(self, dims: C.Dims, slots: int, capacity: int) -> InplaceKVPool:
        """inplace-kv-v1 only: buffers for `slots` sequences that each start at position 0
        (runtime.batching): a step over several rows takes a right-padded attention mask,
        row r's ones covering its own positions."""
        assert self.kv_contract == C.INPLACE_CONTRACT_NAME
        return InplaceKVPool(dims, capacity, self._ort.OrtValue.ortvalue_from_numpy, rows=slots)

    def close(self) -> None:
        self.sessions = {}

    def run(self, graph: str, feeds: dict[str, np.ndarray], kv_outputs: dict | None = None) -> dict[str, np.ndarray]:
        """One step. concat-kv-v1: outputs are allocated by ONNX Runtime (kv_outputs is not
        used). inplace-kv-v1: `feeds` carry the pool's buffers and the contract's common
        inputs (position_ids and attention_mask included, as for the exported graphs);
        the lengths come from the mask (row r's total length is its count of ones: rows start
        at position 0, so a batch's mask is right-padded), and only logits and hidden states
        come back, in buffers the pool keeps: valid until the pool's next step of the same
        graph and shape."""
        if self.kv_contract == C.INPLACE_CONTRACT_NAME:
            return self._run_inplace(graph, feeds, kv_outputs)
        names = self._output_names[graph]
        return dict(zip(names, self.sessions[graph].run(names, feeds)))

    def _run_inplace(self, graph: str, feeds: dict, kv_outputs: InplaceOutputs) -> dict[str, np.ndarray]:
        session = self.sessions[graph]
        binding = kv_outputs.bindings.get(graph)
        if binding is None:  # first step of this pool on this graph: bind its buffers once
            binding = session.io_binding()
            for name, value in feeds.items():
                if name.startswith("past_key_values."):
                    binding.bind_ortvalue_input(name, value)
            for name, buffer in kv_outputs.buffers.items():
                binding.bind_ortvalue_output(name, buffer)
            kv_outputs.bindings[graph] = binding
        mask = feeds[C.ATTENTION_MASK]
        total = mask.shape[1]
        small = {C.INPUT_IDS: feeds[C.INPUT_IDS], C.NUM_LOGITS_INPUT: feeds[C.NUM_LOGITS_INPUT],
                 C.SEQLENS_K: (mask.sum(axis=1) - 1).astype(np.int32),
                 C.TOTAL_SEQUENCE_LENGTH: np.array(total, dtype=np.int32)}
        if C.HIDDEN_STATES in feeds:
            small[C.HIDDEN_STATES] = feeds[C.HIDDEN_STATES]
        for name, value in small.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        outputs = self._inplace_outputs(graph, feeds, kv_outputs.bindings)
        for name, (_, value) in outputs.items():
            binding.bind_ortvalue_output(name, value)
        session.run_with_iobinding(binding)
        return {name: array for name, (array, _) in outputs.items()}

    def _inplace_outputs(self, graph: str, feeds: dict, cache: dict) -> dict:
        """Logits and hidden states buffers for a step of this shape, made once per pool and
        reused (a decode loop repeats a few shapes): name -> (numpy array, its OrtValue)."""
        batch, new = feeds[C.INPUT_IDS].shape
        num_logits = int(feeds[C.NUM_LOGITS_INPUT][0])
        key = (graph, new, num_logits)
        if key not in cache:
            logits_name, hidden_name = self._output_names[graph][:2]
            dims = self.dims
            arrays = {logits_name: np.empty((batch, num_logits, dims.vocab_size), dtype=dims.dtype),
                      hidden_name: np.empty((batch, new, dims.dim), dtype=dims.dtype)}
            cache[key] = {name: (a, self._ort.OrtValue.ortvalue_from_numpy(a)) for name, a in arrays.items()}
        return cache[key]


# The instruction-set flags that decide how onnxruntime's CPU kernels pack weights.
_PACKING_FLAGS = ("sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                  "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve", "sve2")


def cpu_signature() -> str:
    """This machine's CPU as far as weight packing goes: its architecture and the SIMD flags
    of _PACKING_FLAGS it has (/proc/cpuinfo; the architecture alone elsewhere)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return " ".join([platform.machine()] + [f for f in _PACKING_FLAGS if f in flags])


def check_prepacked(record, rebuild: str) -> None:
    """Refuse an ONNX Runtime engine (its runtime.engines.EngineRecord) whose weights were saved
    pre-packed (engines.ort.save_prepacked) for another CPU or onnxruntime: its packed layout
    is theirs.

    Raises: ArtifactError naming what differs and the rebuild command.
    """
    import onnxruntime

    prepacked = (record.session or {}).get("prepacked")
    if not prepacked:
        return
    here = {"cpu": cpu_signature(), "onnxruntime": onnxruntime.__version__}
    for key, value in here.items():
        if prepacked.get(key) != value:
            raise ArtifactError(f"engine {record.target}-{record.precision} holds weights pre-packed for "
                                f"{key} {prepacked.get(key)!r}, but this machine has {value!r}; {rebuild}")
