"""Writing the project's files atomically, and hashing them. Standard library only.

Every file or folder the project writes (exports, engines, checkpoints, module files,
training state) goes through here: written under a hidden temporary name beside its
destination, then renamed into place, so a reader or an interrupted run never sees half
of one. The exporter, the engine builders, checkpoints and training all use this module,
so an engine build on a deployment machine needs no exporter package.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from runtime.errors import ArtifactError


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file directly inside `folder` (not its subfolders), by file name."""
    return {p.name: sha256(p) for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name not in skip}


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path`; when the block ends without an error
    it is renamed onto `path`, otherwise removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: dict) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half of it."""
    write_text(path, json.dumps(data, indent=2) + "\n")


@contextmanager
def staged_folder(out: Path, marker: str) -> Iterator[Path]:
    """Yield a hidden temporary sibling of `out`; on success it replaces `out` in one rename.

    Whatever interrupts the work (an error, Ctrl-C) removes the temporary folder, so `out`
    is either its previous complete self or the new complete folder, never half of one.
    `out` may be replaced only when empty or when it holds `marker` (an earlier artifact).

    Raises:
        ArtifactError: `out` is a file, or a folder holding unrelated files.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} is a file; give a directory to write into")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise ArtifactError(f"{out} holds unrelated files (no {marker}); choose an empty or new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
