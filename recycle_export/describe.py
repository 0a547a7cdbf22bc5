"""A readable description of an artifact folder, read from the ONNX files themselves."""

from __future__ import annotations

from pathlib import Path

from runtime import contract as C
from runtime.artifacts import read_manifest
from runtime.drafts import read_answer_store


def graph_io(path: Path) -> tuple[list[tuple], list[tuple]]:
    """(name, dtype, shape) of every input and output, as the ONNX file declares them."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values):
        rows = []
        for v in values:
            t = v.type.tensor_type
            shape = tuple(d.dim_param or d.dim_value for d in t.shape.dim)
            rows.append((v.name, C.dtype_name(t.elem_type, "onnx"), shape))
        return rows

    return describe(graph.input), describe(graph.output)


def describe(folder: Path) -> str:
    """Raises: ArtifactError when the folder is not a complete, unchanged export."""
    folder = Path(folder)
    m = read_manifest(folder)
    cfg = m.config
    lines = [f"{folder}: {m.format} v{m.format_version}, dtype {m.dtype}, opset {m.opset}",
             f"model: {cfg['n_layers']} base layers + {cfg['recycle_layers']} module layer(s), dim {cfg['dim']}, "
             f"heads {cfg['n_heads']}/{cfg['n_kv_heads']} kv, vocab {cfg['vocab_size']}, "
             f"max_seq_len {cfg['max_seq_len']}, recycler trained: {m.recycler_trained}, module drafts from "
             + (f"{m.draft_vocab} tokens" if m.draft_vocab else "the whole vocabulary")]
    family = [text for key, text in (("qkv_bias", "q/k/v biases"), ("qk_norm", "q/k norms")) if cfg.get(key)]
    if cfg.get("rope_scaling"):
        family.append(f"rope {cfg['rope_scaling']['rope_type']}")
    if cfg.get("sliding_window"):
        family.append(f"sliding window {cfg['sliding_window']}")
    lines.append("layers: LLaMA" + (" with " + ", ".join(family) if family else ""))
    kv = m.kv
    lines.append(f"KV ({kv['contract']}): layout {kv['layout']}, {kv['dtype']}, base layers "
                 f"{kv['base_layers'][0]}..{kv['base_layers'][1] - 1}, module layers "
                 f"{kv['module_layers'][0]}..{kv['module_layers'][1] - 1}")
    for name, graph in m.graphs.items():
        inputs, outputs = graph_io(folder / graph.file)
        size = sum(p.stat().st_size for p in folder.glob(f"{graph.file}*"))
        lines.append(f"{graph.file} ({size / 2**20:.1f} MiB)")
        for kind, rows in (("in ", inputs), ("out", outputs)):
            for n, dtype, shape in rows:
                lines.append(f"  {kind} {n:<28} {dtype:<8} {list(shape)}")
    if m.answer_store:
        store = read_answer_store(folder / m.answer_store, cfg["vocab_size"])
        lines.append(f"answer store (verify's drafts): {m.answer_store}, {len(store)} positions")
    v = m.validation
    lines.append(f"validation: {'passed' if v['passed'] else 'FAILED'} (tolerance "
                 f"{v['tolerance']['relative_to_max_abs_reference']:g} x max(1, max |reference|))")
    for graph, outs in v["max_abs_diff"].items():
        for out, diff in outs.items():
            lines.append(f"  {graph} {out:<28} {diff:.3e}")
    for warning in m.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
