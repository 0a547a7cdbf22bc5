"""Engine folders as the runtime sees them: `<artifacts>/engines/<target>/engine.json`.

An engine is built from the exported graphs for one target (an ONNX Runtime build for a
CPU, a TensorRT plan set for one GPU). Its engine.json, read and written only through
`EngineRecord`, records the backend and its version, the device, the precision, the graphs
it runs and the sha256 of the source graphs, so that a changed export or another device is
refused with what to re-run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.errors import ArtifactError
from runtime.costs import StepCosts
from runtime.files import listed_files, read_json, read_record, sha256, write_json
from runtime.records import Fields

ENGINE_FORMAT = "recycle-export-engine"
ENGINE_FORMAT_VERSION = 1
ENGINE_JSON = "engine.json"
# Written by onnxruntime's TensorRT provider inside an ort-tensorrt engine folder at run time.
TRT_CACHE = "trt_cache"
BACKENDS = ("onnxruntime", "tensorrt")


def engine_dir(artifacts_folder: Path, target: str) -> Path:
    return Path(artifacts_folder) / "engines" / target


def rebuild_hint(artifacts_folder: Path, target: str) -> str:
    return f"re-run `cli.py build --artifacts {artifacts_folder} --target {target}`"


def engine_files(folder: Path) -> set[str] | None:
    """The files an earlier build in `folder` wrote (engine.json, the files it lists, the
    provider's cache), or None when `folder` holds no engine of ours."""
    listed = listed_files(read_record(Path(folder) / ENGINE_JSON, ENGINE_FORMAT))
    return None if listed is None else listed | {ENGINE_JSON, TRT_CACHE}


@dataclass(frozen=True)
class EngineRecord:
    """engine.json: what an engine folder holds, what it was built from and for what device."""

    target: str
    precision: str
    backend: str  # one of BACKENDS
    backend_version: str
    device: dict  # {"name": str, "compute_capability": [major, minor] or None}
    graphs: dict[str, str]  # graph name -> file in the engine folder
    profiles: dict | None  # TensorRT: graph name -> its optimization profiles
    source: dict[str, str]  # exported file -> sha256 it had when built
    files: dict[str, str]  # engine file -> sha256
    session: dict | None = None  # ONNX Runtime: the session settings the runtime applies
    accuracy: dict | None = None  # quantized builds: figures against the float graphs
    timing_cache: str | None = None  # TensorRT: the timing cache the build used
    kv_contract: str = C.CONTRACT_NAME  # the graphs' KV form (contract.KV_CONTRACTS)
    # ONNX Runtime: base-step milliseconds by width, measured after the build (runtime.costs)
    step_costs: dict | None = None
    format: str = ENGINE_FORMAT
    format_version: int = ENGINE_FORMAT_VERSION

    @classmethod
    def create(cls, artifacts: Artifacts, target: str, precision: str, backend: str, version: str,
               device: dict, graphs: dict[str, str], files: dict[str, str], **extra) -> "EngineRecord":
        """The record of a build from `artifacts`: its sources are the exported graphs' hashes."""
        sources = [artifacts.manifest.graphs[name].file for name in graphs]
        return cls(target, precision, backend, version, device, dict(graphs), extra.pop("profiles", None),
                   {file: artifacts.manifest.files[file] for file in sources}, files, **extra)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / ENGINE_JSON, self.to_json())

    @classmethod
    def from_json(cls, data, where: str, fix: str) -> "EngineRecord":
        """Raises: ArtifactError naming the first field that is missing or wrong."""
        f = Fields(data, where, fix)
        if f.data.get("format") != ENGINE_FORMAT or f.data.get("format_version") != ENGINE_FORMAT_VERSION:
            f.fail("", f"engine format {f.data.get('format')!r} version {f.data.get('format_version')!r} "
                       f"is not {ENGINE_FORMAT!r} version {ENGINE_FORMAT_VERSION}")
        device = f.sub("device")
        device.get("name", str)
        device.ints("compute_capability", optional=True)
        graphs = f.sub("graphs")
        for name in (C.FULL_STEP, C.RECYCLE_STEP):
            graphs.file_name(name)
        backend = f.choice("backend", BACKENDS)
        session = f.sub("session", optional=backend != "onnxruntime")
        if session is not None and backend == "onnxruntime":
            session.get("providers", list)
            session.get("provider_options", dict)
        profiles = f.sub("profiles", optional=True)
        accuracy = f.sub("accuracy", optional=True)
        kv_contract = f.choice("kv_contract", C.KV_CONTRACTS)
        step_costs = f.sub("step_costs", optional=True)
        if step_costs is not None:
            StepCosts.from_json(step_costs)
        files = f.hashes("files")
        for file in graphs.data.values():
            if file not in files:
                f.fail("files", f"does not list {file}: every file's hash is checked")
        return cls(f.get("target", str), f.get("precision", str), backend, f.get("backend_version", str),
                   dict(device.data), dict(graphs.data), None if profiles is None else dict(profiles.data),
                   f.hashes("source"), files, None if session is None else dict(session.data),
                   None if accuracy is None else dict(accuracy.data), f.get("timing_cache", str, optional=True),
                   kv_contract, None if step_costs is None else dict(step_costs.data))


@dataclass(frozen=True)
class EngineInfo:
    folder: Path
    record: EngineRecord

    @property
    def backend(self) -> str:
        return self.record.backend

    @property
    def target(self) -> str:
        return self.record.target

    def step_costs(self) -> StepCosts | None:
        """The base step's cost by width on this engine (runtime.costs), if the build measured it."""
        data = self.record.step_costs
        return None if data is None else StepCosts.from_json(Fields(data, str(self.folder / ENGINE_JSON), ""))

    def graph_paths(self) -> dict[str, Path]:
        return {name: self.folder / file for name, file in self.record.graphs.items()}

    @classmethod
    def load(cls, artifacts: Artifacts, target: str, check_hashes: bool = True) -> "EngineInfo":
        """Read and check an engine built from `artifacts`.

        Raises:
            ArtifactError: no such engine, another format, a field missing or wrong, source
                graphs changed since the build, or engine files changed; the message says
                what to re-run.
        """
        if not isinstance(target, str) or not target or Path(target).name != target or target in (".", ".."):
            raise ArtifactError(f"engine name {target!r} must name a folder under {artifacts.folder / 'engines'}")
        folder = engine_dir(artifacts.folder, target)
        path = folder / ENGINE_JSON
        rebuild = rebuild_hint(artifacts.folder, target)
        if not path.is_file():
            raise ArtifactError(f"no engine for target {target!r} in {artifacts.folder}; {rebuild}")
        data = read_json(path, ArtifactError, rebuild)
        record = EngineRecord.from_json(data, str(path), rebuild)
        for file, digest in record.source.items():
            if artifacts.manifest.files.get(file) != digest:
                raise ArtifactError(f"{folder}: built from a different {file} than the one exported now; {rebuild}")
        if check_hashes:
            for file, digest in record.files.items():
                if not (folder / file).is_file() or sha256(folder / file) != digest:
                    raise ArtifactError(f"{folder / file} is missing or changed since the build; {rebuild}")
        return cls(folder, record)
