"""Writing artifact folders atomically, and hashing their files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from runtime.artifacts import sha256
from runtime.errors import ArtifactError


def hash_files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name not in skip}


def write_json(path: Path, data: dict) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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
