"""The few CUDA runtime calls the TensorRT backend and builder need, through cuda-python,
with every returned error code checked. Imported lazily; nothing here runs without a GPU.

cuda-python ships no type information (no stubs, no py.typed), so the module cudart() returns
is Any to the type check (tests/test_typecheck.py): the signatures here are checked, the CUDA
calls are not."""

from __future__ import annotations

from typing import Any

from runtime.errors import DeviceError


def cudart() -> Any:
    """The cuda-python runtime module (cuda.bindings.runtime, or cuda.cudart before 12.6).

    Raises: DeviceError when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise DeviceError("cuda-python is not installed: pip install the extra of your stack, "
                              "'recycle-export[tensorrt]' on a CUDA 12 driver (see `cli.py build --list-targets`)") from None
    return runtime


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python result tuple, raising on an error code."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        raise DeviceError(f"CUDA {what} failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


def device_properties(device: int = 0) -> dict[str, Any]:
    """Name and compute capability of a GPU. Raises: DeviceError without a GPU."""
    rt = cudart()
    count = check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if count < 1 or device >= count:
        raise DeviceError(f"no CUDA GPU number {device} (found {count})")
    props = check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return {"name": name, "compute_capability": [props.major, props.minor]}
