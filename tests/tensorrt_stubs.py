"""Install tensorrt-stubs (TensorRT 10.x's Python API, generated from the bindings by
pybind11-stubgen) for tests/test_typecheck.py, into a folder that only mypy reads:

    python -m tests.tensorrt_stubs .venv/tensorrt-stubs      (the Makefile runs this)

Why not a plain dependency: the package requires the TensorRT library itself
(tensorrt==10.13.0.35, gigabytes of CUDA wheels), so it is installed without its
dependencies; and not into site-packages, where its `tensorrt/__init__.pyi` would make
`import tensorrt` succeed as an empty namespace package on a machine without TensorRT.

Then the stubs are edited, each edit checked to apply exactly as often as expected (so a new
stubs version cannot slip through half edited):
- two kinds of syntax errors pybind11-stubgen wrote, which stop mypy: plugin methods with a
  parameter named `in` (renamed `in_`), and INetworkDefinition.add_scale_nd's required
  `channel_axis` after parameters with defaults (given a default);
- two kinds of names that resolve to Any, so the arguments they type go unchecked: `bool`
  in signatures and attributes means the module's own `tensorrt.bool` (a DataType), so it
  becomes `builtins.bool`; `typing_extensions.Buffer` (timing caches, serialized engines)
  is used without an import, which is added;
- the members TensorRT 11 removed are deleted (the BuilderFlag precision flags and
  NetworkDefinitionCreationFlag.EXPLICIT_BATCH, as tests/engines/fake_tensorrt.py lists
  them), so the code is checked against what both majors have.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.engines.fake_tensorrt import WEAK_TYPING_FLAGS

STUBS = "tensorrt-stubs==10.13.0.35.1"
BINDINGS = Path("tensorrt_bindings") / "tensorrt.pyi"
# What TensorRT 11 removed, per enum: deleted from the stubs.
REMOVED_IN_11 = {"BuilderFlag": WEAK_TYPING_FLAGS, "NetworkDefinitionCreationFlag": ("EXPLICIT_BATCH",)}
PATCHED_MARK = "# recycle-export: edited by tests/tensorrt_stubs.py"
# (pattern, replacement, how many times it must match)
SYNTAX_FIXES = (
    (r"\bin: list\[", "in_: list[", 4),
    (r"(power: Weights = None, channel_axis: int)\)", r"\1 = ...)", 1),
    (r"\nimport typing\n", "\nimport builtins\nimport typing\nimport typing_extensions\n", 1),
)
# Signatures and attribute annotations, where `bool` must mean builtins.bool.
ANNOTATED_LINE = re.compile(r"^( *def .*| +\w+: .*)$", re.MULTILINE)
BOOL_ANNOTATIONS = 376


def _substitute(text: str, pattern: str, replacement: str, expected: int) -> str:
    text, count = re.subn(pattern, replacement, text)
    if count != expected:
        raise SystemExit(f"{STUBS}: {pattern!r} matched {count} times, expected {expected}; "
                         "the stubs changed: update tests/tensorrt_stubs.py")
    return text


def edit(text: str) -> str:
    """The stubs' tensorrt.pyi parseable, its `bool` and `Buffer` meaning what they say, less
    the members TensorRT 11 removed."""
    for pattern, replacement, expected in SYNTAX_FIXES:
        text = _substitute(text, pattern, replacement, expected)
    count = 0

    def builtin_bool(line: re.Match) -> str:
        nonlocal count
        new, n = re.subn(r"\bbool\b", "builtins.bool", line[0])
        count += n
        return new

    text = ANNOTATED_LINE.sub(builtin_bool, text)
    if count != BOOL_ANNOTATIONS:
        raise SystemExit(f"{STUBS}: {count} `bool` annotations, expected {BOOL_ANNOTATIONS}; "
                         "the stubs changed: update tests/tensorrt_stubs.py")
    for enum, members in REMOVED_IN_11.items():
        for member in members:
            text = _substitute(text, rf"\n    {member}: typing\.ClassVar\[{enum}\][^\n]*", "", 1)
    return f"{PATCHED_MARK} ({STUBS})\n{text}"


def is_installed(folder: Path) -> bool:
    path = folder / BINDINGS
    return path.is_file() and path.read_text().startswith(f"{PATCHED_MARK} ({STUBS})")


def install(folder: Path) -> None:
    """pip-install the stubs into `folder` (no dependencies) and edit them there."""
    if is_installed(folder):
        return
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
                    "--upgrade", "--target", str(folder), STUBS], check=True)
    path = folder / BINDINGS
    path.write_text(edit(path.read_text()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tests.tensorrt_stubs FOLDER")
    install(Path(sys.argv[1]))
