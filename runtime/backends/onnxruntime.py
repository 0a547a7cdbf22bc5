"""ONNX Runtime backend: one InferenceSession per graph, CPU by default."""

from __future__ import annotations

import logging
import os

import numpy as np

from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.backends.base import Backend, check_against_contract
from runtime.errors import ArtifactError
from runtime.kv import KVPool

log = logging.getLogger(__name__)


class OrtBackend(Backend):
    """Both graphs of an export under ONNX Runtime.

    providers: execution providers in order of preference (CPU by default).
    threads: intra-op threads per session (default: the machine's cores, as ORT does).
    model_paths: graph name -> ONNX file, to run an optimized or quantized build instead
    of the exported graphs (their I/O is still checked against the contract).
    provider_options: per execution provider, its options (as an engine.json records them).
    """

    def __init__(self, artifacts: Artifacts, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 threads: int | None = None, model_paths: dict | None = None,
                 provider_options: dict[str, dict] | None = None):
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise ArtifactError(f"execution provider {missing[0]} is not available in this onnxruntime "
                                f"(available: {', '.join(available)})")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {}
        for name, spec in C.graphs(artifacts.dims).items():
            path = (model_paths or {}).get(name) or artifacts.graph_path(name)
            try:
                session = ort.InferenceSession(
                    str(path), options, providers=list(providers),
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

    def new_kv_pool(self, dims: C.Dims, batch: int, capacity: int) -> KVPool:
        return KVPool(dims, batch, capacity)

    def close(self) -> None:
        self.sessions = {}

    def run(self, graph: str, feeds: dict[str, np.ndarray], kv_outputs: dict | None = None) -> dict[str, np.ndarray]:
        """One step; outputs are allocated by ONNX Runtime (kv_outputs is not used)."""
        names = self._output_names[graph]
        return dict(zip(names, self.sessions[graph].run(names, feeds)))
