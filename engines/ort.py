"""ONNX Runtime builds: the fused CPU graphs (engines/ort_fused.py) in every precision, with
their accuracy against the float graphs, and the exported graphs with the provider settings
for onnxruntime-gpu targets (CUDA, TensorRT EP)."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
from pathlib import Path
from typing import Callable

from engines.ort_fused import build_fused
from engines.targets import Target
from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.backends.onnxruntime import cpu_signature
from runtime.engines import ENGINE_JSON, TRT_CACHE, EngineRecord, engine_dir, engine_files
from runtime.errors import EngineBuildError
from runtime.files import hash_files, staged_folder

log = logging.getLogger(__name__)

ACCURACY_PROMPTS = 8  # held-out prompts (with the float graphs' greedy answers) per quantized build
ACCURACY_ANSWER_TOKENS = 32


def build_session_files(artifacts: Artifacts, target: Target, precision: str, out: Path,
                        progress: Callable[[str], None] = lambda stage: None) -> EngineRecord:
    """Write the ONNX Runtime build of both graphs into the engine folder `out`, with its
    engine.json; quantized CPU builds also record their accuracy against the float graphs.

    Raises:
        EngineBuildError: this onnxruntime lacks the target's providers, or the build fails.
    """
    import onnxruntime

    check_providers(target)
    fused = target.name == "cpu"
    with staged_folder(out, ENGINE_JSON, engine_files) as tmp:
        graphs = {name: f"{name}.onnx" for name in C.graphs(artifacts.dims)}
        if fused:
            progress(f"emitting fused graphs ({precision})")
            build_fused(artifacts, tmp, precision)
        else:
            for name in graphs:
                progress(f"building {name} ({precision})")
                ship_graph(artifacts.graph_path(name), tmp / graphs[name])
        kv_contract = C.INPLACE_CONTRACT_NAME if fused else C.CONTRACT_NAME
        accuracy = None
        if fused and precision != "fp32":
            progress("measuring accuracy against the float graphs")
            accuracy = accuracy_report(artifacts, tmp, graphs, _accuracy_prompts(artifacts), kv_contract)
        session = session_settings(target, precision, out)
        if fused and precision == "fp32":
            progress("saving the base graph's weights pre-packed")
            save_prepacked(tmp, graphs[C.FULL_STEP])
            session["prepacked"] = {"cpu": cpu_signature(), "onnxruntime": onnxruntime.__version__}
        device = {"name": platform.processor() or platform.machine(), "compute_capability": None}
        record = EngineRecord.create(artifacts, target.name, precision, "onnxruntime", onnxruntime.__version__,
                                     device, graphs, hash_files(tmp), session=session, accuracy=accuracy,
                                     kv_contract=kv_contract)
        record.write(tmp)
    return record


def save_prepacked(folder: Path, graph: str) -> None:
    """Replace `folder/graph` by ONNX Runtime's optimized CPU graph with its weights saved as
    the CPU kernels pre-pack them (in `graph`.data). Loaded, the session maps them from disk
    and packs nothing: without this it holds each float MatMul weight twice, as read and as
    packed (SmolLM2 fp32: 874 -> 770 MiB peak for a generation at the same speed; README).
    The packing is the CPU's and onnxruntime's: the runtime refuses such an engine under
    another of either (runtime.backends.onnxruntime.check_prepacked)."""
    import onnxruntime as ort

    staged = folder / f"prepacked-{graph}"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(staged)
    for key, value in (("session.optimized_model_external_initializers_file_name", f"{graph}.data"),
                       ("session.optimized_model_external_initializers_min_size_in_bytes", "1024"),
                       ("session.save_prepacked_constant_initializers", "1")):
        options.add_session_config_entry(key, value)
    ort.set_default_logger_severity(3)  # its warning that the result is for this machine: we record that
    try:
        ort.InferenceSession(str(folder / graph), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EngineBuildError(f"onnxruntime could not save {graph} pre-packed: {exc}") from None
    finally:
        ort.set_default_logger_severity(2)
    os.replace(staged, folder / graph)


def record_step_costs(artifacts: Artifacts, engine: str, record: EngineRecord) -> EngineRecord:
    """Time the built engine's base step by width (runtime.costs.measure_step_costs) and add
    the table to its engine.json, so that verify drafts only what a wider step is worth."""
    from runtime.costs import measure_step_costs
    from runtime.generator import Generator

    with Generator.from_artifacts(artifacts.folder, engine) as gen:
        costs = measure_step_costs(gen)
    record = dataclasses.replace(record, step_costs=costs.to_json())
    record.write(engine_dir(artifacts.folder, engine))
    return record


def session_settings(target: Target, precision: str, folder: Path) -> dict:
    """The session settings recorded in engine.json and applied by the runtime."""
    # CPU: the base graph's threads spin between operators. On SmolLM2 (2 cores) that took a
    # decode step from 8.0 to 5.5 ms (int4) and 20.8 to 15.6 ms (fp32); the module graph then
    # runs on one thread (runtime.backends.onnxruntime.OrtBackend).
    settings = {"graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_spinning": target.name == "cpu",
                "providers": list(target.providers), "provider_options": {}}
    if target.name == "ort-tensorrt":
        settings["provider_options"]["TensorrtExecutionProvider"] = {
            "trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(folder / TRT_CACHE), "trt_timing_cache_enable": True}
    return settings


def ship_graph(source: Path, out: Path) -> None:
    """onnxruntime-gpu targets: the exported graph as it is (with its weights in the file);
    the GPU providers optimize it for themselves at load time."""
    import onnx

    onnx.save_model(onnx.load(str(source)), str(out))


def check_providers(target: Target) -> None:
    """Raises: EngineBuildError when this onnxruntime lacks the target's providers."""
    import onnxruntime as ort

    missing = [p for p in target.providers if p not in ort.get_available_providers()]
    if missing:
        raise EngineBuildError(f"target {target.name!r} needs {missing[0]}, which this onnxruntime "
                               f"({ort.__version__}, providers {', '.join(ort.get_available_providers())}) "
                               f"lacks: install {target.needs}")


def accuracy_report(artifacts: Artifacts, folder: Path, graphs: dict[str, str],
                    sequences: list[tuple[list[int], list[int]]], kv_contract: str = C.CONTRACT_NAME) -> dict:
    """The build against the exported float graphs on (prompt, answer) pairs: per graph the
    max abs logit difference and the next-token (argmax) agreement over the positions that
    predict the answer tokens, the positions decoding visits. (Prompt positions are left
    out: a chat template's tokens are near-ties for the model, whose argmax flips freely.)"""
    import numpy as np

    from runtime.backends.onnxruntime import OrtBackend
    from runtime.evaluate import teacher_forced

    reference = OrtBackend(artifacts)
    build = OrtBackend(artifacts, model_paths={name: folder / file for name, file in graphs.items()},
                       kv_contract=kv_contract)
    names = ("full_step", "recycle_step")
    worst, agree = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
    for prompt, answer in sequences:
        span = slice(len(prompt) - 1, len(prompt) + len(answer) - 1)
        refs = teacher_forced(reference, artifacts.dims, prompt + answer)
        gots = teacher_forced(build, artifacts.dims, prompt + answer)
        for graph, ref, got in zip(names, refs, gots):
            ref, got = ref[span], got[span]
            worst[graph] = max(worst[graph], float(np.abs(ref - got).max()))
            agree[graph] += int((ref.argmax(-1) == got.argmax(-1)).sum())
    total = sum(len(answer) for _, answer in sequences)
    report = {graph: {"max_abs_logit_diff": worst[graph], "next_token_agreement": agree[graph] / total}
              for graph in names}
    report["sequences"] = len(sequences)
    report["positions"] = total
    return report


def _accuracy_prompts(artifacts: Artifacts) -> list[tuple[list[int], list[int]]]:
    """Held-out chat prompts with the float graphs' own greedy answers. Without a
    tokenizer: fixed token ids as prompts."""
    from runtime.generator import Generator
    from runtime.prompts import prompts
    from runtime.request import Request

    with Generator.from_artifacts(artifacts.folder, check_hashes=False) as generator:
        if generator.codec is None:
            ids = [[(7 * i + 3 * j) % artifacts.dims.vocab_size for j in range(8)] for i in range(ACCURACY_PROMPTS)]
        else:
            ids = [generator.encode(text, chat=True) for text in prompts("heldout")[:ACCURACY_PROMPTS]]
        request = Request(max_new_tokens=ACCURACY_ANSWER_TOKENS, stop_token_ids=())
        return [(prompt, generator.generate(prompt, request).tokens) for prompt in ids]
