"""Export the full step and the recyclable step as two ONNX graphs on one KV contract.

The graphs are traced with torch.onnx's TorchScript exporter (dynamo=False): it keeps the
num_logits slice and a zero-length past symbolic, which torch.export specialises away.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from recycle_export.checkpoint import Checkpoint, load_checkpoint, load_config
from recycle_export.graphs import TORCH_DTYPES, example_inputs, graph_module
from recycle_export.model import RecycleGPT
from recycle_export.validate import check_passed, validate_graphs
from runtime import contract as C
from runtime.artifacts import MANIFEST, GraphRecord, Manifest, export_files
from runtime.drafts import ANSWER_STORE, write_answer_store
from runtime.errors import ArtifactError
from runtime.files import hash_files, staged_folder
from runtime.limits import check_decode_memory

log = logging.getLogger(__name__)

SUPPORTED_OPSETS = range(14, 21)  # 14: Trilu-free attention and the shape ops we use; 20: newest the tracer emits
DEFAULT_OPSET = 17
# Graphs whose weights exceed this go to ONNX external data (protobuf caps a file at 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30


@dataclass(frozen=True)
class ExportOptions:
    dtype: str = "float32"
    opset: int = DEFAULT_OPSET
    max_seq_len: int | None = None  # None keeps the checkpoint's
    external_data_bytes: int = EXTERNAL_DATA_BYTES

    def __post_init__(self) -> None:
        if self.dtype not in TORCH_DTYPES:
            raise ArtifactError(f"dtype {self.dtype!r} is not supported; choose one of {sorted(TORCH_DTYPES)}")
        if self.opset not in SUPPORTED_OPSETS:
            raise ArtifactError(f"opset {self.opset} is not supported; choose one in "
                                f"{SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise ArtifactError(f"max_seq_len must be at least 2, got {self.max_seq_len}")


def _dynamic_axes(spec: C.GraphContract) -> dict[str, dict[int, str]]:
    return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*spec.inputs, *spec.outputs)}


def trace_graph(model: RecycleGPT, spec: C.GraphContract, path: Path, opset: int,
                external_data_bytes: int) -> None:
    """Trace one graph into `path` (external data beside it when the weights are large)."""
    import onnx

    dtype = model.base.embed_tokens.weight.dtype
    sizes = {C.BATCH: 2, C.NEW: 3, C.PAST: 4, C.NUM_LOGITS: 2}
    args = tuple(example_inputs(spec, sizes, dtype, model.cfg.vocab_size, torch.Generator().manual_seed(0)))
    # Trace into a scratch folder: past 2 GB the tracer spills one external file per tensor.
    scratch = path.with_name(f".trace-{path.stem}")
    scratch.mkdir()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
            torch.onnx.export(graph_module(model, spec.name), args, str(scratch / path.name),
                              input_names=spec.input_names, output_names=spec.output_names,
                              dynamic_axes=_dynamic_axes(spec), opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        proto = onnx.load(str(scratch / path.name))
    finally:
        shutil.rmtree(scratch)
    share_transposed_weights(proto)
    name_weights(proto, graph_module(model, spec.name))
    weight_bytes = sum(len(t.raw_data) for t in proto.graph.initializer)
    if weight_bytes > external_data_bytes:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)  # also runs strict shape inference


def share_transposed_weights(proto) -> int:
    """Point MatMul(x, W^T) at W itself, as Gemm(x, W, transB=1), when the tracer's
    constant folding stored W^T beside W (a tied LM head: W also feeds the embedding's
    Gather). Saves a (vocab, dim) matrix per graph on disk and in memory. Only 2-D `x`
    qualifies (Gemm's rule); returns how many copies were dropped."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    by_shape: dict[tuple, list] = {}
    for t in graph.initializer:
        by_shape.setdefault(tuple(t.dims), []).append(t)
    inferred = onnx.shape_inference.infer_shapes(proto).graph.value_info
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred}
    dropped = 0
    for i, node in enumerate(graph.node):
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2 or ranks.get(node.input[0]) != 2:
            continue
        transposed = numpy_helper.to_array(weight).T
        original = next((t for t in by_shape.get(tuple(reversed(weight.dims)), [])
                         if (numpy_helper.to_array(t) == transposed).all()), None)
        if original is None:
            continue
        graph.node[i].CopyFrom(helper.make_node("Gemm", [node.input[0], original.name], list(node.output),
                                                name=node.name, transB=1))
        if not any(weight.name in n.input for n in graph.node):
            graph.initializer.remove(weight)
            dropped += 1
    return dropped


def name_weights(proto, module: nn.Module) -> dict[str, str]:
    """Name each initializer that holds a parameter after it, and record where every
    parameter went.

    The tracer's constant folding stores MatMul weights transposed under names like
    `onnx::MatMul_624`, and deduplicates equal parameters into one initializer, so an
    engine builder cannot find a weight's role by name. Matching by value: an initializer
    equal to parameter P becomes `P`, one equal to P transposed becomes `P.T`. The model's
    metadata entry C.WEIGHTS_METADATA maps every such form of every parameter (tied and
    deduplicated ones included) to its initializer: {"model.base.norm.weight": ...,
    "model.base.layers.0.mlp.up_proj.weight.T": ...}. Returns that map.
    """
    import numpy as np
    from onnx import numpy_helper

    def digest(array) -> tuple:
        return array.dtype.str, array.shape, hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest()

    forms: dict[tuple, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        array = param.detach().cpu().numpy()
        forms.setdefault(digest(array), []).append(name)
        if array.ndim == 2:
            forms.setdefault(digest(array.T), []).append(f"{name}.T")
    renames, where = {}, {}
    for tensor in proto.graph.initializer:
        names = forms.get(digest(numpy_helper.to_array(tensor)), [])
        if not names:
            continue
        if tensor.name not in names:
            renames[tensor.name] = tensor.name = names[0]
        where.update(dict.fromkeys(names, tensor.name))
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    entry = proto.metadata_props.add()
    entry.key, entry.value = C.WEIGHTS_METADATA, json.dumps(where, sort_keys=True)
    return where


def export(model_path: Path, out: Path, options: ExportOptions = ExportOptions(),
           progress: Callable[[str], None] = lambda stage: None) -> dict:
    """Export the checkpoint at `model_path` into the folder `out` and validate it.

    Returns the manifest. The folder appears complete or not at all.

    Raises:
        CheckpointError, ConfigError: the checkpoint does not load.
        ArtifactError: bad options, or `out` holds files that are not an earlier export's.
        ConfigError: max_seq_len needs more memory for one sequence's KV cache than this
            machine has (checked before tracing).
        ValidationError: a graph disagrees with PyTorch beyond the dtype's tolerance
            (nothing is written then).
    """
    with staged_folder(out, MANIFEST, export_files) as tmp:
        progress("loading checkpoint")
        cfg = load_config(model_path)
        if options.max_seq_len is not None:
            cfg = dataclasses.replace(cfg, max_seq_len=options.max_seq_len)
        dims = C.Dims.from_config(cfg.to_dict(), options.dtype)
        check_decode_memory(dims, cfg.max_seq_len, "lower --max-seq-len")  # before the weights load
        ckpt = load_checkpoint(model_path)
        reference = ckpt.model  # float32, the oracle for every dtype
        model = reference if options.dtype == "float32" else copy.deepcopy(reference).to(TORCH_DTYPES[options.dtype])
        for name, spec in C.graphs(dims).items():
            progress(f"tracing {name}")
            trace_graph(model, spec, tmp / f"{name}.onnx", options.opset, options.external_data_bytes)
        if ckpt.tokenizer_json is not None:
            (tmp / "tokenizer.json").write_text(ckpt.tokenizer_json)
        if ckpt.answers is not None:
            write_answer_store(tmp / ANSWER_STORE, ckpt.answers)
        progress("validating against PyTorch")
        validation = validate_graphs(tmp, reference, dims)
        check_passed(validation)  # a failure discards the staged folder
        manifest = _manifest(ckpt, cfg, dims, options, model_path, validation, hash_files(tmp))
        manifest.write(tmp)
    return manifest


def _manifest(ckpt: Checkpoint, cfg, dims: C.Dims, options: ExportOptions, model_path: Path,
              validation: dict, files: dict[str, str]) -> Manifest:
    import onnx
    import onnxruntime

    warnings_ = []
    if not ckpt.recycler_trained:
        warnings_.append("the recyclable module was never trained: alternate will produce poor "
                         "text and verify will accept few drafts")
        log.warning("exporting an untrained recyclable module: %s", warnings_[-1])
    draft_tokens = ckpt.model.recycler.draft_tokens
    return Manifest(
        config=cfg.to_dict(), dtype=options.dtype, opset=options.opset, kv=C.kv_description(dims),
        graphs={name: GraphRecord.from_contract(spec) for name, spec in C.graphs(dims).items()},
        tokenizer="tokenizer.json" if ckpt.tokenizer_json is not None else None,
        generation=ckpt.generation, recycler_trained=ckpt.recycler_trained,
        draft_vocab=None if draft_tokens is None else len(draft_tokens), warnings=tuple(warnings_),
        source={"checkpoint": str(Path(model_path).resolve())},
        versions={"torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__, "recycle_export": _version()},
        validation=validation, files=files, answer_store=ANSWER_STORE if ckpt.answers is not None else None)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recycle-export")
    except PackageNotFoundError:
        return "unknown"
