"""Each supported family against transformers on the same tiny random weights, loaded from a
sharded Hugging Face directory and from a GGUF file; then exported, and run by the runtime
token for token against the reference decoder. `pytest -s -k parity` prints the figures."""

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

from recycle_export.checkpoint import load_checkpoint  # noqa: E402
from runtime.errors import ConfigError  # noqa: E402
from tests.families import FAMILIES, GGUF_ARCH, hf_model, save_hf, write_gguf  # noqa: E402

TOL = 1e-4
PROMPT, STEPS = 12, (1, 2)  # prefill 12 positions, then cached steps of 1 and 2 tokens


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """family -> (transformers model, its Hugging Face directory)."""
    logging.getLogger("recycle_export").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("families")
    return {family: (model, save_hf(model, root / family))
            for family in FAMILIES for model in [hf_model(family)]}


def parity(hf, ours) -> tuple[float, float]:
    """Max |logit difference| of a prefill and of the cached steps after it."""
    ids = torch.randint(0, 96, (1, PROMPT + sum(STEPS)), generator=torch.Generator().manual_seed(1))
    cache = transformers.DynamicCache(config=hf.config)
    with torch.no_grad():
        expected = hf(ids[:, :PROMPT], past_key_values=cache, use_cache=True).logits
        out = ours.base_step(ids[:, :PROMPT], torch.arange(PROMPT)[None], torch.ones(1, PROMPT, dtype=torch.long),
                             ours.empty_kv(ours.cfg.n_layers), num_logits=PROMPT)
        assert expected.abs().max() > 1.0, "logits too small for the comparison to mean much"
        prefill = float((out.logits - expected).abs().max())
        step, start, past = 0.0, PROMPT, out.present
        for size in STEPS:
            chunk = ids[:, start:start + size]
            hf_step = hf(chunk, past_key_values=cache, use_cache=True).logits
            out = ours.base_step(chunk, torch.arange(start, start + size)[None],
                                 torch.ones(1, start + size, dtype=torch.long), past, num_logits=size)
            step, start, past = max(step, float((out.logits - hf_step).abs().max())), start + size, out.present
    return prefill, step


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_hf_directory(family_dirs, family):
    hf, folder = family_dirs[family]
    ours = load_checkpoint(folder).model
    prefill, step = parity(hf, ours)
    print(f"\n{family} (HF directory): max |logit diff| prefill {prefill:.2e}, cached step {step:.2e}")
    assert prefill <= TOL and step <= TOL


@pytest.mark.parametrize("family", GGUF_ARCH)
def test_parity_gguf(family_dirs, family, tmp_path):
    from recycle_export.gguf_import import import_gguf

    hf = family_dirs[family][0]
    ours = import_gguf(write_gguf(hf, family, tmp_path / f"{family}.gguf")).model
    hf_cfg = load_checkpoint(family_dirs[family][1]).config
    for field in ("qkv_bias", "qk_norm", "tie_embeddings", "sliding_window", "max_seq_len", "head_dim"):
        assert getattr(ours.cfg, field) == getattr(hf_cfg, field), field
    prefill, step = parity(hf, ours)
    print(f"\n{family} (GGUF {GGUF_ARCH[family]}): max |logit diff| prefill {prefill:.2e}, cached step {step:.2e}")
    assert prefill <= TOL and step <= TOL


def test_family_fields(family_dirs):
    cfgs = {family: load_checkpoint(folder).config for family, (_, folder) in family_dirs.items()}
    assert cfgs["qwen2"].qkv_bias and not cfgs["qwen3"].qkv_bias
    assert cfgs["qwen3"].qk_norm and not cfgs["llama3"].qk_norm
    assert cfgs["llama3"].rope_scaling["rope_type"] == "llama3" and cfgs["llama3"].tie_embeddings
    assert cfgs["phi3"].rope_scaling["rope_type"] == "longrope" and cfgs["phi3"].max_seq_len == 64
    assert cfgs["mistral"].sliding_window == 64 and cfgs["mistral"].max_seq_len == 64


def _hf_config(family: str, **changes) -> dict:
    config = hf_model(family).config.to_dict()
    config.update(changes)
    return config


@pytest.mark.parametrize("family, changes, message", [
    ("qwen3", {"model_type": "qwen3_moe", "num_experts": 8}, "model_type 'qwen3_moe' is not supported"),
    ("qwen2", {"num_experts": 8}, "config field 'num_experts' is 8"),
    ("llama3", {"final_logit_softcapping": 30.0}, "config field 'final_logit_softcapping'"),
    ("llama3", {"attention_bias": True}, "config field 'attention_bias' is true"),
    ("llama3", {"mlp_bias": True}, "config field 'mlp_bias'"),
    ("llama3", {"hidden_act": "gelu"}, "config field 'hidden_act' is 'gelu'"),
    ("llama3", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
     "config field 'rope_type' is 'yarn'"),
    ("llama3", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0}},
     "config field 'rope_type' is 'dynamic'"),
    ("phi3", {"partial_rotary_factor": 0.75}, "config field 'partial_rotary_factor' is 0.75"),
    ("qwen2", {"layer_types": ["full_attention", "chunked_attention"]}, "config field 'layer_types'"),
])
def test_refuses_what_the_model_does_not_implement(family, changes, message):
    from recycle_export.families import config_from_hf

    with pytest.raises(ConfigError, match=message):
        config_from_hf(_hf_config(family, **changes), "config.json")


def test_sliding_window_bounds_max_seq_len():
    import dataclasses

    from recycle_export.families import config_from_hf

    cfg = config_from_hf(_hf_config("mistral"), "config.json")
    with pytest.raises(ConfigError, match=r"'max_seq_len' \(100\) exceeds the model's sliding window \(64\)"):
        dataclasses.replace(cfg, max_seq_len=100)
    qwen = config_from_hf(_hf_config("qwen2", use_sliding_window=True, sliding_window=32), "config.json")
    assert qwen.max_seq_len == 32 and qwen.sliding_window == 32
    phi = config_from_hf(_hf_config("phi3"), "config.json")
    with pytest.raises(ConfigError, match="longrope switches to its long factors"):
        dataclasses.replace(phi, max_seq_len=65)


@pytest.fixture(scope="module")
def family_exports(family_dirs, tmp_path_factory):
    """family -> (our checkpoint folder, its export): each family's tiny model saved as our
    checkpoint (with its fresh recyclable module) and exported once, on first use."""
    from recycle_export.checkpoint import save_checkpoint
    from recycle_export.export import export

    root, done = tmp_path_factory.mktemp("family_exports"), {}

    def get(family: str):
        if family not in done:
            save_checkpoint(load_checkpoint(family_dirs[family][1]), root / family / "ckpt")
            export(root / family / "ckpt", root / family / "art")
            done[family] = root / family / "ckpt", root / family / "art"
        return done[family]
    return get


DESCRIBED = {"llama3": "layers: LLaMA with rope llama3", "qwen2": "layers: LLaMA with q/k/v biases",
             "qwen3": "layers: LLaMA with q/k norms", "mistral": "layers: LLaMA with sliding window 64",
             "phi3": "layers: LLaMA with rope longrope"}


@pytest.mark.parametrize("family", FAMILIES)
def test_export_and_runtime_follow_the_reference(family_exports, family):
    """Both graphs validated against PyTorch (export refuses otherwise), the module's shapes
    the family's, and the runtime's tokens the reference decoder's under every strategy."""
    from recycle_export.reference import ReferenceDecoder
    from runtime.artifacts import Artifacts
    from runtime.generator import Generator, Request
    from runtime.request import DraftOptions

    from recycle_export.describe import describe

    ckpt, art = family_exports(family)
    manifest = Artifacts.load(art).manifest
    assert manifest.validation["passed"]
    assert DESCRIBED[family] in describe(art)
    reference = ReferenceDecoder(load_checkpoint(ckpt).model)
    assert manifest.config == reference.model.cfg.to_dict()
    generator = Generator.from_artifacts(art, threads=1)
    module_draft = DraftOptions(max_draft=1, lookup_ngram=0, module=True, min_probability=0.0)
    for request in (Request("standard", max_new_tokens=12, stop_token_ids=()),
                    Request("alternate", max_new_tokens=12, stop_token_ids=()),
                    Request("verify", max_new_tokens=12, stop_token_ids=()),
                    Request("verify", drafts=module_draft, max_new_tokens=12, stop_token_ids=())):
        for prompt in ([5, 17, 3, 88, 41], [9]):
            ours, ref = generator.generate(prompt, request), reference.generate(prompt, request)
            assert ours.tokens == ref.tokens, (request.strategy, prompt)
            assert ours.stats.drafts_accepted == ref.stats.drafts_accepted


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_cpu_engine(family_exports, family):
    """`build --target cpu` (the fused GroupQueryAttention graphs) per family: its logits
    the portable graphs', its greedy tokens theirs."""
    from benchmarks.fused_check import parity as fused_parity
    from engines.build import build
    from runtime.artifacts import Artifacts
    from runtime.generator import Generator, Request

    art = family_exports(family)[1]
    build(art, "cpu", "fp32")
    report = fused_parity(Artifacts.load(art), art / "engines" / "cpu-fp32", threads=1)
    diff = max(v for k, v in report["max_abs_diff"].items() if not k.endswith("argmax_agree"))
    assert diff < 1e-4 * report["reference_max_abs_logit"], report
    assert report["greedy_identical"], report
    fused, exported = (Generator.from_artifacts(art, engine=e, threads=1) for e in ("cpu-fp32", None))
    for strategy in ("standard", "alternate", "verify"):
        request = Request(strategy, max_new_tokens=10, stop_token_ids=())
        assert fused.generate([5, 17, 3], request).tokens == exported.generate([5, 17, 3], request).tokens


NEW_FIELDS = ("qkv_bias", "qk_norm", "rope_scaling", "sliding_window")


def test_files_without_the_family_fields_read_as_llama(tiny_checkpoint, tiny_artifacts, tmp_path):
    """A checkpoint or an export written before these fields existed loads with LLaMA's
    defaults; a bad value in a manifest is refused naming the field."""
    import json
    import shutil

    from runtime.artifacts import Artifacts
    from runtime.errors import ArtifactError

    for source, name, key in ((tiny_checkpoint, "ckpt", None), (tiny_artifacts, "art", "config")):
        folder = tmp_path / name
        shutil.copytree(source, folder)
        file = folder / ("config.json" if key is None else "manifest.json")
        data = json.loads(file.read_text())
        config = data if key is None else data[key]
        assert set(NEW_FIELDS) <= set(config)
        for field in NEW_FIELDS:
            del config[field]
        file.write_text(json.dumps(data))
    cfg = load_checkpoint(tmp_path / "ckpt").config
    assert (cfg.qkv_bias, cfg.qk_norm, cfg.rope_scaling, cfg.sliding_window) == (False, False, None, None)
    assert "qk_norm" not in Artifacts.load(tmp_path / "art").manifest.config

    manifest = tmp_path / "art" / "manifest.json"
    for field, value, message in (("qk_norm", "yes", "field config.qk_norm must be bool"),
                                  ("rope_scaling", {"rope_type": "yarn", "factor": 4.0},
                                   "field config.rope_scaling rope_type 'yarn' is not supported"),
                                  ("sliding_window", 0, "field config.sliding_window must be at least 1")):
        data = json.loads(manifest.read_text())
        data["config"][field] = value
        manifest.write_text(json.dumps(data))
        with pytest.raises(ArtifactError, match=message):
            Artifacts.load(tmp_path / "art")
        del data["config"][field]
        manifest.write_text(json.dumps(data))


@pytest.mark.parametrize("family", FAMILIES)
def test_float16_export_is_tensorrt_ready(family_dirs, family, tmp_path):
    """The float16 export TensorRT plans build from, per family: validated against PyTorch,
    every node one TensorRT's parser imports, no norm (q/k norms included), softmax or
    rotary computing in float16 (engines.tensorrt.check_graph)."""
    from engines.tensorrt import check_graph
    from recycle_export.export import ExportOptions, export
    from runtime import contract as C

    manifest = export(family_dirs[family][1], tmp_path / "art", ExportOptions(dtype="float16"))
    assert manifest.validation["passed"]
    for name in (C.FULL_STEP, C.RECYCLE_STEP):
        check_graph(tmp_path / "art" / f"{name}.onnx", "float16")


def test_cli_imports_each_gguf_and_refuses_a_window_overrun(family_dirs, tmp_path):
    """`import-gguf` on a Phi-3 GGUF, and `export --max-seq-len` past Mistral's window: one
    `Error:` line naming the window."""
    from click.testing import CliRunner

    from cli import main

    gguf_file = write_gguf(family_dirs["phi3"][0], "phi3", tmp_path / "phi3.gguf")
    result = CliRunner().invoke(main, ["import-gguf", "--gguf", str(gguf_file), "--out", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "ckpt").config.rope_scaling["rope_type"] == "longrope"
    result = CliRunner().invoke(main, ["export", "--model", str(family_dirs["mistral"][1]), "--out",
                                       str(tmp_path / "art"), "--max-seq-len", "100"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: config field 'max_seq_len' (100) exceeds the model's sliding window (64), which is not "
        "implemented: choose a max_seq_len of at most 64")
