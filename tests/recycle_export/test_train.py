"""train-recycler on a tiny model: learning, resuming, and its checks."""

import json

import pytest

from recycle_export.checkpoint import load_checkpoint
from recycle_export.train import TrainOptions, train_recycler
from runtime.errors import CheckpointError, ConfigError

# 12 prompts from each of the two template sets; a draft vocabulary of half the 96 tokens.
OPTIONS = TrainOptions(train_prompts=12, heldout_prompts=4, max_new_tokens=16, epochs=3, batch_size=4,
                       lr=3e-3, checkpoint_every=4, threads=2, draft_vocab=48)


def test_training_learns_and_writes_a_trained_checkpoint(tiny_chat_checkpoint, tmp_path):
    report = train_recycler(tiny_chat_checkpoint, tmp_path / "out", OPTIONS)
    before, after = report["heldout_before"], report["heldout_after"]
    assert after["cross_entropy"] < before["cross_entropy"] - 0.2
    assert after["top1_agreement"] > before["top1_agreement"]
    assert set(after["sets"]) == {"instructions", "requests"}
    loaded = load_checkpoint(tmp_path / "out")
    assert loaded.recycler_trained
    assert len(loaded.model.recycler.draft_tokens) == 48
    data = json.loads((tmp_path / "out" / "training.json").read_text())["data"]
    assert data["train_sequences"] == {"instructions": 12, "requests": 12}


def test_interrupted_training_resumes(tiny_chat_checkpoint, tmp_path, monkeypatch, caplog):
    import recycle_export.train as train

    calls = {"n": 0}
    real = train.recycler_loss

    def stop_after_six(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "recycler_loss", stop_after_six)
    with pytest.raises(KeyboardInterrupt):
        train_recycler(tiny_chat_checkpoint, tmp_path / "out", OPTIONS)
    assert not (tmp_path / "out").exists()  # nothing that looks finished
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="recycle_export.train"):
        resumed = train_recycler(tiny_chat_checkpoint, tmp_path / "out", OPTIONS)
    assert "resuming training at step 4 of 18" in caplog.text  # the last state saved (every 4 steps)
    fresh = train_recycler(tiny_chat_checkpoint, tmp_path / "again", OPTIONS)
    assert resumed["heldout_after"]["top1_agreement"] == pytest.approx(fresh["heldout_after"]["top1_agreement"], abs=0.05)


def test_work_folder_with_data_of_other_options_is_refused(tiny_chat_checkpoint, tmp_path):
    (tmp_path / "out.work").mkdir()
    (tmp_path / "out.work" / "data.json").write_text(json.dumps({"max_new_tokens": 99, "seed": 0}))
    with pytest.raises(CheckpointError, match="holds data generated with"):
        train_recycler(tiny_chat_checkpoint, tmp_path / "out", OPTIONS)


def test_other_training_options_reuse_the_data(tiny_chat_checkpoint, tmp_path, caplog):
    import dataclasses

    train_recycler(tiny_chat_checkpoint, tmp_path / "out", OPTIONS)
    shards = sorted((tmp_path / "out.work").glob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    with caplog.at_level("INFO", logger="recycle_export.train"):
        train_recycler(tiny_chat_checkpoint, tmp_path / "out", dataclasses.replace(OPTIONS, epochs=1))
    assert "starting training afresh" in caplog.text
    assert [p.stat().st_mtime_ns for p in shards] == stamps  # no answer generated twice


def test_needs_a_chat_template(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="needs a tokenizer.json and a chat template"):
        train_recycler(tiny_checkpoint, tmp_path / "out", OPTIONS)


def test_invalid_options():
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        TrainOptions(epochs=0)
    with pytest.raises(ConfigError, match="logit_fraction must be in"):
        TrainOptions(logit_fraction=0.0)
    with pytest.raises(ConfigError, match="generation_dtype must be one of"):
        TrainOptions(generation_dtype="int8")
    with pytest.raises(ConfigError, match="draft_vocab must be >= 0"):
        TrainOptions(draft_vocab=-1)
    with pytest.raises(ConfigError, match="module_layers must be >= 1"):
        TrainOptions(module_layers=0)
    with pytest.raises(ConfigError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        TrainOptions(device="gpu")
    with pytest.raises(ConfigError, match="device must be"):
        TrainOptions(device="cuda:x")


def test_a_cuda_device_is_refused_where_pytorch_sees_none(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device 'cuda': this PyTorch sees no CUDA device"):
        TrainOptions(device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    TrainOptions(device="cuda:0")
    with pytest.raises(ConfigError, match=r"device 'cuda:1': this machine has 1 CUDA device\(s\)"):
        TrainOptions(device="cuda:1")


def test_draft_vocabulary_is_the_most_frequent_answer_tokens():
    import torch

    from recycle_export.distill_data import Sequence
    from recycle_export.train import draft_vocabulary

    def seq(tokens, prompt_len):
        return Sequence(torch.tensor(tokens), torch.zeros(len(tokens) - 1, 4), prompt_len)

    # Prompt tokens (9, 9, 9) do not count; 7 is most frequent, 1 and 4 tie (the lower id wins).
    seqs = [seq([9, 9, 9, 7, 4, 7], 3), seq([9, 7, 1, 5], 1)]
    assert draft_vocabulary(seqs, 10, 3).tolist() == [1, 4, 7]
    assert draft_vocabulary(seqs, 10, 0) is None and draft_vocabulary(seqs, 10, 10) is None


def test_loss_terms_each_train_the_module(tiny_chat_checkpoint):
    """Each term of the loss adds to it, and each configuration reaches the module's weights."""
    import torch

    from recycle_export.distill_data import generate_sequences
    from recycle_export.train import init_recycler_from_base, recycler_loss

    model = load_checkpoint(tiny_chat_checkpoint).model
    init_recycler_from_base(model)
    seqs = generate_sequences(model, [[1, 2, 3], [4, 5]], 6, stop_ids=())
    losses = {}
    for weights in ({"feature_weight": 0.0, "distill_weight": 0.0}, {"feature_weight": 1.0, "distill_weight": 0.0},
                    {"feature_weight": 0.0, "distill_weight": 1.0}):
        model.zero_grad()
        loss = recycler_loss(model, seqs, TrainOptions(**weights), torch.Generator().manual_seed(0))
        loss.backward()
        assert model.recycler.fuse.weight.grad.abs().sum() > 0
        losses[tuple(weights.values())] = loss.item()
    tokens_only = losses[(0.0, 0.0)]
    assert tokens_only > 0 and losses[(1.0, 0.0)] > tokens_only and losses[(0.0, 1.0)] > tokens_only


def test_training_goes_on_from_a_trained_module(tiny_chat_checkpoint, tmp_path):
    import dataclasses

    first = train_recycler(tiny_chat_checkpoint, tmp_path / "first", OPTIONS)
    shards = sorted((tmp_path / "first.work").glob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    # In place (--model and --out the same checkpoint), so that the data shards are reused.
    again = train_recycler(tmp_path / "first", tmp_path / "first", dataclasses.replace(OPTIONS, init="checkpoint"))
    # It started where the first ended (draft vocabulary included).
    assert again["heldout_before"]["top1_agreement"] == pytest.approx(first["heldout_after"]["top1_agreement"])
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    assert load_checkpoint(tmp_path / "first").recycler_trained
    with pytest.raises(CheckpointError, match="no trained recyclable module"):
        train_recycler(tiny_chat_checkpoint, tmp_path / "none", dataclasses.replace(OPTIONS, init="checkpoint"))


def test_a_grown_module_is_the_same_function(tiny_chat_checkpoint):
    """Each added layer passes its input through (zeroed output projections), so the module's
    logits and state are unchanged, and its trained layer keeps its weights."""
    import torch

    from recycle_export.train import set_recycle_layers

    model = load_checkpoint(tiny_chat_checkpoint).model
    torch.manual_seed(0)
    x = torch.randint(0, model.cfg.vocab_size, (2, 7))
    h = torch.randn(2, 7, model.cfg.dim)
    positions, mask = torch.arange(7).expand(2, 7), torch.ones(2, 7, dtype=torch.long)
    first = {k: v.clone() for k, v in model.recycler.layers[0].state_dict().items()}

    def step():
        with torch.no_grad():
            return model.recycle_step(x, h, positions, mask, model.empty_kv(model.cfg.recycle_layers, 2), 7)

    before = step()
    set_recycle_layers(model, 3)
    after = step()
    assert model.cfg.recycle_layers == 3 and len(after.present) == 3
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=0)
    torch.testing.assert_close(after.hidden, before.hidden, rtol=0, atol=0)
    for name, value in model.recycler.layers[0].state_dict().items():
        assert torch.equal(value, first[name]), name
    assert model.recycler.layers[2].mlp.gate_proj.weight.abs().sum() > 0  # a copy, not a fresh layer


def test_training_grows_the_module_and_the_two_layer_export_validates(tiny_chat_checkpoint, tmp_path):
    """--module-layers 2 from a trained 1-layer module: training starts where that module
    ended, the checkpoint holds 2 module layers, and its export validates against PyTorch."""
    import dataclasses

    from recycle_export.export import export

    first = train_recycler(tiny_chat_checkpoint, tmp_path / "first", dataclasses.replace(OPTIONS, epochs=1))
    grown = dataclasses.replace(OPTIONS, epochs=1, init="checkpoint", module_layers=2)
    again = train_recycler(tmp_path / "first", tmp_path / "first", grown)  # in place: reuses the data
    assert again["heldout_before"]["top1_agreement"] == pytest.approx(first["heldout_after"]["top1_agreement"])
    assert again["heldout_before"]["cross_entropy"] == pytest.approx(first["heldout_after"]["cross_entropy"])
    assert load_checkpoint(tmp_path / "first").config.recycle_layers == 2
    manifest = export(tmp_path / "first", tmp_path / "artifacts")
    assert manifest.config["recycle_layers"] == 2
    with pytest.raises(ConfigError, match="can grow it but not cut it to 1"):
        train_recycler(tmp_path / "first", tmp_path / "cut", dataclasses.replace(grown, module_layers=1))


def test_chain_training_states_equal_a_chain_run_step_by_step(tiny_chat_checkpoint):
    """Pass k of the teacher-forced unrolled module (one batched call) gives, at every
    position, the very state the k-th draft of a chain gets when the module runs step by
    step on its cache as the runtime does: first draft from the base's h, the next ones
    from the module's own g. Right-padded rows included."""
    import torch

    from recycle_export.train import _module_states

    # float32 sums in another order (batched vs one position at a time) differ by ~1e-5
    # after the final norm; a wrong key in the chain's attention differs by ~1e-1.
    tol = {"atol": 1e-4, "rtol": 1e-4}
    model = load_checkpoint(tiny_chat_checkpoint).model.eval()
    cfg = model.cfg
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (2, 9))
    h = torch.randn(2, 9, cfg.dim)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # row 1 holds 6 positions
    with torch.no_grad():
        states = _module_states(model, x, h, mask, 3)
        for row, length in ((0, 9), (1, 6)):
            for p in range(length - 2):  # a chain started after position p: drafts at p, p + 1, p + 2
                xs, hs = x[row:row + 1, :p + 1], h[row:row + 1, :p + 1]
                prev = torch.cat([torch.zeros_like(hs[:, :1]), hs[:, :-1]], dim=1)
                ones = torch.ones(1, p + 1, dtype=torch.long)
                step = model.recycle_step(xs, prev, torch.arange(p + 1)[None], ones,
                                          model.empty_kv(cfg.recycle_layers), 1)
                g, cache = step.hidden[:, -1:], step.present
                torch.testing.assert_close(g[0, 0], states[0][row, p], **tol)
                for k in (1, 2):  # the draft after: x at p + k with the module's own g
                    step = model.recycle_step(x[row:row + 1, p + k:p + k + 1], g, torch.tensor([[p + k]]),
                                              torch.ones(1, p + k + 1, dtype=torch.long), cache, 1)
                    g, cache = step.hidden, step.present
                    torch.testing.assert_close(g[0, 0], states[k][row, p + k], **tol)


def test_chain_training_runs_and_reports_each_draft_position(tiny_chat_checkpoint, tmp_path):
    import dataclasses

    report = train_recycler(tiny_chat_checkpoint, tmp_path / "out", dataclasses.replace(OPTIONS, unroll=3))
    before, after = report["heldout_before"], report["heldout_after"]
    assert after["cross_entropy"] < before["cross_entropy"] - 0.2
    assert len(after["position_agreement"]) == 3 and after["position_agreement"][0] == after["top1_agreement"]
    assert 0 <= after["chain_accepted"] <= 3
    # A chain accepts at most the first draft's agreement plus what the later drafts add.
    assert after["chain_accepted"] >= after["top1_agreement"] - 1e-9
    for figures in after["sets"].values():
        assert len(figures["position_agreement"]) == 3


@pytest.fixture(scope="module")
def tiny_chat_artifacts(tiny_chat_checkpoint, tmp_path_factory):
    from recycle_export.export import export

    out = tmp_path_factory.mktemp("tiny_chat_export") / "artifacts"
    export(tiny_chat_checkpoint, out)
    return out


def test_engine_answers_equal_pytorch_answers(tiny_chat_checkpoint, tiny_chat_artifacts):
    """Answers written by the ONNX Runtime engine: the tokens PyTorch's float32 base writes
    (the stop token included), the same h at every position."""
    import torch

    from recycle_export.distill_data import engine_sequences, generate_sequences
    from runtime.generator import Generator

    model = load_checkpoint(tiny_chat_checkpoint).model
    prompts = [[33, 34, 35, 36], [40, 41], [50, 60, 70]]
    free = generate_sequences(model, prompts, 8, stop_ids=())
    stop = int(free[0].tokens[4 + 3])  # the 4th answer token of the first prompt stops it there
    with Generator.from_artifacts(tiny_chat_artifacts) as gen:
        ours = engine_sequences(gen, prompts, 8, (stop,), workers=2)  # in order, whatever finishes first
    theirs = generate_sequences(model, prompts, 8, (stop,))
    assert ours[0].tokens[-1] == stop and len(ours[0].tokens) == 4 + 4
    for a, b in zip(ours, theirs):
        assert a.tokens.tolist() == b.tokens.tolist() and a.prompt_len == b.prompt_len
        torch.testing.assert_close(a.hidden.float(), b.hidden.float(), atol=2e-3, rtol=2e-3)  # float16 storage


def test_answers_engine_of_another_base_is_refused(tiny_chat_checkpoint, tiny_artifacts, tmp_path):
    import dataclasses

    options = dataclasses.replace(OPTIONS, answers_artifacts=str(tiny_artifacts))
    with pytest.raises(CheckpointError, match="was not built from this base"):
        train_recycler(tiny_chat_checkpoint, tmp_path / "out", options)


def test_training_tensors_follow_the_model_onto_another_device(tiny_chat_checkpoint):
    """--device cuda cannot run here; the meta device stands in for it: any tensor the model
    or the training's module passes create on the CPU instead of beside the model's weights
    makes an operation fail ("Tensor on device cpu is not on the expected device meta")."""
    import torch

    from recycle_export.train import _module_states

    model = load_checkpoint(tiny_chat_checkpoint).model
    model.recycler.set_draft_tokens(torch.arange(0, 96, 2))
    model.to("meta")
    b, t, cfg = 2, 5, model.cfg
    x = torch.zeros(b, t, dtype=torch.long, device="meta")
    mask = torch.ones(b, t, dtype=torch.long, device="meta")
    h = torch.zeros(b, t, cfg.dim, device="meta")
    states = _module_states(model, x, h, mask, passes=3)
    assert [tuple(g.shape) for g in states] == [(b, t, cfg.dim)] * 3
    positions = torch.arange(t, device="meta").expand_as(x)
    base = model.base_step(x, positions, mask, model.empty_kv(cfg.n_layers, b), num_logits=2)
    assert base.logits.device.type == "meta" and base.logits.shape == (b, 2, cfg.vocab_size)
    module = model.recycle_step(x, h, positions, mask, model.empty_kv(cfg.recycle_layers, b), num_logits=2)
    assert module.logits.shape == (b, 2, cfg.vocab_size)
