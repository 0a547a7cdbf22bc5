"""Reading an export folder: the manifest, its integrity, and what the decoders need from it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from runtime import contract as C
from runtime.errors import ArtifactError

FORMAT = "recycle-export-artifacts"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path, check_hashes: bool = True) -> dict:
    """Read an export folder's manifest, checking format, version, contract and hashes.

    Raises:
        ArtifactError: no manifest, another format, version or KV contract, or a file
            missing or changed since export; the message says what to re-run.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST}: not an export folder; "
                            f"run `cli.py export --model CKPT --out {folder}`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-run `cli.py export`") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {manifest.get('format')!r} version "
                            f"{manifest.get('format_version')!r}, but this runtime reads {FORMAT!r} "
                            f"version {FORMAT_VERSION}: re-run `cli.py export` with this version")
    contract = manifest.get("kv", {}).get("contract")
    if contract != C.CONTRACT_NAME:
        raise ArtifactError(f"{path}: KV contract {contract!r}, but this runtime implements "
                            f"{C.CONTRACT_NAME!r}: re-run `cli.py export` with this version")
    if check_hashes:
        for file, digest in manifest.get("files", {}).items():
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
    manifest: dict

    @classmethod
    def load(cls, folder: Path, check_hashes: bool = True) -> "Artifacts":
        """Raises: ArtifactError (see read_manifest)."""
        return cls(Path(folder), read_manifest(folder, check_hashes))

    @property
    def dims(self) -> C.Dims:
        return C.Dims.from_config(self.manifest["config"], self.manifest["dtype"])

    @property
    def max_seq_len(self) -> int:
        return self.manifest["config"]["max_seq_len"]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return tuple(self.manifest["generation"]["eos_token_ids"])

    @property
    def pad_token_id(self) -> int:
        pad = self.manifest["generation"].get("pad_token_id")
        return 0 if pad is None else pad

    def graph_path(self, name: str) -> Path:
        return self.folder / self.manifest["graphs"][name]["file"]

    def codec(self):
        """The TextCodec for this export's tokenizer and chat template.

        Raises: GenerationError when the export has no tokenizer."""
        from runtime.tokenizer import TextCodec

        tokenizer = self.manifest.get("tokenizer")
        text = (self.folder / tokenizer).read_text() if tokenizer else None
        return TextCodec.from_json(text, self.manifest["generation"].get("chat_template"), str(self.folder))
