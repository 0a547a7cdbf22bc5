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
import logging
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from runtime.errors import ArtifactError

log = logging.getLogger(__name__)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_text(path: Path, error: type = ArtifactError, fix: str = "") -> str:
    """A file's text, which must be UTF-8.

    Raises: `error` when the file cannot be read or is not UTF-8 (`fix` appended)."""
    suffix = f"; {fix}" if fix else ""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text (byte {exc.start}){suffix}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror}){suffix}") from None


def read_json(path: Path, error: type = ArtifactError, fix: str = ""):
    """A JSON file's value (any JSON type: the caller's record reader checks it).

    Raises: `error` when the file cannot be read, is not UTF-8 or not JSON (`fix` appended)."""
    text = read_text(path, error, fix)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise error(f"{path} is not valid JSON ({exc}){'; ' + fix if fix else ''}") from None


def read_record(path: Path, format_: str) -> dict | None:
    """A record file's JSON object when its "format" is `format_`, else None (unreadable,
    not JSON, another format). For deciding whether a folder is one of ours, never raises."""
    try:
        data = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == format_ else None


def listed_files(record: dict | None, key: str = "files") -> set[str] | None:
    """The plain file names a record's {name: sha256} map lists; None without a record."""
    if record is None:
        return None
    listed = record.get(key)
    names = listed if isinstance(listed, dict) else {}
    return {n for n in names if isinstance(n, str) and n and Path(n).name == n and n not in (".", "..")}


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


# Hidden siblings of an output folder `NAME`: `.NAME.partial-PID-XXXX` stages a new version,
# `.NAME.old-*` was used by earlier versions of this module to swap folders.
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)?")
# Written into a staging folder when its files start moving into the output folder: the
# names to remove and to move in, so that the next run can finish a swap that was killed.
SWAP_JOURNAL = ".swap.json"


def _alive(pid: int | None) -> bool:
    """Whether the run that named a staging folder may still be working in it."""
    if pid is None:
        return False  # named by an earlier version of this module, without a process id
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _finish_swap(staging: Path, out: Path, marker: str, remove: list[str], move: list[str]) -> None:
    """Remove the earlier version's files `remove` from `out` (the marker first, so that the
    folder reads as incomplete until the end), then move the staged entries `move` in, the
    marker last. Idempotent: a run killed half-way is finished by calling it again."""
    if not (staging / marker).exists():
        return  # the new marker is in place: the swap was complete
    _remove(out / marker)
    for name in remove:
        staged = (staging / name).exists()
        if name != marker and (name not in move or (staged and (out / name).is_dir())):
            _remove(out / name)
    for name in sorted(move, key=lambda n: n == marker):
        if (staging / name).exists():
            os.replace(staging / name, out / name)


def clean_stale_staging(out: Path, marker: str) -> list[Path]:
    """Remove the hidden staging folders of `out` left by runs that were killed (their
    process is gone). A run killed while moving its files into `out` is finished first, so
    `out` holds a complete version again. Returns the folders removed."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for entry in sorted(out.parent.iterdir()):
        match = _STAGING.match(entry.name)
        if not match or match["name"] != out.name or not entry.is_dir():
            continue
        pid = int(match["pid"]) if match["pid"] else None
        if _alive(pid):
            continue
        journal = entry / SWAP_JOURNAL
        if journal.is_file() and out.is_dir():
            try:
                plan = json.loads(journal.read_text())
                remove, move = list(plan["remove"]), list(plan["move"])
            except (json.JSONDecodeError, KeyError, TypeError):
                remove = move = []
            safe = [n for n in remove + move if isinstance(n, str) and Path(n).name == n and n not in (".", "..")]
            if len(safe) == len(remove) + len(move):
                log.warning("finishing the replacement of %s that a killed run left half done", out)
                _finish_swap(entry, out, marker, remove, move)
        log.info("removing %s, left by a run that was killed", entry)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def check_output_folder(out: Path, marker: str, owned: Callable[[Path], Iterable[str] | None]) -> set[str]:
    """Check that the project may write the folder `out`; return the names of the entries
    of an earlier version there (`owned(out)`: what its record says it wrote, None when
    `out` holds no earlier artifact of this kind).

    Raises:
        ArtifactError: `out` is a file, or a non-empty folder without an earlier artifact
            (its files are named: nothing of the user's is ever replaced).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} is a file; give a directory to write into")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return set()
    earlier = owned(out) if (out / marker).is_file() else None
    if earlier is None:
        shown = ", ".join(f"{n}/" if (out / n).is_dir() else n for n in entries[:3])
        more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
        raise ArtifactError(f"{out} holds files this project did not write ({shown}{more}) and no earlier "
                            f"{marker}; choose an empty or new directory")
    return set(earlier) | {marker}


@contextmanager
def staged_folder(out: Path, marker: str, owned: Callable[[Path], Iterable[str] | None]) -> Iterator[Path]:
    """Yield a hidden staging folder beside `out`; on success its entries replace the
    project's own files in `out`, and nothing else in `out` is touched.

    `marker` is the record file that makes a folder an artifact (manifest.json, engine.json,
    config.json); `owned(out)` reads an earlier version's record and returns the names it
    wrote (None: not an artifact of this kind). A new `out` is the staging folder renamed in
    one step. An existing one keeps the user's files (notes, results, the engines built
    inside an export): the earlier version's files are removed, the marker first, then the
    new ones are renamed in, the marker last, so a reader finds either a complete version or
    no marker. Whatever interrupts the work (an error, Ctrl-C) removes the staging folder;
    a run killed outright leaves it, and the next run on `out` removes it (finishing the
    renames first when they had started).

    Raises:
        ArtifactError: `out` is a file, or a folder holding files the project did not write
            and no earlier artifact, or a new file would replace one of the user's.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(out, marker)
    earlier = check_output_folder(out, marker, owned)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        if not out.is_dir() or not any(out.iterdir()):
            os.replace(tmp, out)  # one rename (onto an empty folder too)
            return
        move = sorted(p.name for p in tmp.iterdir())
        if marker not in move:
            raise AssertionError(f"staged {out} without its {marker}")
        clash = [n for n in move if n not in earlier and (out / n).exists()]
        if clash:
            raise ArtifactError(f"{out / clash[0]} was not written by this project (the earlier {marker} "
                                f"does not list it) and would be replaced; move it away and run again")
        remove = sorted(n for n in earlier if (out / n).exists() or (out / n).is_symlink())
        write_json(tmp / SWAP_JOURNAL, {"remove": remove, "move": move})
        _finish_swap(tmp, out, marker, remove, move)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
