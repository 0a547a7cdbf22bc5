"""A stand-in for the `tensorrt` Python module, as TensorRT 10.3 or 11.x exposes it, for the
parts the builder uses; it records every call and every enum member looked up.

Each enum has only the members of its major (TensorRT 11 removed BuilderFlag.FP16, BF16,
INT8, FP8, INT4, FP4, OBEY/PREFER_PRECISION_CONSTRAINTS, DIRECT_IO and
NetworkDefinitionCreationFlag.EXPLICIT_BATCH; STRONGLY_TYPED is 1 in 10.x and 0 in 11.x, where
it is ignored), and a missing one raises AttributeError as the real bindings do. Methods
return what the bindings return (None, False or -1 on failure) and raise RuntimeError where
the bindings assert (IOptimizationProfile.set_shape and set_shape_input); the constructors
Builder, OnnxParser and Runtime raise TypeError where TensorRT's factory returns null (the
bindings make them with pybind11's py::init, which refuses a null pointer so). The parser
reads the ONNX file's inputs and outputs, so the network has the exported graph's element types.
"""

from __future__ import annotations

import enum
import types

WEAK_TYPING_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                     "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO")
BUILDER_FLAGS_10 = {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5,
                    "TF32": 6, "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "OBEY_PRECISION_CONSTRAINTS": 9,
                    "PREFER_PRECISION_CONSTRAINTS": 10, "DIRECT_IO": 11, "REJECT_EMPTY_ALGORITHMS": 12,
                    "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14, "FP8": 15, "ERROR_ON_TIMING_CACHE_MISS": 16,
                    "BF16": 17, "DISABLE_COMPILATION_CACHE": 18, "STRIP_PLAN": 19, "REFIT_IDENTICAL": 20,
                    "WEIGHT_STREAMING": 21, "INT4": 22}
BUILDER_FLAGS_11 = {k: v for k, v in BUILDER_FLAGS_10.items() if k not in WEAK_TYPING_FLAGS}
NETWORK_FLAGS_10 = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
NETWORK_FLAGS_11 = {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}
DATA_TYPES = {"FLOAT": 1, "HALF": 10, "BF16": 16, "INT8": 3, "INT32": 6, "INT64": 7, "BOOL": 9}
ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 16: "BF16", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL"}
NULL_FACTORY = "pybind11::init(): factory function returned nullptr"
CUDA_INIT_ERROR = "CUDA initialization failure with error: 35"


def _factory_fails(logger, what: str) -> None:
    """Fail a constructor as the bindings do when TensorRT's factory returns null."""
    if logger.trt.fail == what:
        logger.log(logger.trt.ILogger.Severity.ERROR, CUDA_INIT_ERROR)
        raise TypeError(NULL_FACTORY)


class Member:
    def __init__(self, enum_name: str, name: str, value: int):
        self.enum_name, self.name, self.value = enum_name, name, value

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other) -> bool:
        return isinstance(other, Member) and (other.enum_name, other.name) == (self.enum_name, self.name)

    def __hash__(self) -> int:
        return hash((self.enum_name, self.name))

    def __repr__(self) -> str:
        return f"{self.enum_name}.{self.name}"


class Enum:
    """An enum type of the bindings: only `members`, every look-up recorded in `looked_up`."""

    def __init__(self, name: str, members: dict[str, int], looked_up: list):
        self._name, self._members, self._looked_up = name, members, looked_up

    def __getattr__(self, item: str) -> Member:
        if item.startswith("__"):
            raise AttributeError(item)
        self._looked_up.append(f"{self._name}.{item}")
        if item not in self._members:
            raise AttributeError(f"type object 'tensorrt.{self._name}' has no attribute '{item}'")
        return Member(self._name, item, self._members[item])


class Tensor:
    def __init__(self, name: str, dtype: Member, shape_tensor: bool):
        self.name, self.dtype, self.is_shape_tensor = name, dtype, shape_tensor


class Network:
    def __init__(self, trt, flags: int):
        self.trt, self.flags, self.inputs, self.outputs = trt, flags, [], []

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]


class OnnxParser:
    def __init__(self, network: Network, logger):
        _factory_fails(logger, "parser")
        self.network, self.logger, self.errors = network, logger, []
        network.trt.calls.append(("OnnxParser",))

    def parse_from_file(self, path: str) -> bool:
        import onnx

        trt = self.network.trt
        trt.calls.append(("parse_from_file", path))
        if trt.fail == "parse":
            self.errors = ["In node 3 (Gather): UNSUPPORTED_NODE: no importer", "In node 9: INVALID_GRAPH"]
            return False
        graph = onnx.load(path, load_external_data=False).graph
        dtype = lambda v: getattr(trt.DataType, ONNX_TO_TRT[v.type.tensor_type.elem_type])  # noqa: E731
        self.network.inputs = [Tensor(v.name, dtype(v), v.name == "num_logits") for v in graph.input]
        self.network.outputs = [Tensor(v.name, dtype(v), False) for v in graph.output]
        if trt.fail == "io-dtype":
            self.network.outputs[-1].dtype = trt.DataType.FLOAT
        return True

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, i):
        return self.errors[i]


class Profile:
    def __init__(self, trt):
        self.trt, self.shapes, self.values = trt, {}, {}

    def set_shape(self, name, lo, opt, hi) -> None:
        if self.trt.fail == "profile" and name == "attention_mask":
            raise RuntimeError("max input provided for shape tensor is inconsistent with other inputs.")
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    def set_shape_input(self, name, lo, opt, hi) -> None:
        self.values[name] = (tuple(lo), tuple(opt), tuple(hi))

    def __bool__(self) -> bool:
        return bool(self.shapes)


class TimingCache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+"


class Config:
    def __init__(self, trt):
        self.trt, self.flags, self.profiles, self.cache, self.pool = trt, set(), [], None, None
        if trt.major >= 10:
            self.flags.add(Member("BuilderFlag", "TF32", 6))  # on by default

    def set_memory_pool_limit(self, pool, size) -> None:
        self.pool = (pool, size)

    def set_flag(self, flag) -> None:
        self.trt.calls.append(("set_flag", flag))
        self.flags.add(flag)

    def clear_flag(self, flag) -> None:
        self.trt.calls.append(("clear_flag", flag))
        self.flags.discard(flag)

    def create_timing_cache(self, data: bytes):
        return TimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return self.trt.fail != "timing-cache"

    def get_timing_cache(self):
        return self.cache

    def add_optimization_profile(self, profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger):
        _factory_fails(logger, "builder")
        self.logger = logger
        self.trt = logger.trt
        self.trt.builders.append(self)

    def create_network(self, flags: int = 0) -> Network:
        self.trt.calls.append(("create_network", flags))
        network = Network(self.trt, flags)
        self.trt.networks.append(network)
        return network

    def create_builder_config(self) -> Config:
        config = Config(self.trt)
        self.trt.configs.append(config)
        return config

    def create_optimization_profile(self) -> Profile:
        return Profile(self.trt)

    def build_serialized_network(self, network, config):
        self.trt.calls.append(("build_serialized_network",))
        if self.trt.fail == "build":
            self.logger.log(self.trt.ILogger.Severity.ERROR, "Error Code 4: Internal Error (no kernel)")
            return None
        precision = sorted(f.name for f in config.flags)
        return f"PLAN {network.inputs[0].name} flags={precision}".encode()


def fake_tensorrt(version: str, fail: str | None = None) -> types.ModuleType:
    """A `tensorrt` module of `version` ("10.3.0", "11.4.0"); `fail` names one call to fail:
    "builder", "parser", "runtime" (their constructors), "parse", "profile", "timing-cache",
    "build" or "io-dtype"."""
    trt = types.ModuleType("tensorrt")
    trt.__version__, trt.major, trt.fail = version, int(version.split(".")[0]), fail
    trt.looked_up, trt.calls, trt.builders, trt.networks, trt.configs = [], [], [], [], []
    eleven = trt.major >= 11
    trt.BuilderFlag = Enum("BuilderFlag", BUILDER_FLAGS_11 if eleven else BUILDER_FLAGS_10, trt.looked_up)
    trt.NetworkDefinitionCreationFlag = Enum("NetworkDefinitionCreationFlag",
                                             NETWORK_FLAGS_11 if eleven else NETWORK_FLAGS_10, trt.looked_up)
    trt.MemoryPoolType = Enum("MemoryPoolType", {"WORKSPACE": 0}, trt.looked_up)
    trt.DataType = Enum("DataType", DATA_TYPES, trt.looked_up)

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            self.trt = trt

    class Runtime:
        def __init__(self, logger):
            _factory_fails(logger, "runtime")

    trt.ILogger, trt.Builder, trt.OnnxParser, trt.Runtime = ILogger, Builder, OnnxParser, Runtime
    return trt
