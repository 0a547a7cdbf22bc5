"""Bad inputs, as a hostile new user would give them: every one must end with exit status 1
and one `Error: ...` line naming the problem, no traceback, and no file changed outside a
staging folder (issue 13). One case a line; the tiny fixtures are copied into tmp_path
before they are corrupted. The Python API cases at the end raise the project's errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from tests.conftest import write_tiny_gguf

A, C, G = "ART", "CKPT", "GGUF"  # placeholders in a case's arguments, replaced by its folders


@pytest.fixture(scope="module")
def chat_art(tiny_chat_checkpoint, tmp_path_factory):
    """The tiny chat model exported (tokenizer and chat template), with a cpu-fp32 engine."""
    from engines.build import build
    from recycle_export.export import ExportOptions, export

    out = tmp_path_factory.mktemp("bad_inputs") / "art"
    export(tiny_chat_checkpoint, out, ExportOptions(max_seq_len=128))
    build(out, "cpu", "fp32")
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


# Corruptions: each takes the case's folder and changes a copied fixture.

def json_edit(path: Path, change):
    def apply(root: Path):
        file = root / path
        data = json.loads(file.read_text())
        result = change(data)
        file.write_text(json.dumps(data if result is None else result))
    return apply


def write(path: str, content: bytes | str):
    def apply(root: Path):
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(content if isinstance(content, bytes) else content.encode())
    return apply


def manifest(change):
    return json_edit(Path("art/manifest.json"), change)


def engine(change):
    return json_edit(Path("art/engines/cpu-fp32/engine.json"), change)


def config(change):
    return json_edit(Path("ckpt/config.json"), change)


def generation(change):
    return json_edit(Path("ckpt/generation.json"), change)


def drop(*keys):
    def change(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return change


def put(*keys_and_value):
    *keys, value = keys_and_value

    def change(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


def rehash(file: str):
    """After changing `art/<file>`, write its new hash into the manifest (a tamperer's edit)."""
    def apply(root: Path):
        digest = hashlib.sha256((root / "art" / file).read_bytes()).hexdigest()
        manifest(put("files", file, digest))(root)
        data = json.loads((root / "art/manifest.json").read_text())
        data["validation"].get("sha256", {}).pop(file, None)
        (root / "art/manifest.json").write_text(json.dumps(data))
    return apply


def both(*steps):
    def apply(root: Path):
        for step in steps:
            step(root)
    return apply


def scale_weight(graph: str, factor: float):
    """Multiply the first float initializer of a graph by `factor` (the numbers change)."""
    def apply(root: Path):
        import onnx
        from onnx import numpy_helper

        path = root / "art" / graph
        proto = onnx.load(str(path))
        for t in proto.graph.initializer:
            array = numpy_helper.to_array(t)
            if array.dtype.kind == "f" and array.size > 16:
                t.CopyFrom(numpy_helper.from_array(array * factor, t.name))
                break
        onnx.save(proto, str(path))
    return apply


def gguf(overrides=None, drop_tensors=()):
    def apply(root: Path):
        write_tiny_gguf(root / "tiny.gguf", overrides, drop_tensors)
    return apply


def npy(path: str, values):
    """A .npy file holding `values` (an answer store's format, whatever its content)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(values))
    return write(path, buffer.getvalue())


def truncate(path: str, size: int):
    def apply(root: Path):
        file = root / path
        file.write_bytes(file.read_bytes()[:size])
    return apply


NOTHING = None
GEN = ["generate", "--artifacts", A, "--prompt", "hi", "--max-new-tokens", "2"]
REF = ["generate", "--model", C, "--prompt", "hi", "--max-new-tokens", "2"]
EXPORT = ["export", "--model", C, "--out", "{tmp}/out"]
IMPORT = ["import-gguf", "--gguf", G, "--out", "{tmp}/imported"]
BENCH = ["bench", "--artifacts", A, "--repeats", "1", "--max-new-tokens", "2", "--prompt", "hi",
         "--json", "{tmp}/b.json", "--chart", "{tmp}/b.png"]
EVAL = ["eval", "--artifacts", A, "--prompts", "1", "--max-new-tokens", "2"]
ENGINE = GEN + ["--engine", "cpu-fp32"]
BIG = 10 ** 9
UTF8_BAD = b"\xff\xfe\x00garbage \xc3\x28"

# (class, id, corruption, arguments, what the message must say)
CASES = [
    # 1. Lost files: an output folder with the user's files and no earlier artifact is refused.
    ("files", "export-into-user-folder", write("out/notes.txt", "mine"), EXPORT, "notes.txt"),
    ("files", "export-into-user-subfolder", write("out/my_results/r.csv", "1"), EXPORT, "my_results/"),
    ("files", "export-into-a-file", write("out", "a file"), EXPORT, "is a file"),
    ("files", "export-into-checkpoint", NOTHING, ["export", "--model", C, "--out", C], "config.json"),
    ("files", "export-into-foreign-manifest", write("out/manifest.json", '{"name": "my web app"}'), EXPORT,
     "no earlier manifest.json"),
    ("files", "export-into-invalid-manifest", write("out/manifest.json", "{"), EXPORT, "did not write"),
    ("files", "import-into-user-folder", write("imported/notes.txt", "mine"), IMPORT, "notes.txt"),
    ("files", "import-into-a-file", write("imported", "x"), IMPORT, "is a file"),
    ("files", "import-into-export", NOTHING, ["import-gguf", "--gguf", G, "--out", A], "manifest.json"),
    ("files", "import-into-hf-like-folder", write("imported/config.json", '{"model_type": "llama"}'), IMPORT,
     "no earlier config.json"),
    ("files", "train-into-user-folder", write("t/notes.txt", "mine"),
     ["train-recycler", "--model", C, "--out", "{tmp}/t", "--train-prompts", "1"], "notes.txt"),
    ("files", "build-into-user-engine-folder", write("art/engines/cpu-int8/notes.txt", "mine"),
     ["build", "--artifacts", A, "--target", "cpu", "--precision", "int8"], "notes.txt"),
    # 2. Integrity: hashes are mandatory, paths stay inside their folder, tampering is caught.
    ("integrity", "manifest-without-files", manifest(drop("files")), GEN, "field files is missing"),
    ("integrity", "manifest-files-empty", manifest(put("files", {})), GEN, "does not list full_step.onnx"),
    ("integrity", "manifest-files-list", manifest(put("files", [])), GEN, "field files must be dict"),
    ("integrity", "manifest-files-drop-tokenizer", manifest(drop("files", "tokenizer.json")), GEN,
     "does not list tokenizer.json"),
    ("integrity", "manifest-files-bad-digest", manifest(put("files", "full_step.onnx", "abc")), GEN, "sha256"),
    ("integrity", "manifest-files-outside", manifest(put("files", "../x", "0" * 64)), GEN, "inside the folder"),
    ("integrity", "manifest-graph-outside", manifest(put("graphs", "full_step", "file", "../full_step.onnx")), GEN,
     "inside the folder"),
    ("integrity", "manifest-graph-absolute", manifest(put("graphs", "full_step", "file", "/etc/passwd")), GEN,
     "inside the folder"),
    ("integrity", "manifest-tokenizer-outside", manifest(put("tokenizer", "../tokenizer.json")), GEN,
     "inside the folder"),
    ("integrity", "graph-changed", truncate("art/full_step.onnx", 1000), GEN, "changed since export"),
    ("integrity", "graph-missing", lambda r: (r / "art/recycle_step.onnx").unlink(), GEN, "is missing"),
    ("integrity", "tokenizer-changed", write("art/tokenizer.json", "{}"), GEN, "changed since export"),
    ("integrity", "validate-graph-changed", truncate("art/recycle_step.onnx", 5000), ["validate", "--artifacts", A],
     "changed since export"),
    ("integrity", "validate-tampered-rehashed", both(scale_weight("full_step.onnx", 3.0), rehash("full_step.onnx")),
     ["validate", "--artifacts", A], "max abs difference"),
    ("integrity", "validation-hash-mismatch", manifest(put("validation", "sha256", "full_step.onnx", "0" * 64)), GEN,
     "another sha256"),
    ("integrity", "external-data-unlisted", write("art/full_step.onnx.data", "x"), GEN, "is not listed"),
    ("integrity", "engine-graph-outside", engine(put("graphs", "full_step", "../../full_step.onnx")), ENGINE,
     "inside the folder"),
    ("integrity", "engine-graph-absolute", engine(put("graphs", "full_step", "/tmp/x.onnx")), ENGINE,
     "inside the folder"),
    ("integrity", "engine-files-missing", engine(drop("files")), ENGINE, "field files is missing"),
    ("integrity", "engine-files-empty", engine(put("files", {})), ENGINE, "does not list"),
    ("integrity", "engine-source-missing", engine(drop("source")), ENGINE, "field source is missing"),
    ("integrity", "engine-source-changed", engine(put("source", "full_step.onnx", "0" * 64)), ENGINE,
     "built from a different"),
    ("integrity", "engine-file-changed", write("art/engines/cpu-fp32/full_step.onnx", "x"), ENGINE,
     "changed since the build"),
    ("integrity", "engine-name-traversal", NOTHING, GEN + ["--engine", "../.."], "must name a folder"),
    ("integrity", "engine-name-missing", NOTHING, GEN + ["--engine", "cpu-int8"], "no engine for target"),
    # 3. Sizes checked against the tensors present and the memory needed, before allocating.
    ("sizes", "gguf-block-count-1000", gguf({"llama.block_count": 1000}), IMPORT, "block_count is 1000"),
    ("sizes", "gguf-block-count-1", gguf({"llama.block_count": 1}), IMPORT, "block_count is 1"),
    ("sizes", "gguf-block-count-huge", gguf({"llama.block_count": 4_000_000_000}), IMPORT, "block_count"),
    ("sizes", "gguf-vocab-huge", gguf({"llama.vocab_size": BIG}), IMPORT, "token_embd.weight"),
    ("sizes", "gguf-vocab-small", gguf({"llama.vocab_size": 10}), IMPORT, "vocabulary lists 96 tokens"),
    ("sizes", "gguf-dim", gguf({"llama.embedding_length": 4096}), IMPORT, "expected (96, 4096)"),
    ("sizes", "answer-store-outside-vocab", npy("answers.npy", [5, 96]), IMPORT + ["--answers", "{tmp}/answers.npy"],
     "outside the vocabulary [0, 96)"),
    ("errors", "answer-store-not-npy", write("answers.npy", "5 6 7"), IMPORT + ["--answers", "{tmp}/answers.npy"],
     "not an answer store"),
    ("errors", "answer-store-2d", npy("answers.npy", [[5, 6]]), IMPORT + ["--answers", "{tmp}/answers.npy"],
     "expected 1-D token ids"),
    ("errors", "answer-store-missing", NOTHING, IMPORT + ["--answers", "{tmp}/none.npy"], "none.npy not found"),
    ("sizes", "gguf-ffn", gguf({"llama.feed_forward_length": BIG}), IMPORT, "ffn_gate"),
    ("sizes", "gguf-heads", gguf({"llama.attention.head_count": 8}), IMPORT, "shape"),
    ("sizes", "gguf-kv-heads", gguf({"llama.attention.head_count_kv": 4}), IMPORT, "attn_k"),
    ("sizes", "gguf-key-length", gguf({"llama.attention.key_length": 32}), IMPORT, "shape"),
    ("sizes", "gguf-missing-tensor", gguf(drop_tensors=("blk.1.ffn_up.weight",)), IMPORT, "missing tensor"),
    ("sizes", "gguf-missing-embedding", gguf(drop_tensors=("token_embd.weight",)), IMPORT, "token_embd"),
    ("sizes", "config-vocab-huge", config(put("vocab_size", BIG)), EXPORT, "embed_tokens.weight"),
    ("sizes", "config-vocab-huge-reference", config(put("vocab_size", BIG)), REF, "embed_tokens.weight"),
    ("sizes", "config-vocab-small", config(put("vocab_size", 50)), EXPORT, "shape"),
    ("sizes", "config-dim-huge", config(put("dim", 2 ** 20)), EXPORT, "shape"),
    ("sizes", "config-ffn-huge", config(put("ffn_dim", BIG)), EXPORT, "shape"),
    ("sizes", "config-layers-huge", config(put("n_layers", BIG)), EXPORT, "hold 2 layers"),
    ("sizes", "config-layers-fewer", config(put("n_layers", 1)), EXPORT, "hold 2 layers"),
    ("sizes", "config-recycle-layers", config(put("recycle_layers", 100)), EXPORT, "hold 1 layers"),
    ("sizes", "config-heads", config(put("n_heads", 8)), EXPORT, "shape"),
    ("sizes", "config-head-dim", config(put("head_dim", 64)), EXPORT, "shape"),
    ("sizes", "config-max-seq-len-huge", config(put("max_seq_len", BIG)), EXPORT, "KV cache"),
    ("sizes", "export-max-seq-len-1e9", NOTHING, EXPORT + ["--max-seq-len", str(BIG)], "needs"),
    ("sizes", "export-max-seq-len-2e62", NOTHING, EXPORT + ["--max-seq-len", str(2 ** 62)], "more than this machine"),
    ("sizes", "export-max-seq-len-0", NOTHING, EXPORT + ["--max-seq-len", "0"], "at least 2"),
    ("sizes", "export-max-seq-len-neg", NOTHING, EXPORT + ["--max-seq-len", "-5"], "at least 2"),
    ("sizes", "manifest-max-seq-len-huge", manifest(put("config", "max_seq_len", BIG)), GEN, "KV cache"),
    ("sizes", "manifest-max-seq-len-zero", manifest(put("config", "max_seq_len", 0)), GEN, "at least 1"),
    ("sizes", "manifest-vocab-zero", manifest(put("config", "vocab_size", 0)), GEN, "vocab_size"),
    ("sizes", "manifest-tokenizer-bigger-than-vocab", manifest(put("config", "vocab_size", 10)), GEN, "96 tokens"),
    ("sizes", "prompt-longer-than-max-seq-len", NOTHING, GEN[:4] + ["x" * 200], "maximum sequence length"),
    # 4. One `Error:` line instead of a traceback.
    ("errors", "manifest-list", write("art/manifest.json", "[]"), GEN, "must be a JSON object"),
    ("errors", "manifest-string", write("art/manifest.json", '"x"'), GEN, "must be a JSON object"),
    ("errors", "manifest-null", write("art/manifest.json", "null"), GEN, "must be a JSON object"),
    ("errors", "manifest-invalid-json", write("art/manifest.json", "{"), GEN, "not valid JSON"),
    ("errors", "manifest-empty", write("art/manifest.json", ""), GEN, "not valid JSON"),
    ("errors", "manifest-not-utf8", write("art/manifest.json", UTF8_BAD), GEN, "not UTF-8"),
    ("errors", "manifest-missing", lambda r: (r / "art/manifest.json").unlink(), GEN, "has no manifest.json"),
    ("errors", "manifest-no-config", manifest(drop("config")), GEN, "field config is missing"),
    ("errors", "manifest-no-graphs", manifest(drop("graphs")), GEN, "field graphs is missing"),
    ("errors", "manifest-no-generation", manifest(drop("generation")), GEN, "field generation is missing"),
    ("errors", "manifest-no-dtype", manifest(drop("dtype")), GEN, "field dtype is missing"),
    ("errors", "manifest-no-kv", manifest(drop("kv")), GEN, "field kv is missing"),
    ("errors", "manifest-no-opset", manifest(drop("opset")), GEN, "field opset is missing"),
    ("errors", "manifest-no-validation", manifest(drop("validation")), GEN, "field validation is missing"),
    ("errors", "manifest-no-source", manifest(drop("source")), GEN, "field source is missing"),
    ("errors", "manifest-no-versions", manifest(drop("versions")), GEN, "field versions is missing"),
    ("errors", "manifest-no-warnings", manifest(drop("warnings")), GEN, "field warnings is missing"),
    ("errors", "manifest-no-recycler-trained", manifest(drop("recycler_trained")), GEN, "recycler_trained is missing"),
    ("errors", "manifest-no-format", manifest(drop("format")), GEN, "artifact format None"),
    ("errors", "manifest-version-2", manifest(put("format_version", 2)), GEN, "version 2"),
    ("errors", "manifest-kv-contract", manifest(put("kv", "contract", "paged-v9")), GEN, "paged-v9"),
    ("errors", "manifest-max-seq-len-string", manifest(put("config", "max_seq_len", "2048")), GEN,
     "max_seq_len must be int, not str"),
    ("errors", "manifest-max-seq-len-float", manifest(put("config", "max_seq_len", 64.0)), GEN, "must be int"),
    ("errors", "manifest-n-layers-bool", manifest(put("config", "n_layers", True)), GEN, "n_layers must be int"),
    ("errors", "manifest-config-list", manifest(put("config", [])), GEN, "config must be dict"),
    ("errors", "manifest-no-n-heads", manifest(drop("config", "n_heads")), GEN, "n_heads is missing"),
    ("errors", "manifest-kv-heads-divide", manifest(put("config", "n_kv_heads", 3)), GEN, "must divide n_heads"),
    ("errors", "manifest-dtype-float64", manifest(put("dtype", "float64")), GEN, "float64"),
    ("errors", "manifest-dtype-number", manifest(put("dtype", 32)), GEN, "dtype must be str"),
    ("errors", "manifest-opset-string", manifest(put("opset", "17")), GEN, "opset must be int"),
    ("errors", "manifest-graphs-list", manifest(put("graphs", [])), GEN, "graphs must be dict"),
    ("errors", "manifest-no-full-step", manifest(drop("graphs", "full_step")), GEN, "full_step is missing"),
    ("errors", "manifest-graph-inputs-string", manifest(put("graphs", "full_step", "inputs", "x")), GEN,
     "inputs must be list"),
    ("errors", "manifest-graph-shape-bad", manifest(put("graphs", "full_step", "inputs", 0, "shape", [None])), GEN,
     "dimension names or sizes"),
    ("errors", "manifest-tokenizer-number", manifest(put("tokenizer", 5)), GEN, "tokenizer must be str"),
    ("errors", "manifest-warnings-numbers", manifest(put("warnings", [1])), GEN, "list of strings"),
    ("errors", "manifest-validation-passed-string", manifest(put("validation", "passed", "yes")), GEN,
     "passed must be bool"),
    ("errors", "manifest-draft-vocab-zero", manifest(put("draft_vocab", 0)), GEN, "draft_vocab must be at least 1"),
    ("errors", "manifest-chat-template-syntax", manifest(put("generation", "chat_template", "{% for %}")), GEN,
     "syntax error"),
    ("errors", "manifest-chat-template-number", manifest(put("generation", "chat_template", 5)), GEN,
     "chat_template must be str"),
    ("errors", "manifest-bos-negative", manifest(put("generation", "bos_token_id", -1)), GEN, "at least 0"),
    ("errors", "engine-invalid-json", write("art/engines/cpu-fp32/engine.json", "{"), ENGINE, "not valid JSON"),
    ("errors", "engine-list", write("art/engines/cpu-fp32/engine.json", "[]"), ENGINE, "must be a JSON object"),
    ("errors", "engine-not-utf8", write("art/engines/cpu-fp32/engine.json", UTF8_BAD), ENGINE, "not UTF-8"),
    ("errors", "engine-no-backend", engine(drop("backend")), ENGINE, "backend is missing"),
    ("errors", "engine-backend-unknown", engine(put("backend", "cuda")), ENGINE, "'cuda'"),
    ("errors", "engine-no-graphs", engine(drop("graphs")), ENGINE, "graphs is missing"),
    ("errors", "engine-no-device", engine(drop("device")), ENGINE, "device is missing"),
    ("errors", "engine-no-session", engine(drop("session")), ENGINE, "session is missing"),
    ("errors", "engine-no-kv-contract", engine(drop("kv_contract")), ENGINE, "kv_contract is missing"),
    ("errors", "engine-version-2", engine(put("format_version", 2)), ENGINE, "version 2"),
    ("errors", "engine-providers-string", engine(put("session", "providers", "CPU")), ENGINE, "providers must be list"),
    ("errors", "temperature-1e-320", NOTHING, GEN + ["--temperature", "1e-320"], "too small"),
    ("errors", "temperature-nan", NOTHING, GEN + ["--temperature", "nan"], "temperature must be a finite"),
    ("errors", "temperature-inf", NOTHING, GEN + ["--temperature", "inf"], "temperature must be a finite"),
    ("errors", "temperature-negative", NOTHING, GEN + ["--temperature", "-1"], "temperature must be a finite"),
    ("errors", "top-p-zero", NOTHING, GEN + ["--top-p", "0"], "top_p must be in (0, 1]"),
    ("errors", "top-p-big", NOTHING, GEN + ["--top-p", "1.5"], "top_p must be in (0, 1]"),
    ("errors", "top-p-nan", NOTHING, GEN + ["--top-p", "nan"], "top_p must be in (0, 1]"),
    ("errors", "top-k-negative", NOTHING, GEN + ["--top-k", "-1"], "top_k must be an integer >= 0"),
    ("errors", "seed-negative", NOTHING, GEN + ["--seed", "-1"], "seed must be an integer"),
    ("errors", "seed-negative-reference", NOTHING, REF + ["--seed", "-1"], "seed must be an integer"),
    ("errors", "seed-huge", NOTHING, GEN + ["--seed", str(2 ** 70)], "seed must be an integer"),
    ("errors", "max-new-tokens-zero", NOTHING, GEN + ["--max-new-tokens", "0"], "max_new_tokens must be"),
    ("errors", "max-new-tokens-negative", NOTHING, GEN + ["--max-new-tokens", "-3"], "max_new_tokens must be"),
    ("errors", "prompt-not-utf8", NOTHING, GEN[:4] + ["caf\udce9"], "not valid UTF-8"),
    ("errors", "prompt-empty", NOTHING, GEN[:4] + [""], "the prompt is empty"),
    ("errors", "prompt-not-utf8-reference", NOTHING, REF[:4] + ["caf\udce9"], "not valid UTF-8"),
    ("errors", "chat-without-template", manifest(put("generation", "chat_template", None)), GEN + ["--chat"],
     "no chat template"),
    ("errors", "config-not-utf8", write("ckpt/config.json", UTF8_BAD), EXPORT, "not UTF-8"),
    ("errors", "config-invalid-json", write("ckpt/config.json", "{"), EXPORT, "not valid JSON"),
    ("errors", "config-list", write("ckpt/config.json", "[]"), EXPORT, "expected a JSON object"),
    ("errors", "config-missing", lambda r: (r / "ckpt/config.json").unlink(), EXPORT, "has no config.json"),
    ("errors", "config-n-layers-string", config(put("n_layers", "2")), EXPORT, "n_layers"),
    ("errors", "config-n-layers-negative", config(put("n_layers", -2)), EXPORT, "n_layers"),
    ("errors", "config-head-dim-odd", config(put("head_dim", 15)), EXPORT, "even"),
    ("errors", "config-rope-theta-string", config(put("rope_theta", "x")), EXPORT, "rope_theta"),
    ("errors", "config-norm-eps-zero", config(put("norm_eps", 0)), EXPORT, "norm_eps"),
    ("errors", "config-tie-string", config(put("tie_embeddings", "yes")), EXPORT, "tie_embeddings"),
    ("errors", "config-unknown-field", config(put("flash", True)), EXPORT, "unknown config field"),
    ("errors", "config-missing-field", config(drop("dim")), EXPORT, "missing required config field"),
    ("errors", "config-format-version", config(put("format_version", 9)), EXPORT, "format version 9"),
    ("errors", "config-kv-heads-divide", config(put("n_kv_heads", 3)), EXPORT, "n_kv_heads"),
    ("errors", "generation-invalid-json", write("ckpt/generation.json", "{"), EXPORT, "not valid JSON"),
    ("errors", "generation-list", write("ckpt/generation.json", "[]"), EXPORT, "expected a JSON object"),
    ("errors", "generation-not-utf8", write("ckpt/generation.json", UTF8_BAD), EXPORT, "not UTF-8"),
    ("errors", "generation-chat-template-syntax", generation(put("chat_template", "{% if %}")), EXPORT,
     "syntax error"),
    ("errors", "generation-chat-template-syntax-reference", generation(put("chat_template", "{{ x")), REF,
     "syntax error"),
    ("errors", "generation-bos-string", generation(put("bos_token_id", "1")), EXPORT, "bos_token_id must be int"),
    ("errors", "tokenizer-corrupt", write("ckpt/tokenizer.json", "{not json"), EXPORT, "tokenizer.json cannot be read"),
    ("errors", "tokenizer-wrong-json", write("ckpt/tokenizer.json", '{"model": 5}'), EXPORT,
     "tokenizer.json cannot be read"),
    ("errors", "tokenizer-not-utf8", write("ckpt/tokenizer.json", UTF8_BAD), EXPORT, "not UTF-8"),
    ("errors", "tokenizer-corrupt-reference", write("ckpt/tokenizer.json", "[]"), REF, "tokenizer.json cannot be read"),
    ("errors", "tokenizer-corrupt-in-export", both(write("art/tokenizer.json", "{oops"), rehash("tokenizer.json")), GEN,
     "tokenizer.json cannot be read"),
    ("errors", "safetensors-truncated", truncate("ckpt/base.safetensors", 1000), EXPORT, "truncated or corrupt"),
    ("errors", "safetensors-garbage", write("ckpt/base.safetensors", b"\x00" * 64), EXPORT, "truncated or corrupt"),
    ("errors", "safetensors-empty", write("ckpt/recycler.safetensors", b""), EXPORT, "truncated or corrupt"),
    ("errors", "safetensors-missing", lambda r: (r / "ckpt/base.safetensors").unlink(), EXPORT, "missing base"),
    ("errors", "checkpoint-missing", NOTHING, ["export", "--model", "{tmp}/nope", "--out", "{tmp}/out"], "not found"),
    ("errors", "checkpoint-pickle", write("model.bin", b"\x80\x04"), ["export", "--model", "{tmp}/model.bin",
                                                                       "--out", "{tmp}/out"], "never unpickled"),
    ("errors", "gguf-truncated-1k", truncate("tiny.gguf", 1024), IMPORT, "not a readable GGUF"),
    ("errors", "gguf-truncated-half", truncate("tiny.gguf", 170_000), IMPORT, "not a readable GGUF"),
    ("errors", "gguf-truncated-8", truncate("tiny.gguf", 8), IMPORT, "not a readable GGUF"),
    ("errors", "gguf-empty", truncate("tiny.gguf", 0), IMPORT, "not a readable GGUF"),
    ("errors", "gguf-text", write("tiny.gguf", "hello world, not a gguf"), IMPORT, "not a readable GGUF"),
    ("errors", "gguf-missing", lambda r: (r / "tiny.gguf").unlink(), IMPORT, "not found"),
    ("errors", "gguf-heads-string", gguf({"llama.attention.head_count": "four"}), IMPORT, "must be a number"),
    ("errors", "gguf-heads-zero", gguf({"llama.attention.head_count": 0}), IMPORT, "head_count"),
    ("errors", "gguf-architecture", gguf({"general.architecture": "falcon"}), IMPORT, "falcon"),
    ("errors", "gguf-recycler-missing", NOTHING, IMPORT + ["--recycler", "{tmp}/nope.safetensors"], "not found"),
    ("errors", "bench-warmup-negative", NOTHING, BENCH + ["--warmup", "-1"], "--warmup must be >= 0"),
    ("errors", "bench-repeats-zero", NOTHING, BENCH + ["--repeats", "0"], "--repeats must be >= 1"),
    ("errors", "bench-max-new-tokens-one", NOTHING, BENCH + ["--max-new-tokens", "1"], "--max-new-tokens must be >= 2"),
    ("errors", "bench-json-missing-folder", NOTHING, BENCH + ["--json", "{tmp}/no/such/b.json"], "does not exist"),
    ("errors", "bench-chart-missing-folder", NOTHING, BENCH + ["--chart", "{tmp}/no/b.png"], "does not exist"),
    ("errors", "bench-strategy-unknown", NOTHING, BENCH + ["--strategies", "fast"], "unknown strategy"),
    ("errors", "bench-strategies-empty", NOTHING, BENCH + ["--strategies", ","], "unknown strategy"),
    ("errors", "eval-prompts-zero", NOTHING, EVAL[:4] + ["0"], "--prompts must be in"),
    ("errors", "eval-max-new-tokens-zero", NOTHING, EVAL + ["--max-new-tokens", "0"], "--max-new-tokens must be"),
    ("errors", "eval-json-missing-folder", NOTHING, EVAL + ["--json", "{tmp}/no/e.json"], "does not exist"),
    ("errors", "build-target-unknown", NOTHING, ["build", "--artifacts", A, "--target", "v100"], "unknown target"),
    ("errors", "build-precision-unknown", NOTHING, ["build", "--artifacts", A, "--target", "cpu", "--precision",
                                                    "int2"], "precision"),
    ("errors", "build-tampered-export", truncate("art/full_step.onnx", 100), ["build", "--artifacts", A, "--target",
                                                                             "cpu"], "changed since export"),
    ("errors", "validate-source-gone", manifest(put("source", "checkpoint", "/nonexistent/ckpt")),
     ["validate", "--artifacts", A], "not found"),
    ("errors", "inspect-not-an-export", NOTHING, ["inspect", "--artifacts", "{tmp}"], "has no manifest.json"),
    ("errors", "train-epochs-zero", NOTHING, ["train-recycler", "--model", C, "--out", "{tmp}/t", "--epochs", "0"],
     "epochs must be >= 1"),
    ("errors", "train-logit-fraction", NOTHING, ["train-recycler", "--model", C, "--out", "{tmp}/t",
                                                 "--logit-fraction", "2"], "logit_fraction"),
    ("errors", "train-threads-zero", NOTHING, ["train-recycler", "--model", C, "--out", "{tmp}/t", "--threads", "0"],
     "threads must be"),
    ("errors", "train-data-unknown", NOTHING, ["train-recycler", "--model", C, "--out", "{tmp}/t", "--data", "wiki"],
     "data set 'wiki' is unknown"),
    ("errors", "train-data-count", NOTHING, ["train-recycler", "--model", C, "--out", "{tmp}/t", "--data", "real=x"],
     "must be a positive integer"),
    ("errors", "train-unroll-zero", NOTHING, ["train-recycler", "--model", C, "--out", "{tmp}/t", "--unroll", "0"],
     "unroll must be >= 1"),
    # 5. Results that used to be silently wrong (exit 0) are refused.
    ("silent", "stop-empty", NOTHING, GEN + ["--stop", ""], "stop strings must be non-empty"),
    ("silent", "stop-empty-among-others", NOTHING, GEN + ["--stop", "x", "--stop", ""], "non-empty"),
    ("silent", "eos-string-generation", generation(put("eos_token_ids", "2")), EXPORT, "eos_token_ids must be list"),
    ("silent", "eos-string-manifest", manifest(put("generation", "eos_token_ids", "2")), GEN,
     "eos_token_ids must be list"),
    ("silent", "eos-strings-in-list", manifest(put("generation", "eos_token_ids", ["2"])), GEN,
     "non-negative integers"),
    ("silent", "eos-negative", generation(put("eos_token_ids", [-1])), EXPORT, "non-negative integers"),
    ("silent", "recycler-trained-no-config", config(put("recycler_trained", "no")), EXPORT,
     "recycler_trained' must be true or false"),
    ("silent", "recycler-trained-zero-config", config(put("recycler_trained", 0)), REF, "recycler_trained"),
    ("silent", "recycler-trained-no-manifest", manifest(put("recycler_trained", "no")), GEN,
     "recycler_trained must be bool"),
    ("silent", "threads-zero", NOTHING, GEN + ["--threads", "0"], "threads must be an integer in 1.."),
    ("silent", "threads-negative", NOTHING, GEN + ["--threads", "-4"], "threads must be an integer in 1.."),
    ("silent", "threads-1000", NOTHING, GEN + ["--threads", "1000"], "threads must be an integer in 1.."),
    ("silent", "threads-1000-bench", NOTHING, BENCH + ["--threads", "1000"], "threads must be an integer in 1.."),
    ("silent", "threads-1000-eval", NOTHING, EVAL + ["--threads", "1000"], "threads must be an integer in 1.."),
    ("silent", "stop-with-reference", NOTHING, REF + ["--stop", "x"], "apply to the runtime"),
    ("silent", "engine-with-reference", NOTHING, REF + ["--engine", "cpu-fp32"], "apply to the runtime"),
]


# validate records its figures, failed ones too, in the manifest before it raises.
MAY_CHANGE = {"validate-tampered-rehashed": ("art/manifest.json",)}


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (but staging folders) with its sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".partial-" not in str(p.relative_to(root))}


@pytest.mark.parametrize("kind,name,corrupt,args,message", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_bad_input(kind, name, corrupt, args, message, tmp_path, chat_art, tiny_chat_checkpoint, tiny_gguf):
    shutil.copytree(chat_art, tmp_path / "art")
    shutil.copytree(tiny_chat_checkpoint, tmp_path / "ckpt")
    shutil.copy(tiny_gguf, tmp_path / "tiny.gguf")
    if corrupt is not None:
        corrupt(tmp_path)
    folders = {A: str(tmp_path / "art"), C: str(tmp_path / "ckpt"), G: str(tmp_path / "tiny.gguf")}
    argv = [folders.get(a, a.replace("{tmp}", str(tmp_path))) for a in args]
    before = snapshot(tmp_path)
    result = CliRunner().invoke(main, argv)
    assert "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert message in errors[0], errors[0]
    after = snapshot(tmp_path)
    for file in MAY_CHANGE.get(name, ()):
        before.pop(file), after.pop(file)
    assert after == before
    assert not [p for p in tmp_path.rglob("*.partial-*")], "a staging folder was left"


def test_cases_cover_every_class():
    counts = {}
    for kind, *_ in CASES:
        counts[kind] = counts.get(kind, 0) + 1
    assert set(counts) == {"files", "integrity", "sizes", "errors", "silent"} and len(CASES) + len(API_CASES) >= 150


# The Python API validates as the CLI does, with the project's error types.

def _request(**kwargs):
    from runtime.request import Request

    return lambda: Request(**kwargs)


def _sampling(**kwargs):
    from runtime.sampling import SamplingParams

    return lambda: SamplingParams(**kwargs)


API_CASES = [
    ("stop-strings-a-string", _request(stop_strings="Paris"), "write ('Paris',) for one"),
    ("stop-strings-empty-string", _request(stop_strings=("",)), "non-empty"),
    ("stop-strings-numbers", _request(stop_strings=(1,)), "non-empty strings"),
    ("stop-token-ids-string", _request(stop_token_ids="2"), "list of token ids"),
    ("stop-token-ids-negative", _request(stop_token_ids=(-1,)), "non-negative integers"),
    ("stop-token-ids-float", _request(stop_token_ids=(2.0,)), "non-negative integers"),
    ("max-new-tokens-none", _request(max_new_tokens=None), "max_new_tokens must be an integer"),
    ("max-new-tokens-float", _request(max_new_tokens=2.5), "max_new_tokens must be an integer"),
    ("max-new-tokens-zero", _request(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    ("max-new-tokens-bool", _request(max_new_tokens=True), "max_new_tokens must be an integer"),
    ("strategy-unknown", _request(strategy="fast"), "unknown strategy"),
    ("strategy-none", _request(strategy=None), "unknown strategy"),
    ("sampling-dict", _request(sampling={"temperature": 1}), "must be a SamplingParams"),
    ("top-k-float", _sampling(top_k=2.5), "top_k must be an integer"),
    ("top-k-negative", _sampling(top_k=-1), "top_k must be an integer"),
    ("top-k-none", _sampling(top_k=None), "top_k must be an integer"),
    ("seed-negative", _sampling(seed=-1), "seed must be an integer"),
    ("seed-float", _sampling(seed=1.5), "seed must be an integer"),
    ("seed-string", _sampling(seed="1"), "seed must be an integer"),
    ("temperature-tiny", _sampling(temperature=1e-320), "too small"),
    ("temperature-string", _sampling(temperature="0.7"), "temperature must be a number"),
    ("temperature-none", _sampling(temperature=None), "temperature must be a number"),
    ("temperature-nan", _sampling(temperature=float("nan")), "finite"),
    ("top-p-string", _sampling(top_p="0.9"), "top_p must be a number"),
    ("top-p-zero", _sampling(top_p=0.0), "top_p must be in"),
]


@pytest.mark.parametrize("name,build,message", API_CASES, ids=[c[0] for c in API_CASES])
def test_bad_api_input(name, build, message):
    from runtime.errors import RecycleExportError

    with pytest.raises(RecycleExportError, match=re_escape(message)):
        build()


def re_escape(text: str) -> str:
    import re

    return re.escape(text)
