"""Reading an export folder: manifest.json as a typed record, its integrity, and what the
decoders need from it (docs/design.md section 4).

`Manifest` is the one reader and writer of manifest.json: its `from_json` checks every
field (present, of the right type, in range) and names the field and the file when one is
wrong; nothing else in the project spells a manifest key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from runtime import contract as C
from runtime import rope
from runtime.errors import ArtifactError, GenerationError
from runtime.files import listed_files, read_json, read_record, read_text, sha256, write_json
from runtime.records import Fields

FORMAT = "recycle-export-artifacts"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Model config fields the runtime reads; every one a positive integer.
CONFIG_INTS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "recycle_layers")


@dataclass(frozen=True)
class GraphRecord:
    file: str
    inputs: tuple[C.TensorSpec, ...]
    outputs: tuple[C.TensorSpec, ...]

    def to_json(self) -> dict:
        return {"file": self.file, "inputs": [dataclasses.asdict(t) for t in self.inputs],
                "outputs": [dataclasses.asdict(t) for t in self.outputs]}

    @classmethod
    def from_contract(cls, spec: C.GraphContract) -> "GraphRecord":
        return cls(f"{spec.name}.onnx", spec.inputs, spec.outputs)

    @classmethod
    def from_json(cls, f: Fields) -> "GraphRecord":
        def specs(key):
            rows = f.get(key, list)
            out = []
            for i, row in enumerate(rows):
                t = Fields(row, f.where, f.fix, f"{f.prefix}{key}[{i}].", f.error)
                shape = t.get("shape", list)
                if not all(isinstance(d, (str, int)) and not isinstance(d, bool) for d in shape):
                    t.fail("shape", "must list dimension names or sizes")
                out.append(C.TensorSpec(t.get("name", str), t.get("dtype", str), tuple(shape)))
            return tuple(out)

        return cls(f.file_name("file"), specs("inputs"), specs("outputs"))


@dataclass(frozen=True)
class GenerationRecord:
    """Token ids and chat template the decoders need besides the weights."""

    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    chat_template: str | None = None

    def to_json(self) -> dict:
        return {"bos_token_id": self.bos_token_id, "eos_token_ids": list(self.eos_token_ids),
                "pad_token_id": self.pad_token_id, "chat_template": self.chat_template}

    @classmethod
    def from_json(cls, f: Fields) -> "GenerationRecord":
        return cls(f.int("bos_token_id", optional=True), f.ints("eos_token_ids"),
                   f.int("pad_token_id", optional=True), f.get("chat_template", str, optional=True))


@dataclass(frozen=True)
class Manifest:
    """manifest.json: what an export folder holds and how it was made."""

    config: dict  # the model config (recycle_export.config.ModelConfig.to_dict())
    dtype: str
    opset: int
    kv: dict  # contract.kv_description(dims)
    graphs: dict[str, GraphRecord]
    tokenizer: str | None  # file name of tokenizer.json, or None
    generation: GenerationRecord
    recycler_trained: bool
    draft_vocab: int | None  # tokens the module's LM head scores; None: all of them
    warnings: tuple[str, ...]
    source: dict  # {"checkpoint": path exported from}
    versions: dict  # library versions of the export
    validation: dict  # recycle_export.validate's figures: passed, tolerance, max_abs_diff, ...
    files: dict[str, str]  # file name -> sha256 of every file of the export
    answer_store: str | None = None  # file name of verify's answer store (runtime.drafts), or None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def dims(self) -> C.Dims:
        return C.Dims.from_config(self.config, self.dtype)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["graphs"] = {name: g.to_json() for name, g in self.graphs.items()}
        data["generation"] = self.generation.to_json()
        data["warnings"] = list(self.warnings)
        return data

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / MANIFEST, self.to_json())

    @classmethod
    def from_json(cls, data, where: str) -> "Manifest":
        """Raises: ArtifactError naming the first field that is missing or wrong."""
        fix = "re-run `cli.py export`"
        f = Fields(data, where, fix)
        if f.data.get("format") != FORMAT or f.data.get("format_version") != FORMAT_VERSION:
            f.fail("", f"artifact format {f.data.get('format')!r} version {f.data.get('format_version')!r}, "
                       f"but this runtime reads {FORMAT!r} version {FORMAT_VERSION}")
        kv = f.sub("kv")
        contract = kv.get("contract", str)
        if contract != C.CONTRACT_NAME:
            f.fail("", f"KV contract {contract!r}, but this runtime implements {C.CONTRACT_NAME!r}: "
                       "export again with this version")
        config = f.sub("config")
        for key in CONFIG_INTS:
            config.int(key, minimum=1)
        config.int("head_dim", minimum=1, optional=True)
        if config.data["n_heads"] % config.data["n_kv_heads"]:
            config.fail("n_kv_heads", "must divide n_heads")
        # The families' fields (recycle_export.config), absent from exports older than them: LLaMA.
        for key in ("qkv_bias", "qk_norm"):
            config.get(key, bool, optional=True)
        config.int("sliding_window", minimum=1, optional=True)
        head_dim = config.data.get("head_dim") or config.data["dim"] // config.data["n_heads"]
        problem = rope.check_scaling(config.data.get("rope_scaling"), head_dim, config.data["max_seq_len"])
        if problem:
            config.fail("rope_scaling", problem)
        graphs_f = f.sub("graphs")
        graphs = {name: GraphRecord.from_json(graphs_f.sub(name)) for name in (C.FULL_STEP, C.RECYCLE_STEP)}
        validation = f.sub("validation")
        validation.get("passed", bool)
        draft_vocab = f.int("draft_vocab", minimum=1, optional=True)
        warnings = f.get("warnings", list)
        if not all(isinstance(w, str) for w in warnings):
            f.fail("warnings", "must be a list of strings")
        tokenizer = f.file_name("tokenizer") if f.data.get("tokenizer") is not None else None
        answer_store = f.file_name("answer_store") if f.data.get("answer_store") is not None else None
        files = f.hashes("files")
        for file in [g.file for g in graphs.values()] + [name for name in (tokenizer, answer_store) if name]:
            if file not in files:
                f.fail("files", f"does not list {file}: every file's hash is checked")
        validated = validation.hashes("sha256", optional=True) or {}
        for file, digest in validated.items():
            if files.get(file) != digest:
                f.fail("files", f"gives {file} another sha256 than the one its validation measured")
        return cls(config=dict(config.data), dtype=f.choice("dtype", C.FLOAT_DTYPES), opset=f.int("opset", 1),
                   kv=dict(kv.data), graphs=graphs, tokenizer=tokenizer,
                   generation=GenerationRecord.from_json(f.sub("generation")),
                   recycler_trained=f.get("recycler_trained", bool), draft_vocab=draft_vocab,
                   warnings=tuple(warnings), source=dict(f.sub("source").data),
                   versions=dict(f.sub("versions").data), validation=dict(validation.data),
                   files=files, answer_store=answer_store)


def export_files(folder: Path) -> set[str] | None:
    """The files an earlier export in `folder` wrote (its manifest and the files it lists),
    or None when `folder` holds no export of ours (runtime.files.staged_folder's `owned`)."""
    listed = listed_files(read_record(Path(folder) / MANIFEST, FORMAT))
    return None if listed is None else listed | {MANIFEST}


def read_manifest(folder: Path, check_hashes: bool = True) -> Manifest:
    """Read an export folder's manifest, checking every field and, by default, the hash of
    every file it lists.

    Raises:
        ArtifactError: no manifest, another format, version or KV contract, a field missing
            or wrong, or a file missing or changed since export; the message says what to re-run.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST}: not an export folder; "
                            f"run `cli.py export --model CKPT --out {folder}`")
    data = read_json(path, ArtifactError, "re-run `cli.py export`")
    manifest = Manifest.from_json(data, str(path))
    for graph in manifest.graphs.values():
        data = f"{graph.file}.data"
        if (folder / data).exists() and data not in manifest.files:
            raise ArtifactError(f"{folder / data} is not listed in {MANIFEST}'s files; re-run `cli.py export`")
    if check_hashes:
        for file, digest in manifest.files.items():
            target = folder / file
            if not target.is_file():
                raise ArtifactError(f"{target} is missing; re-run `cli.py export`")
            if sha256(target) != digest:
                raise ArtifactError(f"{target} changed since export; re-run `cli.py export`")
    return manifest


@dataclass(frozen=True)
class Artifacts:
    """An export folder as the runtime sees it."""

    folder: Path
    manifest: Manifest

    @classmethod
    def load(cls, folder: Path, check_hashes: bool = True) -> "Artifacts":
        """Raises: ArtifactError (see read_manifest)."""
        return cls(Path(folder), read_manifest(folder, check_hashes))

    @property
    def dims(self) -> C.Dims:
        return self.manifest.dims

    @property
    def max_seq_len(self) -> int:
        return self.manifest.config["max_seq_len"]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.manifest.generation.eos_token_ids

    @property
    def pad_token_id(self) -> int:
        pad = self.manifest.generation.pad_token_id
        return 0 if pad is None else pad

    def graph_path(self, name: str) -> Path:
        return self.folder / self.manifest.graphs[name].file

    def answer_store(self):
        """verify's answer store (runtime.drafts.AnswerStore), or None when the export has none.

        Raises: ArtifactError: its file is unreadable or holds ids outside the vocabulary.
        """
        from runtime.drafts import AnswerStore

        name = self.manifest.answer_store
        return AnswerStore.load(self.folder / name, self.dims.vocab_size) if name else None

    def codec(self):
        """The TextCodec for this export's tokenizer and chat template.

        Raises:
            GenerationError: the export has no tokenizer.
            ArtifactError: its tokenizer.json is unreadable or has more tokens than the
                vocabulary, or its chat template has a syntax error.
        """
        from runtime.tokenizer import TextCodec

        tokenizer = self.manifest.tokenizer
        text = read_text(self.folder / tokenizer, ArtifactError, "re-run `cli.py export`") if tokenizer else None
        return TextCodec.from_json(text, self.manifest.generation.chat_template, str(self.folder),
                                   self.dims.vocab_size, ArtifactError if tokenizer else GenerationError)
