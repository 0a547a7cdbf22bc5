"""TensorRT plans per target GPU, for TensorRT 10 (JetPack 6 ships 10.3) and TensorRT 11.

One plan per graph, built for the GPU it will run on, as a strongly typed network: the
precision is the exported graph's (a float16 export for fp16 plans; RMSNorm reductions,
softmax and rotary angles stay float32 inside it), so no precision builder flag is ever
looked up (TensorRT 11 removed FP16, BF16, INT8 and FP8 with weak typing). fp32 plans clear
TF32, so they compute what the CPU does. Two optimization profiles derived from the contract
(engines/profiles.py), a timing cache reused across builds, every value the API returns
checked (and the RuntimeErrors its Python bindings raise instead turned into one clear
error), every parser error reported, plans and cache written atomically.
tests/engines/test_tensorrt_fake.py runs this against stand-ins of both majors' Python APIs,
tests/test_typecheck.py type-checks it against tensorrt-stubs (10.x, less what 11 removed);
benchmarks/tensorrt_gpu.py is the end-to-end check on a GPU machine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from engines.graph_checks import float16_hazards, load_structure, tensorrt_op_problems
from engines.profiles import Profile, derive_profiles, profiles_json
from engines.targets import TENSORRT_EXPORT_DTYPES, Target
from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.backends.tensorrt import make_logger, require_tensorrt
from runtime.cuda import device_properties
from runtime.engines import ENGINE_JSON, EngineRecord, engine_files
from runtime.errors import EngineBuildError
from runtime.files import hash_files, staged_folder, write_bytes

if TYPE_CHECKING:  # annotations only; each function imports tensorrt itself, after require_tensorrt()
    import tensorrt

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30
DEFAULT_TIMING_CACHE = Path.home() / ".cache" / "recycle-export" / "tensorrt.timing-cache"
# The element type a QuantizeLinear node produces, per quantized precision (ONNX names).
QUANTIZED_TYPES = {"int8": "INT8", "fp8": "FLOAT8E4M3FN"}


def check_part(target: Target, device: dict[str, Any], precision: str) -> None:
    """Raises: EngineBuildError when the GPU here is not a part the preset covers."""
    cc = tuple(device["compute_capability"])
    if cc not in target.compute_capabilities:
        wanted = ", ".join(f"sm{a}{b}" for a, b in target.compute_capabilities)
        raise EngineBuildError(f"target {target.name!r} is for {wanted}, but this GPU is {device['name']} "
                               f"(sm{cc[0]}{cc[1]}): plans run only on the part they were built for; "
                               "build on the target device")


def check_export_dtype(artifacts: Artifacts, target: Target, precision: str) -> None:
    """Raises: EngineBuildError when the export's dtype is not the one `precision` builds from."""
    wanted, dtype = TENSORRT_EXPORT_DTYPES[precision], artifacts.dims.dtype
    if dtype != wanted:
        raise EngineBuildError(
            f"{target.engine_name(precision)} needs a {wanted} export, but {artifacts.folder} is {dtype}: "
            "TensorRT builds strongly typed networks, whose precision is the graph's (TensorRT 11 has no "
            f"precision flags); re-run `cli.py export --dtype {wanted}` into another folder and build from it")


def check_graph(path: Path, dtype: str) -> None:
    """Raises: EngineBuildError when TensorRT's ONNX parser would refuse a node of the graph
    (op, input type, opset), or when a float16 graph would overflow as TensorRT types it (a
    norm, softmax or rotary op on float16 inputs, a constant float16 cannot hold)."""
    structure = load_structure(path)
    problems = tensorrt_op_problems(structure)
    if problems:
        raise EngineBuildError(f"TensorRT's ONNX parser cannot import {path.name}: " + "; ".join(problems[:3])
                               + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))
    hazards = float16_hazards(structure) if dtype == "float16" else []
    if hazards:
        more = f" (and {len(hazards) - 3} more)" if len(hazards) > 3 else ""
        raise EngineBuildError(f"{path.name} is not safe to run in float16 as typed: " + "; ".join(hazards[:3])
                               + more + "; re-export it with this version of `cli.py export --dtype float16`")


def quantized_types(path: Path) -> set[str]:
    """The element types (ONNX names) the QuantizeLinear nodes of the graph at `path` produce."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    zero_points = {t.name: t.data_type for t in graph.initializer}
    types = set()
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        attr = {a.name: a.i for a in node.attribute}
        if attr.get("output_dtype"):  # opset 21
            code = attr["output_dtype"]
        elif len(node.input) > 2 and node.input[2] in zero_points:
            code = zero_points[node.input[2]]
        else:
            code = onnx.TensorProto.UINT8  # QuantizeLinear's default
        types.add(onnx.TensorProto.DataType.Name(code))
    return types


def check_quantization(precision: str, path: Path) -> None:
    """Raises: EngineBuildError when an int8/fp8 build's graph has no Q/DQ nodes of that type."""
    if precision not in QUANTIZED_TYPES:
        return
    wanted, found = QUANTIZED_TYPES[precision], quantized_types(path)
    if wanted not in found:
        have = f"its QuantizeLinear nodes produce {', '.join(sorted(found))}" if found else "it has no Q/DQ nodes"
        raise EngineBuildError(f"{precision} needs a graph explicitly quantized to {wanted} (Q/DQ nodes, e.g. "
                               f"from NVIDIA ModelOpt), but {path.name} is not: {have}; build fp16 instead")


def network_flags() -> int:
    """create_network's flags: STRONGLY_TYPED (TensorRT 10; accepted and ignored by 11, where
    every network is strongly typed). Looked up by name, as a TensorRT without it must get
    this error rather than an AttributeError.

    Raises: EngineBuildError for a TensorRT 10 without the flag."""
    import tensorrt as trt

    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is not None:
        return 1 << int(flag)
    if int(trt.__version__.split(".")[0]) >= 11:
        return 0
    raise EngineBuildError(f"TensorRT {trt.__version__} cannot build strongly typed networks; install 10.0 or newer")


def _parse(builder: tensorrt.Builder, logger: tensorrt.ILogger, errors: list[str],
           path: Path) -> tuple[tensorrt.INetworkDefinition, tensorrt.OnnxParser]:
    import tensorrt as trt

    network = builder.create_network(network_flags())
    if network is None:
        raise EngineBuildError("TensorRT could not create a network: " + "; ".join(errors))
    try:
        parser = trt.OnnxParser(network, logger)
    except TypeError as e:  # what the bindings raise when createParser returns null
        raise EngineBuildError(f"TensorRT could not create an ONNX parser ({e}): " + "; ".join(errors)) from None
    if not parser.parse_from_file(str(path)):
        parser_errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT cannot parse {path.name}:\n  " + "\n  ".join(parser_errors or errors))
    return network, parser


def check_network_io(network: tensorrt.INetworkDefinition, spec: C.GraphContract) -> None:
    """The parsed network's inputs and outputs have the contract's names and element types
    (float16 KV for a float16 export: no reformatting at the plan's edges).

    Raises: EngineBuildError naming the tensor, what was expected and what came."""
    expected = {t.name: t.dtype for t in (*spec.inputs, *spec.outputs)}
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    tensors += [network.get_output(i) for i in range(network.num_outputs)]
    found = {t.name: C.dtype_name(t.dtype, "tensorrt") for t in tensors}
    if set(found) != set(expected):
        raise EngineBuildError(f"{spec.name}: TensorRT's network has tensors {sorted(found)}, the contract "
                               f"{sorted(expected)}; re-run `cli.py export`")
    for name, dtype in found.items():
        if dtype != expected[name]:
            raise EngineBuildError(f"{spec.name}: TensorRT typed {name!r} as {dtype}, the contract says "
                                   f"{expected[name]}")


def _add_profile(builder: tensorrt.Builder, config: tensorrt.IBuilderConfig, network: tensorrt.INetworkDefinition,
                 spec: C.GraphContract, profile: Profile) -> None:
    shape_inputs = {network.get_input(i).name for i in range(network.num_inputs)
                    if network.get_input(i).is_shape_tensor}
    trt_profile = builder.create_optimization_profile()
    if trt_profile is None:
        raise EngineBuildError(f"{spec.name}: TensorRT could not create an optimization profile")
    for name, (lo, opt, hi) in profile.shapes.items():
        try:  # the bindings raise RuntimeError where the C++ API returns false
            # The bindings convert a tuple to Dims (the stubs name only Dims).
            trt_profile.set_shape(name, lo, opt, hi)  # type: ignore[arg-type]
            if name in shape_inputs:
                trt_profile.set_shape_input(name, *(list(values) for values in profile.values[name]))
        except RuntimeError as e:
            raise EngineBuildError(f"{spec.name}: TensorRT refused profile {profile.name!r} for input {name!r} "
                                   f"(shapes {lo}/{opt}/{hi}, values {profile.values.get(name)}): {e}") from None
    if not trt_profile:
        raise EngineBuildError(f"{spec.name}: profile {profile.name!r} is invalid: {profile.shapes}")
    if config.add_optimization_profile(trt_profile) < 0:
        raise EngineBuildError(f"{spec.name}: TensorRT rejected profile {profile.name!r}")


def _config(builder: tensorrt.Builder, network: tensorrt.INetworkDefinition, spec: C.GraphContract,
            precision: str, max_seq_len: int, max_batch: int, cache_bytes: bytes) -> tensorrt.IBuilderConfig:
    import tensorrt as trt

    config = builder.create_builder_config()
    if config is None:
        raise EngineBuildError("TensorRT could not create a builder config")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)  # on by default from sm80: fp32 plans must compute what the CPU does
    cache = config.create_timing_cache(cache_bytes)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineBuildError("TensorRT refused the timing cache (built by another TensorRT or GPU); "
                               "delete it or pass --timing-cache with a new path")
    for profile in derive_profiles(spec, max_seq_len, max_batch):
        _add_profile(builder, config, network, spec, profile)
    return config


def build_plans(artifacts: Artifacts, target: Target, precision: str, out: Path,
                progress: Callable[[str], None] = lambda stage: None, max_batch: int = 1,
                timing_cache: str | None = None) -> EngineRecord:
    """Build full_step.plan and recycle_step.plan for `target` into the engine folder `out`.

    Raises:
        DeviceError: no TensorRT, cuda-python or GPU, or a CUDA call fails.
        EngineBuildError: the export's dtype is not the precision's; a node TensorRT's ONNX
            parser cannot import; a float16 graph computes a norm, softmax or rotary op in
            float16 or holds a constant float16 cannot; the GPU is not the
            target's part; a parser or builder error (all messages included); int8/fp8
            without Q/DQ nodes of that type.
    """
    check_export_dtype(artifacts, target, precision)
    for name in C.graphs(artifacts.dims):
        check_graph(artifacts.graph_path(name), artifacts.dims.dtype)
        check_quantization(precision, artifacts.graph_path(name))
    require_tensorrt()
    import tensorrt as trt

    device = device_properties(0)
    check_part(target, device, precision)
    logger, errors = make_logger()
    try:
        builder = trt.Builder(logger)
    except TypeError as e:  # what the bindings raise when createInferBuilder returns null
        raise EngineBuildError(f"TensorRT could not create a builder ({e}): " + "; ".join(errors)) from None
    cache_path = Path(timing_cache) if timing_cache else DEFAULT_TIMING_CACHE
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    max_seq_len = artifacts.max_seq_len
    with staged_folder(out, ENGINE_JSON, engine_files) as tmp:
        graphs: dict[str, str] = {}
        profiles: dict[str, list[dict[str, Any]]] = {}
        for name, spec in C.graphs(artifacts.dims).items():
            progress(f"building {name}.plan ({precision}, {device['name']}, TensorRT {trt.__version__})")
            network, _parser = _parse(builder, logger, errors, artifacts.graph_path(name))
            check_network_io(network, spec)
            config = _config(builder, network, spec, precision, max_seq_len, max_batch, cache_bytes)
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise EngineBuildError(f"TensorRT failed to build {name}:\n  " + "\n  ".join(errors))
            graphs[name] = f"{name}.plan"
            write_bytes(tmp / graphs[name], bytes(plan))
            cache = config.get_timing_cache()
            if cache is not None:
                cache_bytes = bytes(cache.serialize())
                write_bytes(cache_path, cache_bytes)
            profiles[name] = profiles_json(spec, max_seq_len, max_batch)
        record = EngineRecord.create(artifacts, target.name, precision, "tensorrt", trt.__version__, device,
                                     graphs, hash_files(tmp), profiles=profiles, timing_cache=str(cache_path))
        record.write(tmp)
    return record
