"""Checkpoint round trip and one clear error per kind of bad checkpoint."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from recycle_export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from runtime.artifacts import GenerationRecord
from recycle_export.config import ModelConfig
from runtime.errors import CheckpointError, ConfigError
from tests.conftest import TINY


@pytest.fixture
def saved(tiny, tmp_path):
    out = tmp_path / "ckpt"
    save_checkpoint(Checkpoint(tiny, True, GenerationRecord(eos_token_ids=(2,))), out)
    return out


def test_round_trip(tiny, saved):
    loaded = load_checkpoint(saved)
    assert loaded.config == tiny.cfg and loaded.recycler_trained
    assert loaded.generation.eos_token_ids == (2,)
    for (name, a), b in zip(tiny.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert "lm_head.weight" not in load_file(saved / "base.safetensors")  # tied: stored once


def _rewrite(file, edit):
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file)


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.pop("layers.1.mlp.up_proj.weight"), r"missing tensor 'layers.1.mlp.up_proj.weight' \(expected shape \(128, 64\)\)"),
    (lambda t: t.update(extra=torch.zeros(3)), r"unexpected tensor 'extra' with shape \(3,\)"),
    (lambda t: t.update({"norm.weight": torch.zeros(65)}), r"'norm.weight' has shape \(65,\), expected \(64,\)"),
    (lambda t: t.update({"norm.weight": torch.zeros(64, dtype=torch.int32)}), r"'norm.weight' has dtype torch.int32, expected a floating-point"),
])
def test_bad_tensors(saved, edit, message):
    _rewrite(saved / "base.safetensors", edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved)


def test_truncated_file(saved):
    file = saved / "recycler.safetensors"
    file.write_bytes(file.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="recycler.safetensors: cannot read safetensors file, truncated"):
        load_checkpoint(saved)


@pytest.mark.parametrize("field,value,message", [
    ("n_heads", 0, "'n_heads' must be a positive integer, got 0"),
    ("n_kv_heads", 3, r"'n_heads' \(4\) must be a multiple of 'n_kv_heads' \(3\)"),
    ("rope_theta", -1.0, "'rope_theta' must be a positive number"),
    ("dim", "64", "'dim' must be a positive integer, got '64'"),
    ("colour", "red", r"unknown config field\(s\) \['colour'\]"),
])
def test_invalid_config(saved, field, value, message):
    config = json.loads((saved / "config.json").read_text())
    config[field] = value
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        load_checkpoint(saved)


def test_config_not_json(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_checkpoint(saved)


def test_pickled_weights_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(CheckpointError, match="pickled weights.*never unpickled.*save_file"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="pickled weights"):
        load_checkpoint(tmp_path / "pytorch_model.bin")


def test_hf_directory_problems(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ConfigError, match="model_type 'gpt2' is not supported"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(ConfigError, match="missing required config field 'vocab_size'"):
        load_checkpoint(tmp_path)


def test_save_refuses_foreign_directory(tiny, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="holds files this project did not write \(notes.txt\)"):
        save_checkpoint(Checkpoint(tiny, False), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_model_config_derives_head_dim():
    assert ModelConfig(**TINY).head_dim == 16
    assert ModelConfig(**{**TINY, "head_dim": 32}).head_dim == 32


def test_attach_and_save_recycler(tiny, tmp_path):
    from recycle_export.checkpoint import attach_recycler, save_recycler
    from tests.conftest import tiny_model

    save_recycler(tiny, tmp_path / "module.safetensors")
    other = Checkpoint(tiny_model(seed=7), False)
    attach_recycler(other, tmp_path / "module.safetensors")
    assert other.recycler_trained
    for a, b in zip(tiny.recycler.state_dict().values(), other.model.recycler.state_dict().values()):
        assert torch.equal(a.half().float(), b)  # stored as float16
    wider = Checkpoint(tiny_model(dim=128, n_heads=4, n_kv_heads=2), False)
    with pytest.raises(CheckpointError, match=r"'fuse.weight' has shape \(64, 128\), expected \(128, 256\)"):
        attach_recycler(wider, tmp_path / "module.safetensors")
    with pytest.raises(CheckpointError, match="recyclable module .* not found"):
        attach_recycler(other, tmp_path / "missing.safetensors")


def test_draft_vocabulary_scores_only_its_tokens_and_is_saved(tmp_path):
    """With draft tokens, the module's logits equal the full LM head's on those tokens and
    are MASKED_LOGIT elsewhere; checkpoints and module files keep the tokens."""
    from recycle_export.checkpoint import attach_recycler, save_recycler
    from recycle_export.model import MASKED_LOGIT
    from tests.conftest import tiny_model

    model = tiny_model(seed=5)
    ids, past = torch.tensor([[4, 9, 30]]), model.empty_kv(1)
    args = (ids, torch.randn(1, 3, TINY["dim"]), torch.arange(3)[None], torch.ones(1, 3, dtype=torch.int64), past)
    full = model.recycle_step(*args, num_logits=3).logits
    tokens = torch.arange(0, TINY["vocab_size"], 3)
    model.recycler.set_draft_tokens(tokens)
    draft = model.recycle_step(*args, num_logits=3).logits
    assert torch.allclose(draft[..., tokens], full[..., tokens], atol=1e-5)
    outside = torch.ones(TINY["vocab_size"], dtype=torch.bool)
    outside[tokens] = False
    assert (draft[..., outside] == MASKED_LOGIT).all()

    save_checkpoint(Checkpoint(model, True), tmp_path / "ckpt")
    assert torch.equal(load_checkpoint(tmp_path / "ckpt").model.recycler.draft_tokens, tokens)
    save_recycler(model, tmp_path / "module.safetensors")
    other = Checkpoint(tiny_model(seed=7), False)
    attach_recycler(other, tmp_path / "module.safetensors")
    assert torch.equal(other.model.recycler.draft_tokens, tokens)

    for bad, message in ((torch.tensor([5, 3]), "sorted distinct ids"), (torch.tensor([3, 96]), "sorted distinct ids"),
                         (torch.tensor([1.0, 2.0]), "1-D integer tensor")):
        save_file({**load_file(tmp_path / "module.safetensors"), "draft_tokens": bad}, tmp_path / "bad.safetensors")
        with pytest.raises(CheckpointError, match=message):
            attach_recycler(other, tmp_path / "bad.safetensors")


def test_resave_keeps_the_users_files(tiny, tmp_path):
    out = tmp_path / "ckpt"
    save_checkpoint(Checkpoint(tiny, False), out)
    (out / "notes.txt").write_text("mine")
    (out / "my_results").mkdir()
    save_checkpoint(Checkpoint(tiny, True), out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "my_results").is_dir()
    assert load_checkpoint(out).recycler_trained
