"""Backends run one graph step with named feeds. One module per backend, imported lazily."""

from __future__ import annotations

from runtime.backends.base import Backend
from runtime.errors import ArtifactError


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
        from runtime.backends.onnxruntime import check_prepacked
        from runtime.engines import rebuild_hint

        check_prepacked(engine.record, rebuild_hint(artifacts.folder, engine.folder.name))
        session = engine.record.session
        return OrtBackend(artifacts, providers=tuple(session["providers"]), threads=threads,
                          model_paths=engine.graph_paths(), provider_options=session["provider_options"],
                          kv_contract=engine.record.kv_contract, spinning=bool(session.get("intra_op_spinning")))
    if engine.backend == "tensorrt":
        from runtime.backends.tensorrt import TrtBackend

        return TrtBackend(artifacts, engine)
    raise ArtifactError(f"{engine.folder}: unknown backend {engine.backend!r}; re-run `cli.py build`")
