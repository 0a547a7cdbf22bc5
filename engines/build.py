"""`cli.py build`: pick the target's builder. Each builder writes one engine folder under
the artifacts, atomically, with its engine.json (runtime.engines.EngineRecord):
engines/ort.py for ONNX Runtime targets, engines/tensorrt.py for TensorRT presets. An ONNX
Runtime build then times its base step by width into engine.json (runtime.costs); TensorRT
builds do not yet (never run on a GPU here)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from engines.targets import get_target
from runtime.artifacts import Artifacts
from runtime.engines import EngineRecord, engine_dir
from runtime.errors import EngineBuildError


def build(artifacts_folder: Path, target_name: str, precision: str | None = None,
          progress: Callable[[str], None] = lambda stage: None, **tensorrt_options) -> EngineRecord:
    """Build `target_name` from the export at `artifacts_folder`; returns engine.json's record.

    Raises:
        ArtifactError: the export is incomplete or changed.
        TargetError: unknown target or unsupported precision.
        EngineBuildError: the backend is missing, or the build fails.
        DeviceError: a TensorRT target without TensorRT, cuda-python or a GPU here.
    """
    artifacts = Artifacts.load(artifacts_folder)
    target, precision = get_target(target_name, precision)
    out = engine_dir(artifacts.folder, target.engine_name(precision))
    if target.backend == "tensorrt":
        from engines.tensorrt import build_plans

        return build_plans(artifacts, target, precision, out, progress, **tensorrt_options)
    if tensorrt_options:
        raise EngineBuildError(f"options {sorted(tensorrt_options)} apply to TensorRT targets only")
    from engines.ort import build_session_files, record_step_costs

    record = build_session_files(artifacts, target, precision, out, progress)
    progress("measuring step costs by width")
    return record_step_costs(artifacts, target.engine_name(precision), record)

