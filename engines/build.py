"""`cli.py build`: one engine folder per target under the artifacts, written atomically,
with an engine.json (backend and version, device, precision, profiles, source hashes)."""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Callable

from engines.targets import get_target
from recycle_export.artifacts import hash_files, staged_folder, write_json
from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.engines import ENGINE_FORMAT, ENGINE_FORMAT_VERSION, ENGINE_JSON, engine_dir
from runtime.errors import EngineBuildError

log = logging.getLogger(__name__)

ACCURACY_PROMPTS = 8  # held-out prompts (with the float graphs' greedy answers) per quantized build
ACCURACY_ANSWER_TOKENS = 32


def build(artifacts_folder: Path, target_name: str, precision: str | None = None,
          progress: Callable[[str], None] = lambda stage: None, **tensorrt_options) -> dict:
    """Build `target_name` from the export at `artifacts_folder`; returns engine.json's data.

    Raises:
        ArtifactError: the export is incomplete or changed.
        TargetError: unknown target or unsupported precision.
        EngineBuildError: the backend or device is missing, or the build fails.
    """
    artifacts = Artifacts.load(artifacts_folder)
    target, precision = get_target(target_name, precision)
    out = engine_dir(artifacts.folder, target.engine_name(precision))
    if target.backend == "tensorrt":
        from engines.tensorrt import build_plans

        return build_plans(artifacts, target, precision, out, progress, **tensorrt_options)
    from engines import ort

    if tensorrt_options:
        raise EngineBuildError(f"options {sorted(tensorrt_options)} apply to TensorRT targets only")
    ort.check_providers(target)
    with staged_folder(out, ENGINE_JSON) as tmp:
        graphs = {}
        for name in C.graphs(artifacts.dims):
            progress(f"building {name} ({precision})")
            graphs[name] = f"{name}.onnx"
            ort.build_graph(artifacts.graph_path(name), tmp / graphs[name], target, precision)
        data = engine_json(artifacts, target.name, precision, "onnxruntime", _ort_version(),
                            {"name": platform.processor() or platform.machine(), "compute_capability": None},
                            graphs, None)
        data["session"] = ort.session_settings(target, precision, out)
        if target.name == "cpu" and precision != "fp32":
            progress("measuring accuracy against the float graphs")
            data["accuracy"] = ort.accuracy_report(artifacts, tmp, graphs, _accuracy_prompts(artifacts))
        data["files"] = hash_files(tmp)
        write_json(tmp / ENGINE_JSON, data)
    return data


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def engine_json(artifacts: Artifacts, target: str, precision: str, backend: str, version: str,
                 device: dict, graphs: dict, profiles) -> dict:
    sources = [artifacts.manifest["graphs"][name]["file"] for name in graphs]
    return {"format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION, "target": target,
            "precision": precision, "backend": backend, "backend_version": version, "device": device,
            "graphs": graphs, "profiles": profiles,
            "source": {file: artifacts.manifest["files"][file] for file in sources}}


def _accuracy_prompts(artifacts: Artifacts) -> list[tuple[list[int], list[int]]]:
    """Held-out chat prompts with the float graphs' own greedy answers. Without a
    tokenizer: fixed token ids as prompts."""
    from runtime.generator import Generator, Request
    from runtime.prompts import prompts

    generator = Generator.from_artifacts(artifacts.folder, check_hashes=False)
    if generator.codec is None:
        ids = [[(7 * i + 3 * j) % artifacts.dims.vocab_size for j in range(8)] for i in range(ACCURACY_PROMPTS)]
    else:
        ids = [generator.encode(text, chat=True) for text in prompts("heldout")[:ACCURACY_PROMPTS]]
    request = Request(max_new_tokens=ACCURACY_ANSWER_TOKENS, stop_token_ids=())
    return [(prompt, generator.generate(prompt, request).tokens) for prompt in ids]
