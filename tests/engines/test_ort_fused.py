"""The fused ONNX Runtime graphs (inplace-kv-v1) against the portable export of the tiny model."""

import pytest

from benchmarks.fused_check import parity, portable_build
from engines.ort_fused import build_fused
from runtime import contract as C
from runtime.artifacts import Artifacts
from runtime.errors import EngineBuildError


@pytest.fixture(scope="module")
def untied_draft_artifacts(tmp_path_factory):
    """A tiny model with an untied LM head and a draft vocabulary: the other head paths."""
    import torch

    from recycle_export.checkpoint import Checkpoint, save_checkpoint
    from recycle_export.export import export
    from runtime.artifacts import GenerationRecord
    from tests.conftest import tiny_model

    model = tiny_model(seed=3, tie_embeddings=False)
    model.recycler.set_draft_tokens(torch.arange(0, 96, 3))
    root = tmp_path_factory.mktemp("untied")
    save_checkpoint(Checkpoint(model, False, GenerationRecord(eos_token_ids=(2,))), root / "ckpt")
    export(root / "ckpt", root / "art")
    return root / "art"


# int4 is compared with the portable graphs quantized the same way (engines.ort_fused.quantize);
# float rounding differences (fused attention) move its int8-quantized activations across
# rounding steps, so the bound is relative to the logits and loose.
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("int4", 5e-2)])
@pytest.mark.parametrize("which", ["tiny_artifacts", "untied_draft_artifacts"])
def test_fused_matches_portable(which, precision, tolerance, request, tmp_path):
    art = Artifacts.load(request.getfixturevalue(which))
    build_fused(art, tmp_path / "fused", precision)
    portable = portable_build(art, tmp_path / "portable", precision)
    reference = {n: portable / f"{n}.onnx" if precision != "fp32" else art.graph_path(n)
                 for n in (C.FULL_STEP, C.RECYCLE_STEP)}
    report = parity(art, tmp_path / "fused", threads=1, ref_paths=reference)
    worst = report["max_abs_diff"]
    diff = max(v for k, v in worst.items() if not k.endswith("argmax_agree"))
    assert diff < tolerance * report["reference_max_abs_logit"], (diff, report["reference_max_abs_logit"], worst)
    assert report["greedy_identical"], report


def test_refuses_an_export_without_weight_map(tiny_artifacts, tmp_path):
    import shutil

    import onnx

    folder = tmp_path / "art"
    shutil.copytree(tiny_artifacts, folder)
    for name in (C.FULL_STEP, C.RECYCLE_STEP):
        proto = onnx.load(str(folder / f"{name}.onnx"))
        del proto.metadata_props[:]
        onnx.save_model(proto, str(folder / f"{name}.onnx"))
    with pytest.raises(EngineBuildError, match="re-run `cli.py export`"):
        build_fused(Artifacts.load(folder, check_hashes=False), tmp_path / "fused")
