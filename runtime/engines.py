"""Engine folders as the runtime sees them: `<artifacts>/engines/<target>/engine.json`.

An engine is built from the exported graphs for one target (an ONNX Runtime build for a
CPU, a TensorRT plan set for one GPU). Its engine.json records the backend and its
version, the device, the precision, the graphs it runs and the sha256 of the source
graphs, so that a changed export or another device is refused with what to re-run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runtime.artifacts import Artifacts, sha256
from runtime.errors import ArtifactError

ENGINE_FORMAT = "recycle-export-engine"
ENGINE_FORMAT_VERSION = 1
ENGINE_JSON = "engine.json"


def engine_dir(artifacts_folder: Path, target: str) -> Path:
    return Path(artifacts_folder) / "engines" / target


@dataclass(frozen=True)
class EngineInfo:
    folder: Path
    data: dict

    @property
    def backend(self) -> str:
        return self.data["backend"]

    @property
    def target(self) -> str:
        return self.data["target"]

    def graph_paths(self) -> dict[str, Path]:
        return {name: self.folder / file for name, file in self.data["graphs"].items()}

    @classmethod
    def load(cls, artifacts: Artifacts, target: str, check_hashes: bool = True) -> "EngineInfo":
        """Read and check an engine built from `artifacts`.

        Raises:
            ArtifactError: no such engine, another format, source graphs changed since the
                build, or engine files changed; the message says what to re-run.
        """
        folder = engine_dir(artifacts.folder, target)
        path = folder / ENGINE_JSON
        rebuild = f"re-run `cli.py build --artifacts {artifacts.folder} --target {target}`"
        if not path.is_file():
            raise ArtifactError(f"no engine for target {target!r} in {artifacts.folder}; {rebuild}")
        data = json.loads(path.read_text())
        if data.get("format") != ENGINE_FORMAT or data.get("format_version") != ENGINE_FORMAT_VERSION:
            raise ArtifactError(f"{path}: engine format {data.get('format')!r} version "
                                f"{data.get('format_version')!r} is not {ENGINE_FORMAT!r} version "
                                f"{ENGINE_FORMAT_VERSION}; {rebuild}")
        for file, digest in data["source"].items():
            if artifacts.manifest["files"].get(file) != digest:
                raise ArtifactError(f"{folder}: built from a different {file} than the one exported now; {rebuild}")
        if check_hashes:
            for file, digest in data["files"].items():
                if not (folder / file).is_file() or sha256(folder / file) != digest:
                    raise ArtifactError(f"{folder / file} is missing or changed since the build; {rebuild}")
        return cls(folder, data)
