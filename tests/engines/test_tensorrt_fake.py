"""engines/tensorrt.py against stand-ins of TensorRT 10.3's and 11.4's Python APIs
(tests/engines/fake_tensorrt.py): strongly typed networks on both, precision from the
export's dtype, never a removed flag, every failure turned into one clear error."""

import json
import shutil
import sys

import pytest

from engines.build import build
from runtime import contract as C
from runtime.errors import EngineBuildError
from tests.engines.fake_tensorrt import WEAK_TYPING_FLAGS, fake_tensorrt

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]}
ORIN = {"name": "Orin", "compute_capability": [8, 7]}
VERSIONS = ("10.3.0", "11.4.0")


@pytest.fixture
def use_tensorrt(monkeypatch, tmp_path):
    """Install a fake `tensorrt` of a version and a GPU; returns the fake module."""

    def install(version: str, device: dict = H100, fail: str | None = None):
        trt = fake_tensorrt(version, fail)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr("engines.tensorrt.device_properties", lambda index: device)
        return trt

    return install


@pytest.fixture
def fp32(tiny_artifacts, tmp_path):
    """Private copies: these tests add engines."""
    return shutil.copytree(tiny_artifacts, tmp_path / "fp32")


@pytest.fixture
def fp16(tiny_fp16_artifacts, tmp_path):
    return shutil.copytree(tiny_fp16_artifacts, tmp_path / "fp16")


def _build(artifacts, target, precision, tmp_path):
    return build(artifacts, target, precision, timing_cache=str(tmp_path / "cache"))


def _removed_flags_looked_up(trt) -> list[str]:
    return [name for name in trt.looked_up if name.split(".")[-1] in WEAK_TYPING_FLAGS + ("EXPLICIT_BATCH",)]


@pytest.mark.parametrize("version", VERSIONS)
def test_fp16_plans_are_strongly_typed_float16_graphs(fp16, use_tensorrt, tmp_path, version):
    trt = use_tensorrt(version)
    record = _build(fp16, "hopper", "fp16", tmp_path)
    assert not _removed_flags_looked_up(trt)
    assert not [c for c in trt.calls if c[0] in ("set_flag", "clear_flag")]  # precision is the graph's
    strongly_typed = 1 if version.startswith("10") else 0  # the flag's value in each major
    assert [c for c in trt.calls if c[0] == "create_network"] == [("create_network", 1 << strongly_typed)] * 2
    assert len(trt.configs) == 2 and all(len(c.profiles) == 2 for c in trt.configs)
    decode, prefill = trt.configs[0].profiles
    assert decode.values["num_logits"] == ((1,), (2,), (C.DECODE_MAX_NEW,)) and decode.shapes["num_logits"] == ((1,),) * 3
    assert prefill.shapes["past_key_values.0.key"][2][2] == 0  # a prefill has no past
    folder = fp16 / "engines" / "hopper-fp16"
    written = json.loads((folder / "engine.json").read_text())
    assert written == record.to_json() and written["backend_version"] == version
    assert written["device"] == H100 and (folder / "full_step.plan").read_bytes().startswith(b"PLAN input_ids")
    assert (tmp_path / "cache").read_bytes() == b"++"  # the cache one graph's build left feeds the next


@pytest.mark.parametrize("version", VERSIONS)
def test_fp32_plans_clear_tf32(fp32, use_tensorrt, tmp_path, version):
    trt = use_tensorrt(version)
    _build(fp32, "hopper", "fp32", tmp_path)
    assert not _removed_flags_looked_up(trt)
    assert [c for c in trt.calls if c[0] in ("set_flag", "clear_flag")] == [("clear_flag", trt.BuilderFlag.TF32)] * 2
    plan = (fp32 / "engines" / "hopper-fp32" / "full_step.plan").read_bytes()
    assert b"TF32" not in plan


def test_precision_needs_the_matching_export_dtype(fp32, fp16, use_tensorrt, tmp_path):
    use_tensorrt("11.4.0", device=ORIN)
    with pytest.raises(EngineBuildError, match=r"orin-fp16 needs a float16 export, but .* is float32: .*strongly "
                                               r"typed.*re-run `cli.py export --dtype float16`"):
        _build(fp32, "orin", "fp16", tmp_path)
    with pytest.raises(EngineBuildError, match="orin-fp32 needs a float32 export, but .* is float16"):
        _build(fp16, "orin", "fp32", tmp_path)
    with pytest.raises(EngineBuildError, match="int8 needs a graph explicitly quantized to INT8 .* it has no Q/DQ"):
        _build(fp16, "orin", "int8", tmp_path)


def test_fp8_refuses_an_int8_quantized_graph(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from engines.tensorrt import check_quantization, quantized_types

    zero = numpy_helper.from_array(np.zeros((), np.int8), "zero")
    scale = numpy_helper.from_array(np.ones((), np.float32), "scale")
    graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
                               helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"])], "qdq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [zero, scale])
    onnx.save(helper.make_model(graph), str(tmp_path / "q.onnx"))
    assert quantized_types(tmp_path / "q.onnx") == {"INT8"}
    check_quantization("int8", tmp_path / "q.onnx")
    with pytest.raises(EngineBuildError, match="fp8 needs a graph explicitly quantized to FLOAT8E4M3FN .* "
                                               "its QuantizeLinear nodes produce INT8"):
        check_quantization("fp8", tmp_path / "q.onnx")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("fail, message", [
    ("builder", r"TensorRT could not create a builder \(.*nullptr\): CUDA initialization failure"),
    ("parser", r"TensorRT could not create an ONNX parser \(.*nullptr\): CUDA initialization failure"),
    ("parse", r"cannot parse full_step.onnx:\n  In node 3 \(Gather\): UNSUPPORTED_NODE: no importer\n  In node 9"),
    ("profile", r"full_step: TensorRT refused profile 'decode' for input 'attention_mask' \(shapes "
                r"\(1, 1\)/\(1, 34\)/\(1, 79\).*inconsistent"),
    ("timing-cache", "refused the timing cache"),
    ("build", r"failed to build full_step:\n  Error Code 4: Internal Error \(no kernel\)"),
    ("io-dtype", r"full_step: TensorRT typed 'present.1.value' as float32, the contract says float16"),
])
def test_every_failure_is_one_clear_error(fp16, use_tensorrt, tmp_path, version, fail, message):
    use_tensorrt(version, fail=fail)
    with pytest.raises(EngineBuildError, match=message):
        _build(fp16, "hopper", "fp16", tmp_path)


def test_refuses_tensorrt_older_than_10(fp16, use_tensorrt, tmp_path):
    from runtime.errors import DeviceError

    use_tensorrt("8.6.1")
    with pytest.raises(DeviceError, match="TensorRT 8.6.1 found; the builder needs TensorRT 10 or newer"):
        _build(fp16, "hopper", "fp16", tmp_path)
