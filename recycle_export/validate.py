"""Validation: each exported graph under ONNX Runtime (CPU) against the PyTorch model.

Tolerances, per export dtype, on the max abs difference of every output, scaled by the
reference output's magnitude (max(1, max |reference|)) so that large logits are judged
relatively: float32 1e-4 (float32 rounding over a few reorderings of reductions);
float16 2e-2 (float16 keeps ~3 decimal digits; errors compound over layers, and the graph
is compared with the float32 model, not with a float16 one).

The figures also record the largest |x| entering each RMSNorm on these inputs (the float32
model's activations): x^2 overflows float16 past 255.9, which is why the graphs square and
average in float32 (recycle_export/model.py), and how far a model is from that edge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import contextlib
from typing import Iterator

import numpy as np
import torch

from recycle_export.graphs import TORCH_DTYPES, example_inputs, graph_module
from recycle_export.model import RecycleGPT, RMSNorm
from runtime import contract as C
from runtime.artifacts import MANIFEST, Manifest, read_manifest
from runtime.errors import ArtifactError, ValidationError
from runtime.files import sha256

log = logging.getLogger(__name__)

TOLERANCE = {"float32": 1e-4, "float16": 2e-2}

# name -> (batch, new, past, num_logits, left padding of row 1)
CASES = {
    "prefill": (1, 7, 0, 1, 0),
    "step_1_token": (1, 1, 7, 1, 0),
    "step_2_tokens": (1, 2, 7, 2, 0),
    "batch2_left_padded_prefill": (2, 6, 0, 2, 3),
    "batch2_left_padded_step": (2, 2, 6, 2, 3),
}


def _case_inputs(spec: C.GraphContract, case: tuple, dtype: torch.dtype, vocab: int,
                 gen: torch.Generator, wrapper) -> dict[str, torch.Tensor]:
    """Inputs for one case. A step's past is the model's own cache after a prefill of the
    same rows (random tokens; random h for the module), as in decoding: random past
    tensors would put attention where no real cache does."""
    batch, new, past, num_logits, pad = case
    total = past + new
    mask = torch.ones(batch, total, dtype=torch.long)
    mask[1:, :pad] = 0  # row 1 starts with `pad` padding slots; its real positions start at 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    sizes = {C.BATCH: batch, C.NEW: total, C.PAST: 0, C.NUM_LOGITS: num_logits}
    whole = dict(zip(spec.input_names, example_inputs(spec, sizes, torch.float32, vocab, gen)))
    whole[C.ATTENTION_MASK], whole[C.POSITION_IDS] = mask, positions
    feeds = {name: value[:, past:] if name in (C.INPUT_IDS, C.POSITION_IDS, C.HIDDEN_STATES) else value
             for name, value in whole.items()}
    if past:
        prefix = {name: value[:, :past] if name in (C.INPUT_IDS, C.POSITION_IDS, C.HIDDEN_STATES, C.ATTENTION_MASK)
                  else value for name, value in whole.items()}
        prefix[C.NUM_LOGITS_INPUT] = torch.tensor([1])
        with torch.no_grad():
            present = wrapper(*prefix.values())[2:]
        kv_names = [n for n in spec.input_names if n.startswith("past_key_values.")]
        feeds.update(zip(kv_names, present))
    return {name: value.to(dtype) if value.is_floating_point() else value for name, value in feeds.items()}


# x^2 of a larger |x| is beyond float16's largest value, 65504.
FLOAT16_SQUARE_LIMIT = 65504.0 ** 0.5


@contextlib.contextmanager
def norm_input_peaks(model: RecycleGPT) -> Iterator[dict[str, float]]:
    """While open, the largest |x| each RMSNorm of `model` has received, by module name."""
    peaks: dict[str, float] = {}

    def record(name):
        def hook(module, args):
            peaks[name] = max(peaks.get(name, 0.0), float(args[0].detach().abs().max()))
        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules()
               if isinstance(m, RMSNorm)]
    try:
        yield peaks
    finally:
        for handle in handles:
            handle.remove()


def validate_graphs(folder: Path, model: RecycleGPT, dims: C.Dims) -> dict:
    """Run both graphs in `folder` and the float32 PyTorch `model` on the same inputs.

    Returns the figures for the manifest: per graph, per output, per case, the max abs
    difference; the tolerance; whether all passed and, if not, which output failed; the
    largest |x| entering each RMSNorm, and whether its square would overflow float16.
    """
    import onnxruntime as ort

    tol = TOLERANCE[dims.dtype]
    figures: dict = {}
    failures = []
    hashes: dict[str, str] = {}
    with norm_input_peaks(model) as peaks:
        for name, spec in C.graphs(dims).items():
            figures[name] = _validate_graph(ort, folder, name, spec, model, dims, tol, hashes, failures)
    largest = max(peaks.values(), default=0.0)
    return {"tolerance": {"relative_to_max_abs_reference": tol, "dtype": dims.dtype},
            "max_abs_diff": {g: {o: max(c.values()) for o, c in outs.items()} for g, outs in figures.items()},
            "per_case": figures, "passed": not failures, "failures": failures, "sha256": hashes,
            "norm_input_max_abs": dict(sorted(peaks.items())),
            "norm_input_float16_square_overflows": largest > FLOAT16_SQUARE_LIMIT}


def _validate_graph(ort, folder: Path, name: str, spec: C.GraphContract, model: RecycleGPT, dims: C.Dims,
                    tol: float, hashes: dict[str, str], failures: list[str]) -> dict[str, dict[str, float]]:
    """One graph's figures: per output, per case, the max abs difference (failures appended)."""
    session = _session(ort, Path(folder) / f"{name}.onnx", hashes)
    wrapper = graph_module(model, name)
    per_output: dict[str, dict[str, float]] = {out: {} for out in spec.output_names}
    gen = torch.Generator().manual_seed(0)
    for case_name, case in CASES.items():
        feeds = _case_inputs(spec, case, TORCH_DTYPES[dims.dtype], dims.vocab_size, gen, wrapper)
        with torch.no_grad():
            expected = wrapper(*(t.float() if t.is_floating_point() else t for t in feeds.values()))
        got = session.run(None, {k: v.numpy() for k, v in feeds.items()})
        for out_name, ref, actual in zip(spec.output_names, expected, got):
            ref = ref.double().numpy()
            diff = float(np.abs(actual.astype(np.float64) - ref).max())
            per_output[out_name][case_name] = diff
            allowed = tol * max(1.0, float(np.abs(ref).max()))
            if not diff <= allowed:  # also catches NaN
                failures.append(f"{name} output {out_name!r} in case {case_name!r}: max abs "
                                f"difference {diff:.3g} exceeds {allowed:.3g}")
    return per_output


def _session(ort, path: Path, hashes: dict[str, str]):
    """A CPU session over the graph at `path`, recording in `hashes` the sha256 of the bytes
    it was built from: the graph is read once and the session made from those bytes, so the
    figures belong to exactly the hashed graph. A graph with external data is loaded from
    its path, and its files are hashed before and after.

    Raises: ArtifactError when a file changed while it was loaded."""
    providers = ["CPUExecutionProvider"]
    data = path.with_name(path.name + ".data")
    if not data.exists():
        graph = path.read_bytes()
        hashes[path.name] = hashlib.sha256(graph).hexdigest()
        return ort.InferenceSession(graph, providers=providers)
    before = {p.name: sha256(p) for p in (path, data)}
    session = ort.InferenceSession(str(path), providers=providers)
    if {p.name: sha256(p) for p in (path, data)} != before:
        raise ArtifactError(f"{path} changed while it was being validated; run validation again")
    hashes.update(before)
    return session


def check_passed(validation: dict) -> None:
    """Raises: ValidationError naming the first failing output."""
    if not validation["passed"]:
        more = len(validation["failures"]) - 1
        raise ValidationError(validation["failures"][0] + (f" (and {more} more)" if more else ""))


def validate_artifacts(folder: Path, model_path: Path | None = None) -> Manifest:
    """Validate an export folder again (against `model_path`, by default the checkpoint it
    was exported from) and record the new figures in its manifest.

    Raises:
        ArtifactError: the folder is not a complete export.
        CheckpointError: the checkpoint does not load.
        ValidationError: an output disagrees beyond tolerance (figures recorded first).
    """
    from recycle_export.checkpoint import load_checkpoint

    folder = Path(folder)
    manifest = read_manifest(folder)  # every file's hash checked first
    source = model_path or manifest.source.get("checkpoint")
    if not isinstance(source, str) and model_path is None:
        raise ArtifactError(f"{folder / MANIFEST} names no source checkpoint; pass --model CKPT")
    model = load_checkpoint(source).model
    validation = validate_graphs(folder, model, manifest.dims)
    changed = [f for f, digest in validation["sha256"].items() if manifest.files.get(f) != digest]
    if changed:
        raise ArtifactError(f"{folder / changed[0]} is not the file that was exported (its sha256 differs from "
                            f"manifest.json's); re-run `cli.py export`")
    manifest = dataclasses.replace(manifest, validation=validation)
    manifest.write(folder)
    check_passed(manifest.validation)
    return manifest
