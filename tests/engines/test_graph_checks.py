"""Float16 safety of the exported graphs, checked without a GPU: the ops a strongly typed
TensorRT network must run in float32 take float32 inputs, every constant is finite in
float16, a fully masked attention row stays finite, and the float16 graphs' logits follow
the float32 graphs' under ONNX Runtime (CPU)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engines.graph_checks import float16_hazards, float32_islands, load_structure
from runtime import contract as C
from tests.conftest import TINY


@pytest.mark.parametrize("graph, norms, attention_layers", [
    ("full_step", 2 * TINY["n_layers"] + 1, TINY["n_layers"]),
    ("recycle_step", 2 * TINY["recycle_layers"] + 1, TINY["recycle_layers"]),
])
def test_float16_export_keeps_norms_softmax_and_rotary_in_float32(tiny_fp16_artifacts, graph, norms,
                                                                    attention_layers):
    proto = load_structure(tiny_fp16_artifacts / f"{graph}.onnx")
    assert float16_hazards(proto) == []
    # every norm's square and mean, every layer's softmax and the one rotary table: float32
    assert float32_islands(proto) == {"Pow": norms, "ReduceMean": norms, "Softmax": attention_layers,
                                      "Cos": 1, "Sin": 1}
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Pow") == norms and ops.count("Softmax") == attention_layers  # no float16 copies
    for node in proto.graph.node:  # each norm squares the Cast-to-float of its input
        if node.op_type == "Pow":
            producer = next(n for n in proto.graph.node if node.input[0] in n.output)
            assert producer.op_type == "Cast" and producer.attribute[0].i == TensorProto.FLOAT


def test_hazards_are_found(tmp_path):
    half = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4])
    two = helper.make_tensor("two", TensorProto.FLOAT16, [], [2.0])
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"], name="norm/Pow"),
             helper.make_node("Constant", [], ["low"], value=helper.make_tensor("v", TensorProto.FLOAT, [],
                                                                                [-3.4028234663852886e38])),
             helper.make_node("Cast", ["low"], ["low16"], to=TensorProto.FLOAT16),
             helper.make_node("Add", ["sq", "low16"], ["y"])]
    graph = helper.make_graph(nodes, "g", [half], [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 4])],
                              [two])
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"))
    hazards = float16_hazards(load_structure(tmp_path / "g.onnx"))
    assert hazards == ["Pow node 'norm/Pow' computes in FLOAT16, not FLOAT",
                       "constant 'low' holds -3.403e+38, which float16 cannot represent"]


def test_float32_mask_constant_would_be_caught(tiny_checkpoint, tmp_path, monkeypatch):
    """The attention mask used float32's lowest value before; the check names it."""
    import torch

    from recycle_export.export import ExportOptions, export

    monkeypatch.setattr("recycle_export.model.MASKED_SCORE", torch.finfo(torch.float32).min)
    export(tiny_checkpoint, tmp_path / "old", ExportOptions(dtype="float16"))
    hazards = float16_hazards(load_structure(tmp_path / "old" / "full_step.onnx"))
    assert hazards and all("holds -3.403e+38, which float16 cannot represent" in h for h in hazards)


def _padded_feeds(spec, dtype, dims):
    """A left-padded batch of two prompts: row 1's first three queries see no real key."""
    rng = np.random.default_rng(0)
    new, pad = 7, 3
    mask = np.ones((2, new), np.int64)
    mask[1, :pad] = 0
    feeds = {C.INPUT_IDS: rng.integers(0, dims.vocab_size, (2, new)),
             C.POSITION_IDS: np.clip(mask.cumsum(-1) - 1, 0, None), C.ATTENTION_MASK: mask,
             C.NUM_LOGITS_INPUT: np.array([new], np.int64)}
    for t in spec.inputs:
        if t.name.startswith("past_key_values."):
            feeds[t.name] = np.zeros((2, dims.n_kv_heads, 0, dims.head_dim), dtype)
        elif t.name == C.HIDDEN_STATES:
            feeds[t.name] = rng.standard_normal((2, new, dims.dim)).astype(dtype)
    return feeds, mask


@pytest.mark.parametrize("graph", ["full_step", "recycle_step"])
def test_float16_logits_follow_float32_under_onnxruntime(tiny_artifacts, tiny_fp16_artifacts, graph):
    import onnxruntime as ort

    from runtime.artifacts import Artifacts

    dims = Artifacts.load(tiny_artifacts).dims
    spec = C.graphs(dims)[graph]
    outputs = {}
    for folder, dtype in ((tiny_artifacts, np.float32), (tiny_fp16_artifacts, np.float16)):
        session = ort.InferenceSession(str(folder / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
        feeds, mask = _padded_feeds(spec, dtype, dims)
        outputs[dtype] = dict(zip(spec.output_names, session.run(None, feeds)))
    for name, value in outputs[np.float16].items():
        assert value.dtype == np.float16 and np.isfinite(value).all(), name  # padded rows included
    ref, half = outputs[np.float32][C.LOGITS], outputs[np.float16][C.LOGITS].astype(np.float32)
    real = mask.astype(bool)
    diff = np.abs(half - ref)[real].max()
    assert diff <= 2e-2 * np.abs(ref).max(), diff  # validate.TOLERANCE["float16"]
    agree = (half.argmax(-1) == ref.argmax(-1))[real].mean()
    assert agree >= 0.9, agree


def test_manifest_records_the_largest_norm_input(tiny_artifacts, tiny_fp16_artifacts, tiny):
    from recycle_export.model import RMSNorm
    from runtime.artifacts import Artifacts

    norms = sorted(name for name, m in tiny.named_modules() if isinstance(m, RMSNorm))
    for folder in (tiny_artifacts, tiny_fp16_artifacts):
        validation = Artifacts.load(folder).manifest.validation
        peaks = validation["norm_input_max_abs"]
        assert sorted(peaks) == norms and all(v > 0 for v in peaks.values())
        assert validation["norm_input_float16_square_overflows"] == (max(peaks.values()) > 255.9)
    fp32 = Artifacts.load(tiny_artifacts).manifest.validation
    assert fp32["tolerance"]["relative_to_max_abs_reference"] == 1e-4 and fp32["passed"]


def _big_activation_checkpoint(tmp_path):
    """The tiny model with a residual stream of |x| ~ 1,300 from layer 1 on (as SmolLM2's
    reaches ~25,000): x^2 overflows float16 there."""
    import torch

    from recycle_export.checkpoint import Checkpoint, save_checkpoint
    from runtime.artifacts import GenerationRecord
    from tests.conftest import tiny_model

    model = tiny_model()
    with torch.no_grad():
        model.base.layers[0].mlp.down_proj.weight.mul_(100.0)
    save_checkpoint(Checkpoint(model, False, GenerationRecord(eos_token_ids=(2,))), tmp_path / "ckpt")
    return tmp_path / "ckpt", model


def test_float16_graph_computed_in_float16_stays_right(tmp_path, monkeypatch):
    """ONNX Runtime's CPU provider runs float16 ops without float16 kernels in float32, so it
    cannot show an overflow. onnx's reference evaluator computes each op in its inputs' type,
    as a strongly typed TensorRT network does: there the float16 export must match the float32
    model, and a norm that squares in float16 visibly does not."""
    import torch
    from onnx.reference import ReferenceEvaluator

    from recycle_export.export import ExportOptions, export
    from recycle_export.graphs import graph_module
    from recycle_export.model import RMSNorm

    ckpt, model = _big_activation_checkpoint(tmp_path)
    manifest = export(ckpt, tmp_path / "fp16", ExportOptions(dtype="float16"))
    peaks = manifest.validation["norm_input_max_abs"]
    assert peaks["base.norm"] > 1000 and manifest.validation["norm_input_float16_square_overflows"]

    def errors(folder):
        spec = C.full_step(manifest.dims)
        feeds, mask = _padded_feeds(spec, np.float16, manifest.dims)
        got = ReferenceEvaluator(str(folder / "full_step.onnx")).run(None, feeds)[0].astype(np.float32)
        with torch.no_grad():
            args = [torch.from_numpy(v).float() if v.dtype == np.float16 else torch.from_numpy(v)
                    for v in feeds.values()]
            ref = graph_module(model, "full_step")(*args)[0].numpy()
        return np.abs(got - ref)[mask.astype(bool)].max() / np.abs(ref).max()

    assert errors(tmp_path / "fp16") <= 2e-2  # validate.TOLERANCE["float16"]

    def square_in_model_dtype(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    monkeypatch.setattr(RMSNorm, "forward", square_in_model_dtype)
    naive = export(ckpt, tmp_path / "naive", ExportOptions(dtype="float16"))
    assert naive.validation["passed"]  # under ONNX Runtime (CPU), which computes that Pow in float32
    assert errors(tmp_path / "naive") > 0.1
    assert any("Pow node" in h for h in float16_hazards(load_structure(tmp_path / "naive" / "full_step.onnx")))


@pytest.mark.parametrize("graph", ["full_step", "recycle_step"])
def test_op_inventory_is_what_tensorrts_parser_imports(tiny_artifacts, tiny_fp16_artifacts, graph):
    from engines.graph_checks import tensorrt_op_problems

    for folder in (tiny_artifacts, tiny_fp16_artifacts):
        assert tensorrt_op_problems(load_structure(folder / f"{graph}.onnx")) == []


def test_op_inventory_problems_are_named(tmp_path):
    from engines.graph_checks import tensorrt_op_problems

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["u"], name="u"),
             helper.make_node("BitShift", ["u", "u"], ["b"], name="shift"),
             helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
             helper.make_node("Softmax", ["d"], ["y"], name="soft")]
    graph = helper.make_graph(nodes, "g", [x, axes], [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(tmp_path / "g.onnx"))
    problems = tensorrt_op_problems(load_structure(tmp_path / "g.onnx"))
    assert problems[0] == "opset 21 is outside 9..20"
    assert "Unsqueeze node 'u': input 1 must be a constant for TensorRT" in problems
    assert any(p.startswith("BitShift node 'shift': not in TensorRT's ONNX operators") for p in problems)
    assert "Softmax node 'soft': takes DOUBLE; TensorRT's importer takes FP32, FP16, BF16" in problems


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_io_element_types_per_precision(tiny_artifacts, tiny_fp16_artifacts, precision):
    """What each TensorRT precision's plan binds: the export's float type for every float I/O
    (KV included: no reformatting at the plan's edges), int64 for ids, positions, mask and
    num_logits."""
    from engines.targets import TENSORRT_EXPORT_DTYPES
    from runtime.artifacts import Artifacts

    dtype = TENSORRT_EXPORT_DTYPES[precision]
    folder = tiny_fp16_artifacts if dtype == "float16" else tiny_artifacts
    dims = Artifacts.load(folder).dims
    assert dims.dtype == dtype
    for graph, spec in C.graphs(dims).items():
        model = onnx.load(str(folder / f"{graph}.onnx"), load_external_data=False)
        found = {v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
                 for v in (*model.graph.input, *model.graph.output)}
        ints = {C.INPUT_IDS, C.POSITION_IDS, C.ATTENTION_MASK, C.NUM_LOGITS_INPUT}
        assert found == {t.name: "int64" if t.name in ints else dtype for t in (*spec.inputs, *spec.outputs)}
