"""TensorRT plans per target GPU (written against the TensorRT 10 Python API).

One plan per graph, built for the GPU it will run on: precision from the target preset,
two optimization profiles derived from the contract (engines/profiles.py), a timing cache
reused across builds, every boolean the API returns checked, every parser error reported,
plans and cache written atomically. Nothing here has run in this repository's CI (no GPU
there); benchmarks/tensorrt_gpu.py is the end-to-end check to run on a GPU machine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from engines.profiles import derive_profiles, profiles_json
from engines.targets import Target
from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.backends.tensorrt import import_tensorrt, make_logger
from runtime.cuda import device_properties
from runtime.engines import ENGINE_JSON, EngineRecord, engine_files
from runtime.errors import EngineBuildError
from runtime.files import hash_files, staged_folder, write_bytes

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30
DEFAULT_TIMING_CACHE = Path.home() / ".cache" / "recycle-export" / "tensorrt.timing-cache"


def check_part(target: Target, device: dict, precision: str) -> None:
    """Raises: EngineBuildError when the GPU here is not a part the preset covers."""
    cc = tuple(device["compute_capability"])
    if cc not in target.compute_capabilities:
        wanted = ", ".join(f"sm{a}{b}" for a, b in target.compute_capabilities)
        raise EngineBuildError(f"target {target.name!r} is for {wanted}, but this GPU is {device['name']} "
                               f"(sm{cc[0]}{cc[1]}): plans run only on the part they were built for; "
                               "build on the target device")


def _parse(trt, builder, logger, path: Path):
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT cannot parse {path.name}:\n  " + "\n  ".join(errors or logger.errors))
    return network, parser


def _has_quantize_layers(trt, network) -> bool:
    return any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers))


def _config(trt, builder, network, spec: C.GraphContract, precision: str, max_seq_len: int, max_batch: int,
            cache_bytes: bytes):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    flags = {"fp16": [trt.BuilderFlag.FP16], "bf16": [trt.BuilderFlag.BF16],
             "int8": [trt.BuilderFlag.INT8, trt.BuilderFlag.FP16], "fp8": [trt.BuilderFlag.FP8, trt.BuilderFlag.FP16],
             "fp32": []}[precision]
    if precision in ("int8", "fp8") and not _has_quantize_layers(trt, network):
        raise EngineBuildError(f"{precision} needs an explicitly quantized graph (Q/DQ nodes, e.g. from NVIDIA "
                               "ModelOpt); this export has none: build fp16 instead")
    for flag in flags:
        config.set_flag(flag)
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineBuildError("TensorRT refused the timing cache (built by another TensorRT or GPU); "
                               "delete it or pass --timing-cache with a new path")
    shape_inputs = {network.get_input(i).name for i in range(network.num_inputs) if network.get_input(i).is_shape_tensor}
    for profile in derive_profiles(spec, max_seq_len, max_batch):
        trt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.shapes.items():
            if name in shape_inputs:
                trt_profile.set_shape_input(name, *profile.values[name])
            trt_profile.set_shape(name, lo, opt, hi)
        if not trt_profile:
            raise EngineBuildError(f"{spec.name}: profile {profile.name!r} is invalid: {profile.shapes}")
        if config.add_optimization_profile(trt_profile) < 0:
            raise EngineBuildError(f"{spec.name}: TensorRT rejected profile {profile.name!r}")
    return config


def build_plans(artifacts: Artifacts, target: Target, precision: str, out: Path,
                progress: Callable[[str], None] = lambda stage: None, max_batch: int = 1,
                timing_cache: str | None = None) -> dict:
    """Build full_step.plan and recycle_step.plan for `target` into the engine folder `out`.

    Raises:
        DeviceError: no TensorRT, cuda-python or GPU, or a CUDA call fails.
        EngineBuildError: the GPU is not the target's part; a parser or builder error (all
            messages included); int8/fp8 without Q/DQ.
    """
    trt = import_tensorrt()
    device = device_properties(0)
    check_part(target, device, precision)
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    if not builder:
        raise EngineBuildError("TensorRT could not create a builder: " + "; ".join(logger.errors))
    cache_path = Path(timing_cache) if timing_cache else DEFAULT_TIMING_CACHE
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    max_seq_len = artifacts.max_seq_len
    with staged_folder(out, ENGINE_JSON, engine_files) as tmp:
        graphs, profiles = {}, {}
        for name, spec in C.graphs(artifacts.dims).items():
            progress(f"building {name}.plan ({precision}, {device['name']})")
            network, _parser = _parse(trt, builder, logger, artifacts.graph_path(name))
            config = _config(trt, builder, network, spec, precision, max_seq_len, max_batch, cache_bytes)
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise EngineBuildError(f"TensorRT failed to build {name}:\n  " + "\n  ".join(logger.errors))
            graphs[name] = f"{name}.plan"
            write_bytes(tmp / graphs[name], bytes(plan))
            cache_bytes = bytes(config.get_timing_cache().serialize())
            write_bytes(cache_path, cache_bytes)
            profiles[name] = profiles_json(spec, max_seq_len, max_batch)
        record = EngineRecord.create(artifacts, target.name, precision, "tensorrt", trt.__version__, device,
                                     graphs, hash_files(tmp), profiles=profiles, timing_cache=str(cache_path))
        record.write(tmp)
    return record
