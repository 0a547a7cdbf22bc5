"""Backends run one graph step with named feeds. One module per backend, imported lazily."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from runtime import contract as C
from runtime.errors import ArtifactError


class Backend(Protocol):
    """What the Generator needs from an inference engine."""

    def graph_io(self, graph: str) -> tuple[list[C.TensorSpec], list[C.TensorSpec]]:
        """The inputs and outputs of `graph` as the engine declares them."""

    def new_kv_pool(self, dims: C.Dims, batch: int, capacity: int):
        """A KV pool (runtime.kv.KVPool's interface) in the memory this backend runs from."""

    def run(self, graph: str, feeds: dict, kv_outputs: dict | None = None) -> dict:
        """Run one step of `graph` ("full_step" or "recycle_step"); outputs by name.
        kv_outputs (from the pool's output_buffers) says where present.* should be written,
        for backends that keep the KV cache in device memory."""


def check_against_contract(graph: str, declared: tuple[list[C.TensorSpec], list[C.TensorSpec]],
                           expected: C.GraphContract, rebuild: str) -> None:
    """Refuse an engine whose I/O differs from the contract, naming the tensor.

    Symbolic dimensions may carry any name in an engine; fixed ones must match.

    Raises:
        ArtifactError: a tensor is missing, extra, or has another dtype or shape.
    """
    for kind, got, want in (("input", declared[0], expected.inputs), ("output", declared[1], expected.outputs)):
        got_by_name = {t.name: t for t in got}
        for spec in want:
            actual = got_by_name.pop(spec.name, None)
            if actual is None:
                raise ArtifactError(f"{graph}: {kind} {spec.name!r} is missing; {rebuild}")
            fixed_ok = len(actual.shape) == len(spec.shape) and all(
                isinstance(w, str) or a == w for a, w in zip(actual.shape, spec.shape))
            if actual.dtype != spec.dtype or not fixed_ok:
                raise ArtifactError(f"{graph}: {kind} {spec.name!r} is {actual.dtype} {list(actual.shape)}, "
                                    f"expected {spec.dtype} {list(spec.shape)}; {rebuild}")
        if got_by_name:
            raise ArtifactError(f"{graph}: unexpected {kind} {next(iter(got_by_name))!r}; {rebuild}")


def load_backend(artifacts, engine=None, threads: int | None = None) -> Backend:
    """Open `artifacts` with the backend its engine names: the exported graphs under ONNX
    Runtime on the CPU when `engine` (a runtime.engines.EngineInfo) is None.

    Raises:
        ArtifactError: the engine does not match the contract, its device or library version.
        EngineBuildError: the engine's backend library or device is missing here.
    """
    from runtime.backends.onnxruntime import OrtBackend

    if engine is None:
        return OrtBackend(artifacts, threads=threads)
    if engine.backend == "onnxruntime":
        session = engine.data["session"]
        return OrtBackend(artifacts, providers=tuple(session["providers"]), threads=threads,
                          model_paths=engine.graph_paths(), provider_options=session["provider_options"])
    if engine.backend == "tensorrt":
        from runtime.backends.tensorrt import TrtBackend

        return TrtBackend(artifacts, engine)
    raise ArtifactError(f"{engine.folder}: unknown backend {engine.backend!r}; re-run `cli.py build`")
