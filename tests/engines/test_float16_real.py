"""SmolLM2-135M-Instruct as a float16 export, checked the way a strongly typed TensorRT
network would run it, without a GPU: its residual stream reaches |x| ~ 26,000 (the manifest
says so), the graph squares it in float32, and evaluated op by op in float16 on a real chat
prompt its logits follow the float32 export's."""

import numpy as np
import pytest

from engines.graph_checks import float16_hazards, load_structure, tensorrt_op_problems
from runtime import contract as C

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm_fp16(smollm_checkpoint, tmp_path_factory):
    from recycle_export.export import ExportOptions, export

    out = tmp_path_factory.mktemp("smollm2_fp16") / "artifacts"
    export(smollm_checkpoint[0], out, ExportOptions(dtype="float16", max_seq_len=512))
    return out


def test_smollm_float16_graph_is_right_in_float16(smollm_fp16, smollm_artifacts):
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from runtime.artifacts import Artifacts
    from runtime.generator import Generator

    validation = Artifacts.load(smollm_fp16).manifest.validation
    assert validation["passed"] and validation["norm_input_float16_square_overflows"]
    assert max(validation["norm_input_max_abs"].values()) > 10_000  # ~26,000 from layer 12 on
    for graph in ("full_step", "recycle_step"):
        structure = load_structure(smollm_fp16 / f"{graph}.onnx")
        assert float16_hazards(structure) == [] and tensorrt_op_problems(structure) == []

    dims = Artifacts.load(smollm_fp16).dims
    ids = Generator.from_artifacts(smollm_fp16).encode("What is the capital of France? Answer in one sentence.",
                                                       chat=True)
    n = len(ids)

    def feeds(dtype):
        f = {C.INPUT_IDS: np.array([ids]), C.POSITION_IDS: np.arange(n)[None],
             C.ATTENTION_MASK: np.ones((1, n), np.int64), C.NUM_LOGITS_INPUT: np.array([n])}
        f.update({t.name: np.zeros((1, dims.n_kv_heads, 0, dims.head_dim), dtype)
                  for t in C.full_step(dims).inputs if t.name.startswith("past_key_values.")})
        return f

    session = ort.InferenceSession(str(smollm_artifacts / "full_step.onnx"), providers=["CPUExecutionProvider"])
    ref = session.run([C.LOGITS], feeds(np.float32))[0]
    with np.errstate(over="ignore", invalid="ignore"):  # the evaluator's Sigmoid computes both branches
        half = ReferenceEvaluator(str(smollm_fp16 / "full_step.onnx")).run([C.LOGITS], feeds(np.float16))[0]
    half = half.astype(np.float32)
    assert np.isfinite(half).all()
    assert np.abs(half - ref).max() <= 2e-2 * np.abs(ref).max()  # measured on SmolLM2-135M-Instruct: 0.4%
    assert (half.argmax(-1) == ref.argmax(-1)).mean() >= 0.95  # measured: all 42 positions agree
