"""ONNX Runtime builds: optimized float graphs and weight-quantized CPU variants, plus the
provider settings for onnxruntime-gpu targets (CUDA, TensorRT EP)."""

from __future__ import annotations

import logging
from pathlib import Path

from engines.onnx_graphs import unshare_lm_head
from engines.targets import Target
from runtime.artifacts import Artifacts
from runtime.errors import EngineBuildError

log = logging.getLogger(__name__)

INT4_BLOCK = 32  # weights per scale: the granularity onnxruntime-genai uses for CPU int4
# MatMulNBits accuracy level 4: int8 activations in the dot products, the fast CPU path.
INT4_ACCURACY_LEVEL = 4


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
