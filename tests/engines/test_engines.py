"""Engines without a GPU: targets, profiles, engine.json and compatibility checks, CPU builds."""

import dataclasses
import json
import shutil

import pytest

from engines.build import build
from engines.profiles import derive_profiles, profiles_json
from engines.targets import TARGETS, get_target
from engines.tensorrt import check_part
from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.contract import select_profile
from runtime.backends.tensorrt import check_plan_compatibility
from runtime.backends.onnxruntime import cpu_signature
from runtime.engines import EngineInfo, EngineRecord
from runtime.errors import ArtifactError, EngineBuildError, TargetError
from runtime.generator import Generator, Request


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts, tmp_path_factory):
    """A private copy: these tests add engines and change graphs."""
    folder = tmp_path_factory.mktemp("engines") / "art"
    shutil.copytree(tiny_artifacts, folder)
    return folder


def test_presets():
    assert TARGETS["orin"].compute_capabilities == ((8, 7),) and TARGETS["t4"].compute_capabilities == ((7, 5),)
    for name, target in TARGETS.items():
        if target.backend == "tensorrt":
            assert target.default_precision == "fp16"
            # fp8 tensor cores exist from Ada (sm89) on.
            assert ("fp8" in target.precisions) == (min(target.compute_capabilities) >= (8, 9)), name
    assert get_target("cpu", None) == (TARGETS["cpu"], "fp32")
    with pytest.raises(TargetError, match="unknown target 'v100'"):
        get_target("v100", None)
    with pytest.raises(TargetError, match="does not support precision 'fp8'; supported: fp16, fp32, int8"):
        get_target("t4", "fp8")


def test_profiles_follow_the_contract():
    dims = C.Dims(n_layers=2, recycle_layers=1, n_kv_heads=2, head_dim=16, dim=64, vocab_size=96)
    decode, prefill = derive_profiles(C.full_step(dims), max_seq_len=64, max_batch=4)
    assert C.DECODE_MAX_NEW == 16
    assert decode.shapes["input_ids"] == ((1, 1), (1, 2), (4, 16))
    assert decode.shapes["past_key_values.1.value"] == ((1, 2, 0, 16), (1, 2, 32, 16), (4, 2, 63, 16))
    assert decode.shapes["attention_mask"] == ((1, 1), (1, 34), (4, 79))  # total = past + new
    assert decode.values["num_logits"] == ((1,), (2,), (16,))
    assert prefill.shapes["input_ids"] == ((1, 1), (1, 64), (4, 64))
    assert prefill.shapes["past_key_values.0.key"] == ((1, 2, 0, 16),) * 2 + ((4, 2, 0, 16),)
    module = derive_profiles(C.recycle_step(dims), 64, 1)[0]
    assert module.shapes["hidden_states"] == ((1, 1, 64), (1, 2, 64), (1, 16, 64))
    assert set(module.shapes) == set(C.recycle_step(dims).input_names)
    assert select_profile(2) == 0 and select_profile(30) == 1


def test_plan_compatibility_checks(artifacts):
    engine = EngineInfo(artifacts / "engines" / "t4-fp16", EngineRecord(
        "t4", "fp16", "tensorrt", "10.3.0", {"name": "Tesla T4", "compute_capability": [7, 5]},
        {"full_step": "full_step.plan", "recycle_step": "recycle_step.plan"}, None, {}, {}))
    check_plan_compatibility(engine, "10.3.0", {"name": "Tesla T4", "compute_capability": [7, 5]}, "rebuild")
    with pytest.raises(ArtifactError, match="built with TensorRT 10.3.0, this is TensorRT 10.7.0"):
        check_plan_compatibility(engine, "10.7.0", {"name": "Tesla T4", "compute_capability": [7, 5]}, "rebuild")
    with pytest.raises(ArtifactError, match=r"built for Tesla T4 \(compute capability \(7, 5\)\), this GPU is "
                                            r"NVIDIA H100 \(\(9, 0\)\); rebuild on this device"):
        check_plan_compatibility(engine, "10.3.0", {"name": "NVIDIA H100", "compute_capability": [9, 0]}, "rebuild")
    with pytest.raises(EngineBuildError, match="target 'orin' is for sm87, but this GPU is NVIDIA H100"):
        check_part(TARGETS["orin"], {"name": "NVIDIA H100", "compute_capability": [9, 0]}, "fp16")
    dims = C.Dims(n_layers=2, recycle_layers=1, n_kv_heads=2, head_dim=16, dim=64, vocab_size=96)
    current = {"full_step": profiles_json(C.full_step(dims), 64, 1)}
    narrow = json.loads(json.dumps(current))  # a plan built when the decode profile ended at 4 new tokens
    narrow["full_step"][0]["ranges"][C.NEW][2] = 4
    t4 = {"name": "Tesla T4", "compute_capability": [7, 5]}
    for profiles in (current, narrow):
        engine = EngineInfo(artifacts / "engines" / "t4-fp16", EngineRecord(
            "t4", "fp16", "tensorrt", "10.3.0", t4, {"full_step": "full_step.plan"}, profiles, {}, {}))
        if profiles is current:
            check_plan_compatibility(engine, "10.3.0", t4, "rebuild")
        else:
            with pytest.raises(ArtifactError, match="full_step's decode profile takes up to 4 new tokens, and this "
                                                    "runtime's verify steps take up to 16; rebuild"):
                check_plan_compatibility(engine, "10.3.0", t4, "rebuild")


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4", "int4-sym"])
def test_cpu_builds_run_in_the_runtime(artifacts, precision):
    record = build(artifacts, "cpu", precision)
    folder = artifacts / "engines" / f"cpu-{precision}"
    written = json.loads((folder / "engine.json").read_text())
    assert written == record.to_json()
    assert written["backend"] == "onnxruntime" and written["precision"] == precision
    manifest = Artifacts.load(artifacts).manifest
    assert written["source"] == {f: manifest.files[f] for f in ("full_step.onnx", "recycle_step.onnx")}
    gen = Generator.from_artifacts(artifacts, engine=f"cpu-{precision}", threads=1)
    exported = Generator.from_artifacts(artifacts, threads=1)
    # the build timed its base step by width (the tiny export fits one past of 48 positions)
    assert gen.costs is not None and exported.costs is None
    assert gen.costs.pasts == (48,) and gen.costs.news == (1, 2, 3, 4, 6, 8, 12, 16)
    assert all(ms > 0 for ms in gen.costs.ms[0]) and gen.costs.relative(1, 48) == 1.0
    for strategy in ("standard", "alternate", "verify"):
        result = gen.generate([5, 17, 3], Request(strategy, max_new_tokens=8, stop_token_ids=()))
        assert len(result.tokens) == 8
        if precision == "fp32":  # graph optimizations must not change a token
            assert result.tokens == exported.generate([5, 17, 3], Request(strategy, max_new_tokens=8,
                                                                                stop_token_ids=())).tokens
    if precision == "fp32":
        assert written["accuracy"] is None
    else:
        for graph in ("full_step", "recycle_step"):
            figures = written["accuracy"][graph]
            assert 0 < figures["max_abs_logit_diff"] and 0 <= figures["next_token_agreement"] <= 1


def test_a_chained_draft_never_reads_the_buffer_its_step_writes(artifacts):
    """An in-place engine keeps each step shape's outputs in one buffer per pool; a chained
    module draft's hidden input (the previous step's module_hidden_states) must be its own
    copy, not a view of the buffer the next step writes (it was, on 18 of 30 steps here)."""
    import numpy as np

    from runtime.request import DraftOptions

    build(artifacts, "cpu", "fp32")
    generator = Generator.from_artifacts(artifacts, engine="cpu-fp32")
    aliased, run = [], generator.backend.run

    def recording(graph, feeds, kv_outputs=None):
        out = run(graph, feeds, kv_outputs)
        if graph == C.RECYCLE_STEP:
            aliased.append(np.shares_memory(feeds[C.HIDDEN_STATES], out[C.MODULE_HIDDEN_STATES]))
        return out

    generator.backend.run = recording
    generator.generate([5, 9, 13, 2], Request("verify", max_new_tokens=12, drafts=DraftOptions(
        max_draft=3, lookup_ngram=0, module=True, min_probability=0.0)))
    assert len(aliased) > 10 and not any(aliased)


def test_engine_checks_against_its_sources(artifacts):
    build(artifacts, "cpu", "fp32")
    folder = artifacts / "engines" / "cpu-fp32"
    with open(folder / "full_step.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="full_step.onnx is missing or changed since the build; re-run `cli.py build"):
        Generator.from_artifacts(artifacts, engine="cpu-fp32")
    build(artifacts, "cpu", "fp32")
    manifest = Artifacts.load(artifacts).manifest
    changed = dataclasses.replace(manifest, files={**manifest.files, "recycle_step.onnx": "0" * 64})
    with pytest.raises(ArtifactError, match="built from a different recycle_step.onnx than the one exported now"):
        EngineInfo.load(Artifacts(artifacts, changed), "cpu-fp32")
    with pytest.raises(ArtifactError, match="no engine for target 'cpu-int2'"):
        Generator.from_artifacts(artifacts, engine="cpu-int2", check_hashes=False)


def test_fp32_weights_are_saved_prepacked_for_this_machine(artifacts):
    """The fp32 CPU build saves the base graph's weights pre-packed (engines.ort.save_prepacked);
    the engine then runs only on a CPU and an onnxruntime like the build's."""
    build(artifacts, "cpu", "fp32")
    folder = artifacts / "engines" / "cpu-fp32"
    assert (folder / "full_step.onnx.data").is_file()
    path = folder / "engine.json"
    original = path.read_text()
    assert json.loads(original)["session"]["prepacked"]["cpu"] == cpu_signature()
    for key, other in (("cpu", "x86_64 sse4_1"), ("onnxruntime", "1.0.0")):
        data = json.loads(original)
        data["session"]["prepacked"][key] = other
        path.write_text(json.dumps(data))
        try:
            with pytest.raises(ArtifactError, match=f"pre-packed for {key} '{other}'.*re-run `cli.py build"):
                Generator.from_artifacts(artifacts, engine="cpu-fp32")
        finally:
            path.write_text(original)
    assert Generator.from_artifacts(artifacts, engine="cpu-fp32").generate([5, 17], Request(max_new_tokens=3)).tokens


def test_gpu_check_script_runs_the_ort_cuda_path_with_the_provider_faked(tiny_chat_checkpoint, tmp_path, monkeypatch):
    """benchmarks/tensorrt_gpu.py --target ort-cuda, from a float16 export, with onnxruntime
    told it has the CUDA provider: this onnxruntime then runs the sessions on the CPU (it
    warns that CUDA is missing), which checks the path's wiring (build, engine.json, the
    runtime's sessions, the token check, the bench), not CUDA."""
    import sys
    import warnings
    from pathlib import Path

    import onnxruntime

    from recycle_export.export import ExportOptions, export

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from tensorrt_gpu import check_engine

    art = tmp_path / "fp16"
    export(tiny_chat_checkpoint, art, ExportOptions(dtype="float16", max_seq_len=256))
    real = onnxruntime.get_available_providers
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])
    said = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specified provider 'CUDAExecutionProvider'")
        figures = check_engine(str(art), "ort-cuda", None, max_new_tokens=6, repeats=1, task_set=None, say=said.append)
    record = json.loads((art / "engines" / "ort-cuda-as-exported" / "engine.json").read_text())
    assert record["session"]["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert record["step_costs"]  # measured after the build, as for the CPU engines
    assert sum("identical" in line for line in said) == 3 * 4  # the same tokens as the CPU run: 3 strategies x 4 prompts
    assert [f.strategy for f in figures] == ["standard", "alternate", "verify"]
