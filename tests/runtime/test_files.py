"""runtime/files.py: staged folders replace only the project's own files, and a killed run's
staging folder is cleaned (or its swap finished) by the next run on the same folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.errors import ArtifactError
from runtime.files import staged_folder, write_json

MARKER = "record.json"


def owned(folder: Path):
    """A toy record: {"format": "toy", "files": [...]}; None when the folder holds none."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return set(data["files"]) if data.get("format") == "toy" else None


def write_version(out: Path, files: dict[str, str]) -> None:
    with staged_folder(out, MARKER, owned) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
        write_json(tmp / MARKER, {"format": "toy", "files": sorted(files)})


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_new_folder_and_replacement_keep_the_users_files(tmp_path):
    out = tmp_path / "out"
    write_version(out, {"a.bin": "1", "old-only.bin": "1"})
    (out / "notes.txt").write_text("mine")
    (out / "my_results").mkdir()
    (out / "my_results" / "r.csv").write_text("x")
    (out / "engines" / "cpu-fp32").mkdir(parents=True)
    (out / "engines" / "cpu-fp32" / "engine.json").write_text("{}")
    write_version(out, {"a.bin": "2", "new-only.bin": "2"})
    assert tree(out) == {"a.bin": "2", "new-only.bin": "2", "notes.txt": "mine", "my_results/r.csv": "x",
                         "engines/cpu-fp32/engine.json": "{}",
                         MARKER: json.dumps({"format": "toy", "files": ["a.bin", "new-only.bin"]}, indent=2) + "\n"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def test_refuses_foreign_folder_naming_its_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("notes.txt", "b.txt", "c.txt", "d.txt"):
        (out / name).write_text("mine")
    with pytest.raises(ArtifactError, match=r"holds files this project did not write \(b.txt, c.txt, d.txt and 1 more\)"):
        write_version(out, {"a.bin": "1"})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="is a file"):
        write_version(tmp_path / "file", {"a.bin": "1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]


def test_never_replaces_a_user_file_with_a_new_file_of_the_same_name(tmp_path):
    out = tmp_path / "out"
    write_version(out, {"a.bin": "1"})
    (out / "b.bin").write_text("mine")
    with pytest.raises(ArtifactError, match="b.bin was not written by this project"):
        write_version(out, {"a.bin": "2", "b.bin": "2"})
    assert tree(out)["b.bin"] == "mine" and tree(out)["a.bin"] == "1"


def test_error_leaves_the_earlier_version(tmp_path):
    out = tmp_path / "out"
    write_version(out, {"a.bin": "1"})
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(out, MARKER, owned) as tmp:
            (tmp / "a.bin").write_text("2")
            raise KeyboardInterrupt
    assert tree(out)["a.bin"] == "1" and [p.name for p in tmp_path.iterdir()] == ["out"]


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_stale_staging_folders_of_killed_runs_are_removed(tmp_path):
    out = tmp_path / "out"
    pid = dead_pid()
    stale = [tmp_path / f".out.partial-{pid}-abcd", tmp_path / ".out.partial-x1y2z3",  # older, pid-less names
             tmp_path / f".out.old-{pid}"]
    for folder in stale:
        folder.mkdir()
        (folder / "big.bin").write_text("657 MB")
    (tmp_path / f".other.partial-{pid}-abcd").mkdir()  # another output's: not ours to remove
    live = tmp_path / f".out.partial-{os.getpid()}-live"  # a run still working
    live.mkdir()
    write_version(out, {"a.bin": "1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".other.partial-{pid}-abcd", live.name, "out"])


def test_a_swap_killed_half_way_is_finished_by_the_next_run(tmp_path):
    """A child process is SIGKILLed after moving one of two new files into place."""
    out = tmp_path / "out"
    write_version(out, {"a.bin": "1", "b.bin": "1", "gone.bin": "1"})
    (out / "notes.txt").write_text("mine")
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
import runtime.files as files
from tests.runtime.test_files import write_version
real = os.replace
moved = []
def replace(src, dst):
    real(src, dst)
    if files.SWAP_JOURNAL not in str(dst) and '.tmp-' not in str(src):
        moved.append(dst)
    if len(moved) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
write_version(__import__('pathlib').Path({str(out)!r}), {{"a.bin": "2", "b.bin": "2"}})
"""
    child = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    assert child.returncode == -9
    assert not (out / MARKER).exists()  # incomplete: readers refuse it
    assert any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir())
    write_version(tmp_path / "out", {"a.bin": "3"})  # the next run finishes the swap, then writes its own
    assert tree(out) == {"a.bin": "3", "notes.txt": "mine",
                         MARKER: json.dumps({"format": "toy", "files": ["a.bin"]}, indent=2) + "\n"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
