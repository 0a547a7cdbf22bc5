"""Build targets: ONNX Runtime builds for CPUs (and GPUs through onnxruntime-gpu) and
TensorRT presets per GPU family. Standard library only, so `build --list-targets` needs
nothing installed."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import TargetError


@dataclass(frozen=True)
class Stack:
    """A software stack that TensorRT plans are built and run on: what the host needs. Plans
    move neither between TensorRT versions nor between GPUs, so one stack builds and runs."""

    host: str
    tensorrt: str  # TensorRT versions
    cuda: str  # the CUDA version the driver must run
    cuda_python: str  # its pin: cuda-python 13.x needs a CUDA 13 driver
    extra: str  # the pyproject.toml extra that installs it

    @property
    def install(self) -> str:
        return f"pip install 'recycle-export[{self.extra}]'"


# tests/test_extras.py checks each extra's pins against these.
STACKS = {s.extra: s for s in (
    Stack("CUDA 12 driver, TensorRT 10", "10.x", "12.x", ">=12,<13", "tensorrt10"),
    Stack("Jetson, JetPack 6.1/6.2 (TensorRT from JetPack: NVIDIA's pip wheels are not for Jetson)",
          "10.3", "12.6", ">=12,<13", "jetson"),
    Stack("CUDA 12 driver", "10.x or 11.x", "12.x", ">=12,<13", "tensorrt"),
    Stack("CUDA 13 driver", "10.x or 11.x", "13.x", ">=13,<14", "tensorrt-cu13"),
)}


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # "onnxruntime" or "tensorrt"
    description: str
    precisions: tuple[str, ...]  # the first is the default
    needs: str
    compute_capabilities: tuple[tuple[int, int], ...] = ()  # TensorRT: the parts a preset covers
    providers: tuple[str, ...] = ()  # onnxruntime: execution providers, in order
    stacks: tuple[str, ...] = ()  # TensorRT: the STACKS it builds on

    @property
    def default_precision(self) -> str:
        return self.precisions[0]

    def engine_name(self, precision: str) -> str:
        return f"{self.name}-{precision}"


# TensorRT precision -> the export dtype it builds from. Every plan is a strongly typed
# network (the only mode TensorRT 11 has; opt-in since 10.0): its precision is the graph's,
# never a builder flag. fp16 needs a float16 export; int8 and fp8 need a float16 graph with
# Q/DQ nodes of that type (NVIDIA ModelOpt), offered only on the parts whose tensor cores run
# them (fp8: Ada sm89 and Hopper sm90). bf16 is not offered: the exporter writes no bfloat16
# graphs (ONNX Runtime's CPU provider could not validate them).
TENSORRT_EXPORT_DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "float16", "fp8": "float16"}
TARGETS = {t.name: t for t in (
    Target("cpu", "onnxruntime", "any CPU: optimized float graphs, or weight-quantized int8 (dynamic) "
           "and int4 (4-bit blocks of 32, MatMulNBits; a Q4_1 GGUF's own grids kept exactly) or int4-sym "
           "(every weight re-quantized symmetrically: faster, as onnxruntime-genai does)",
           ("fp32", "int8", "int4", "int4-sym"),
           "onnxruntime", providers=("CPUExecutionProvider",)),
    Target("ort-cuda", "onnxruntime", "NVIDIA GPU through onnxruntime-gpu's CUDA execution provider",
           ("as-exported",), "onnxruntime-gpu built for the driver's CUDA (PyPI's 1.31: CUDA 13), an NVIDIA GPU",
           providers=("CUDAExecutionProvider", "CPUExecutionProvider")),
    Target("ort-tensorrt", "onnxruntime", "NVIDIA GPU through onnxruntime-gpu's TensorRT execution "
           "provider (engine cache in the engine folder)", ("fp16", "fp32"),
           "onnxruntime-gpu with TensorRT 10, an NVIDIA GPU",
           providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")),
    Target("t4", "tensorrt", "NVIDIA T4 (Turing, sm75)", ("fp16", "fp32", "int8"),
           "a T4", compute_capabilities=((7, 5),), stacks=("tensorrt10",)),
    Target("orin", "tensorrt", "NVIDIA Jetson Orin (Ampere iGPU, sm87)", ("fp16", "fp32", "int8"),
           "a Jetson Orin with JetPack 6", compute_capabilities=((8, 7),), stacks=("jetson",)),
    Target("ampere", "tensorrt", "NVIDIA Ampere datacenter/workstation (A100 sm80, A10/A40/RTX 30 sm86)",
           ("fp16", "fp32", "int8"), "an Ampere GPU", compute_capabilities=((8, 0), (8, 6)),
           stacks=("tensorrt", "tensorrt-cu13")),
    Target("ada", "tensorrt", "NVIDIA Ada (L4, L40S, RTX 40, sm89)", ("fp16", "fp32", "int8", "fp8"),
           "an Ada GPU", compute_capabilities=((8, 9),), stacks=("tensorrt", "tensorrt-cu13")),
    Target("hopper", "tensorrt", "NVIDIA Hopper (H100, H200, sm90)", ("fp16", "fp32", "int8", "fp8"),
           "a Hopper GPU", compute_capabilities=((9, 0),), stacks=("tensorrt", "tensorrt-cu13")),
)}


def get_target(name: str, precision: str | None) -> tuple[Target, str]:
    """The target and the precision to build at (the target's default when None).

    Raises:
        TargetError: unknown target, or a precision the target does not support.
    """
    target = TARGETS.get(name)
    if target is None:
        raise TargetError(f"unknown target {name!r}; `cli.py build --list-targets` shows them: "
                          + ", ".join(TARGETS))
    precision = precision or target.default_precision
    if precision not in target.precisions:
        raise TargetError(f"target {name!r} ({target.description}) does not support precision "
                          f"{precision!r}; supported: {', '.join(target.precisions)}")
    return target, precision


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell, the last one left ragged."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def describe_targets() -> str:
    """The targets, and for each TensorRT target the TensorRT, CUDA and cuda-python it needs."""
    rows = [("target", "backend", "precisions (default first)", "needs", "what")]
    rows += [(t.name, t.backend, ", ".join(t.precisions), t.needs, t.description) for t in TARGETS.values()]
    stacks = [("target", "TensorRT", "CUDA", "cuda-python", "install", "host")]
    stacks += [(t.name, s.tensorrt, s.cuda, s.cuda_python, s.install, s.host)
               for t in TARGETS.values() for s in (STACKS[n] for n in t.stacks)]
    return "\n".join(_table(rows) + ["", "TensorRT targets: plans are built on the GPU that runs them, with "
                                      "one of these (export --dtype float16 for fp16 plans):"] + _table(stacks))
