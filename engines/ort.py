"""ONNX Runtime builds: optimized float graphs and weight-quantized CPU variants, plus the
provider settings for onnxruntime-gpu targets (CUDA, TensorRT EP)."""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Callable

from engines.onnx_graphs import unshare_lm_head
from engines.targets import Target
from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.engines import ENGINE_JSON, EngineRecord
from runtime.errors import EngineBuildError
from runtime.files import hash_files, staged_folder

log = logging.getLogger(__name__)

INT4_BLOCK = 32  # weights per scale: the granularity onnxruntime-genai uses for CPU int4
# MatMulNBits accuracy level 4: int8 activations in the dot products, the fast CPU path.
INT4_ACCURACY_LEVEL = 4
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
    with staged_folder(out, ENGINE_JSON) as tmp:
        graphs = {}
        for name in C.graphs(artifacts.dims):
            progress(f"building {name} ({precision})")
            graphs[name] = f"{name}.onnx"
            build_graph(artifacts.graph_path(name), tmp / graphs[name], target, precision)
        accuracy = None
        if target.name == "cpu" and precision != "fp32":
            progress("measuring accuracy against the float graphs")
            accuracy = accuracy_report(artifacts, tmp, graphs, _accuracy_prompts(artifacts))
        device = {"name": platform.processor() or platform.machine(), "compute_capability": None}
        record = EngineRecord.create(artifacts, target.name, precision, "onnxruntime", onnxruntime.__version__,
                                     device, graphs, hash_files(tmp),
                                     session=session_settings(target, precision, out), accuracy=accuracy)
        record.write(tmp)
    return record


def session_settings(target: Target, precision: str, folder: Path) -> dict:
    """The session settings recorded in engine.json and applied by the runtime."""
    settings = {"graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_spinning": False,
                "providers": list(target.providers), "provider_options": {}}
    if target.name == "ort-tensorrt":
        settings["provider_options"]["TensorrtExecutionProvider"] = {
            "trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(folder / "trt_cache"), "trt_timing_cache_enable": True}
    return settings


def build_graph(source: Path, out: Path, target: Target, precision: str) -> None:
    """Write the build of one graph: optimized (fp32) or weight-quantized (int8, int4)."""
    import onnx
    import onnxruntime as ort

    if target.name != "cpu":
        # onnxruntime-gpu optimizes for its own providers at load time; ship the graph.
        onnx.save_model(onnx.load(str(source)), str(out))
        return
    if precision == "fp32":
        # Offline optimization at the extended level: the all-level layout rewrites are
        # machine-specific, so the runtime applies them when it loads the build.
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        return
    proto = onnx.load(str(source))
    unshare_lm_head(proto)
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(proto, str(out), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8)
    elif precision == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(proto, bits=4, block_size=INT4_BLOCK, is_symmetric=True,
                                         accuracy_level=INT4_ACCURACY_LEVEL)
        quantizer.process()
        onnx.save_model(quantizer.model.model, str(out))
    else:
        raise EngineBuildError(f"precision {precision!r} is not an onnxruntime CPU build")


def check_providers(target: Target) -> None:
    """Raises: EngineBuildError when this onnxruntime lacks the target's providers."""
    import onnxruntime as ort

    missing = [p for p in target.providers if p not in ort.get_available_providers()]
    if missing:
        raise EngineBuildError(f"target {target.name!r} needs {missing[0]}, which this onnxruntime "
                               f"({ort.__version__}, providers {', '.join(ort.get_available_providers())}) "
                               f"lacks: install {target.needs}")


def accuracy_report(artifacts: Artifacts, folder: Path, graphs: dict[str, str],
                    sequences: list[tuple[list[int], list[int]]]) -> dict:
    """The build against the exported float graphs on (prompt, answer) pairs: per graph the
    max abs logit difference and the next-token (argmax) agreement over the positions that
    predict the answer tokens, the positions decoding visits. (Prompt positions are left
    out: a chat template's tokens are near-ties for the model, whose argmax flips freely.)"""
    import numpy as np

    from runtime.backends.onnxruntime import OrtBackend
    from runtime.evaluate import teacher_forced

    reference = OrtBackend(artifacts)
    build = OrtBackend(artifacts, model_paths={name: folder / file for name, file in graphs.items()})
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
