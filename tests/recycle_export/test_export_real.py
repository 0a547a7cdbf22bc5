"""SmolLM2-135M-Instruct exports and validates (the figures land in the manifest)."""

import json

import pytest

pytestmark = pytest.mark.real_model


def test_smollm_export_validates(smollm_artifacts):
    manifest = json.loads((smollm_artifacts / "manifest.json").read_text())
    assert manifest["validation"]["passed"]
    logits = manifest["validation"]["max_abs_diff"]["full_step"]["logits"]
    assert 0 < logits <= 2e-3  # 1e-4 x logits of magnitude ~20
    # The tied LM head is stored once per graph (Gemm transB on the embedding's matrix).
    size = (smollm_artifacts / "full_step.onnx").stat().st_size
    assert size < 134.6e6 * 4 * 1.01
