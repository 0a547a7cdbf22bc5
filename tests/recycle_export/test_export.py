"""Export: the ONNX files against the contract, ORT vs PyTorch parity, bad input."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from cli import main
from recycle_export.export import ExportOptions, export
from recycle_export.describe import graph_io
from recycle_export.validate import validate_artifacts
from runtime import contract as C
from runtime.errors import ArtifactError, CheckpointError, ValidationError


def _dims(artifacts):
    manifest = json.loads((artifacts / "manifest.json").read_text())
    return C.Dims.from_config(manifest["config"], manifest["dtype"]), manifest


def test_graphs_follow_the_contract(tiny_artifacts):
    dims, _ = _dims(tiny_artifacts)
    assert (dims.n_layers, dims.recycle_layers, dims.n_kv_heads, dims.head_dim) == (2, 1, 2, 16)
    for name, spec in C.graphs(dims).items():
        path = tiny_artifacts / f"{name}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        inputs, outputs = graph_io(path)  # read from the file, not from the exporter
        assert inputs == [(t.name, t.dtype, t.shape) for t in spec.inputs]
        assert outputs == [(t.name, t.dtype, t.shape) for t in spec.outputs]


def test_one_kv_scheme_for_both_graphs(tiny_artifacts):
    dims, _ = _dims(tiny_artifacts)
    layers = {}
    for name in (C.FULL_STEP, C.RECYCLE_STEP):
        inputs, outputs = graph_io(tiny_artifacts / f"{name}.onnx")
        kv_in = [r for r in inputs if r[0].startswith("past_key_values.")]
        kv_out = [r for r in outputs if r[0].startswith("present.")]
        layers[name] = sorted({int(r[0].split(".")[1]) for r in kv_in})
        assert sorted({int(r[0].split(".")[1]) for r in kv_out}) == layers[name]
        for (n_in, dt_in, sh_in), (n_out, dt_out, sh_out) in zip(kv_in, kv_out):
            i = n_in.split(".")[1]
            assert n_in in (f"past_key_values.{i}.key", f"past_key_values.{i}.value")
            assert n_out == n_in.replace("past_key_values", "present")
            assert dt_in == dt_out == "float32"
            assert sh_in == ("batch", 2, "past", 16) and sh_out == ("batch", 2, "total", 16)
    assert layers[C.FULL_STEP] == [0, 1] and layers[C.RECYCLE_STEP] == [2]


def test_manifest_records_validation_and_hashes(tiny_artifacts):
    _, manifest = _dims(tiny_artifacts)
    assert manifest["validation"]["passed"]
    for graph, outputs in manifest["validation"]["max_abs_diff"].items():
        for output, diff in outputs.items():
            assert diff <= 1e-4, (graph, output)
    cases = manifest["validation"]["per_case"][C.FULL_STEP][C.LOGITS]
    assert {"batch2_left_padded_prefill", "step_2_tokens"} <= set(cases)
    assert set(manifest["files"]) == {"full_step.onnx", "recycle_step.onnx"}
    assert manifest["warnings"] and not manifest["recycler_trained"]
    assert manifest["kv"]["base_layers"] == [0, 2] and manifest["kv"]["module_layers"] == [2, 3]
    assert manifest["versions"]["torch"] == torch.__version__


def test_ort_matches_pytorch_on_padded_batch(tiny_artifacts, tiny):
    """Independent of the exporter's own validation: prefill a left-padded batch of 2 with
    num_logits 3 through both graphs, then one 2-token step through the padded caches."""
    full = ort.InferenceSession(str(tiny_artifacts / "full_step.onnx"))
    rec = ort.InferenceSession(str(tiny_artifacts / "recycle_step.onnx"))
    ids = torch.tensor([[5, 17, 3, 88, 41], [0, 0, 60, 2, 33]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    empty = np.zeros((2, 2, 0, 16), np.float32)
    feeds = {"input_ids": ids.numpy(), "position_ids": pos.numpy(), "attention_mask": mask.numpy(),
             "num_logits": np.array([3])}
    got = full.run(None, {**feeds, **{f"past_key_values.{i}.{kv}": empty for i in (0, 1) for kv in ("key", "value")}})
    with torch.no_grad():
        ref = tiny.base_step(ids, pos, mask, tiny.empty_kv(2, batch=2), num_logits=3)
    assert np.abs(got[0] - ref.logits.numpy()).max() <= 1e-4
    assert np.abs(got[1] - ref.hidden.numpy()).max() <= 1e-4

    prev = np.concatenate([np.zeros((2, 1, 64), np.float32), got[1][:, :-1]], axis=1)
    rec_got = rec.run(None, {**feeds, "hidden_states": prev,
                             **{f"past_key_values.2.{kv}": empty for kv in ("key", "value")}})
    with torch.no_grad():
        rec_ref = tiny.recycle_step(ids, torch.from_numpy(prev), pos, mask, tiny.empty_kv(1, batch=2), 3)
    assert np.abs(rec_got[0] - rec_ref.logits.numpy()).max() <= 1e-4

    step_ids = torch.tensor([[7, 9], [7, 9]])
    step_mask = torch.cat([mask, torch.ones(2, 2, dtype=torch.long)], dim=1)
    step_pos = pos[:, -1:] + torch.arange(1, 3)
    step_feeds = {"input_ids": step_ids.numpy(), "position_ids": step_pos.numpy(),
                  "attention_mask": step_mask.numpy(), "num_logits": np.array([2]),
                  **{f"past_key_values.{i // 2}.{('key', 'value')[i % 2]}": t for i, t in enumerate(got[2:])}}
    step_got = full.run(None, step_feeds)
    with torch.no_grad():
        step_ref = tiny.base_step(step_ids, step_pos, step_mask, ref.present, num_logits=2)
    assert np.abs(step_got[0] - step_ref.logits.numpy()).max() <= 1e-4
    assert step_got[2].shape == (2, 2, 7, 16)


def test_float16_export_validates(tiny_checkpoint, tmp_path):
    manifest = export(tiny_checkpoint, tmp_path / "fp16", ExportOptions(dtype="float16"))
    assert manifest.validation["passed"] and manifest.kv["dtype"] == "float16"
    inputs, _ = graph_io(tmp_path / "fp16" / "full_step.onnx")
    assert dict((n, d) for n, d, _ in inputs)["past_key_values.0.key"] == "float16"
    assert max(manifest.validation["max_abs_diff"]["full_step"].values()) > 1e-5  # really float16


def test_external_data(tiny_checkpoint, tmp_path):
    manifest = export(tiny_checkpoint, tmp_path / "ext", ExportOptions(external_data_bytes=0))
    assert "full_step.onnx.data" in manifest.files and manifest.validation["passed"]
    validate_artifacts(tmp_path / "ext")


def test_validation_failure_names_the_output(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "art"
    export(tiny_checkpoint, out)
    # Compare against a different model: the logits must be reported, not waved through.
    from tests.conftest import tiny_model
    from recycle_export.checkpoint import Checkpoint, save_checkpoint

    save_checkpoint(Checkpoint(tiny_model(seed=9), True), tmp_path / "other")
    with pytest.raises(ValidationError, match=r"full_step output 'logits' in case 'prefill': max abs difference"):
        validate_artifacts(out, tmp_path / "other")


def test_refuses_directory_with_unrelated_files(tiny_checkpoint, tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(ArtifactError, match="holds files this project did not write \(thesis.tex\)"):
        export(tiny_checkpoint, tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_bad_options_and_checkpoints(tiny_checkpoint, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "a"),
                                  "--opset", "9"])
    assert result.exit_code == 1 and result.output.strip() == "Error: opset 9 is not supported; choose one in 14..20"
    with pytest.raises(CheckpointError, match="not found"):
        export(tmp_path / "missing", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_interrupted_export_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    import recycle_export.export as exporter  # where export() looks validate_graphs up

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "validate_graphs", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export(tiny_checkpoint, tmp_path / "art")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a staged copy


def test_reexport_replaces_earlier_export(tiny_checkpoint, tmp_path, monkeypatch):
    export(tiny_checkpoint, tmp_path / "art")
    first = json.loads((tmp_path / "art" / "manifest.json").read_text())
    import recycle_export.export as exporter  # where export() looks validate_graphs up

    monkeypatch.setattr(exporter, "validate_graphs", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        export(tiny_checkpoint, tmp_path / "art", ExportOptions(opset=18))
    # The earlier, complete export is untouched.
    assert json.loads((tmp_path / "art" / "manifest.json").read_text()) == first
    monkeypatch.undo()
    assert export(tiny_checkpoint, tmp_path / "art", ExportOptions(opset=18)).opset == 18


def test_reexport_keeps_the_users_files_and_engines(tiny_checkpoint, tmp_path):
    """Only the files the earlier manifest lists are replaced: notes, result folders and the
    engines built inside the export stay (an engine of the earlier graphs is then refused by
    its source hashes)."""
    out = tmp_path / "art"
    export(tiny_checkpoint, out, ExportOptions(external_data_bytes=0))
    (out / "notes.txt").write_text("mine")
    (out / "my_results").mkdir()
    (out / "my_results" / "run1.json").write_text("{}")
    (out / "engines" / "cpu-fp32").mkdir(parents=True)
    (out / "engines" / "cpu-fp32" / "engine.json").write_text("{}")
    manifest = export(tiny_checkpoint, out, ExportOptions(opset=18))
    assert (out / "notes.txt").read_text() == "mine" and (out / "my_results" / "run1.json").is_file()
    assert (out / "engines" / "cpu-fp32" / "engine.json").read_text() == "{}"
    assert not (out / "full_step.onnx.data").exists()  # the earlier export's external data went with it
    assert sorted(p.name for p in out.iterdir()) == sorted([*manifest.files, "manifest.json", "notes.txt",
                                                            "my_results", "engines"])
    assert [p.name for p in tmp_path.iterdir()] == ["art"]
