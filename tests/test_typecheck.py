"""The modules that call TensorRT and CUDA, which no CI machine can run, type-check against
tensorrt-stubs (TensorRT 10.13's API less what TensorRT 11 removed), so a misspelled,
removed or wrongly called API fails here. mypy runs as CI would: `python -m mypy` from the
repository root with pyproject.toml's [tool.mypy]. Two more runs show the check bites: on
the modules with deliberate mistakes (mypy's --shadow-file), and on a snippet of wrong calls.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tensorrt_stubs import STUBS, is_installed

ROOT = Path(__file__).resolve().parents[1]
STUBS_DIR = ROOT / ".venv" / "tensorrt-stubs"  # pyproject.toml's mypy_path
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")

pytestmark = pytest.mark.typecheck


@pytest.fixture(scope="module")
def mypy(tmp_path_factory):
    """Run mypy with the project's configuration (and one cache for the module's runs)."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed: pip install -e '.[dev]'")
    if not is_installed(STUBS_DIR):
        pytest.fail(f"{STUBS} is not in {STUBS_DIR}: run `make` or `python -m tests.tensorrt_stubs {STUBS_DIR}`")
    cache = tmp_path_factory.mktemp("mypy-cache")

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                   "--cache-dir", str(cache), *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)

    return run


def errors(output: str) -> set[tuple[str, int, str]]:
    """(path, line, error code) of each error mypy printed."""
    found = set()
    for line in output.splitlines():
        match = ERROR.match(line)
        if match:
            found.add((Path(match["path"]).as_posix(), int(match["line"]), match["code"]))
    return found


def test_tensorrt_modules_type_check(mypy):
    out = mypy()
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("Success: no issues found in 3 source files"), out.stdout


# module -> (the text as it is, a mistake, the error code mypy must give); each applies once.
MISTAKES = {
    "engines/tensorrt.py": (
        ("builder.create_network(network_flags())", "builder.create_netwrk(network_flags())", "attr-defined"),
        ('tf32 = getattr(trt.BuilderFlag, "TF32", None)', "tf32 = trt.BuilderFlag.FP16", "attr-defined"),
        ("set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)",
         "set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)", "call-arg"),
        ("config.set_timing_cache(cache, ignore_mismatch=False)", "config.set_timing_cache(cache, ignore_mismatch=0.5)",
         "arg-type"),
    ),
    "runtime/backends/tensorrt.py": (
        ("ctx.execute_async_v3(self.stream)", "ctx.execute_async_v2(self.stream)", "attr-defined"),
        ("!= trt.TensorIOMode.OUTPUT", "!= trt.TensorIOMode.OUTPT", "attr-defined"),
        ("self.runtime = trt.Runtime(self.logger)", "self.runtime = trt.Runtime()", "call-arg"),
    ),
}


def test_the_check_finds_mistakes_in_the_modules(mypy, tmp_path):
    args, expected = [], set()
    for module, mistakes in MISTAKES.items():
        text = (ROOT / module).read_text()
        for right, wrong, code in mistakes:
            assert text.count(right) == 1, f"{module} no longer has {right!r} once: update MISTAKES"
            expected.add((module, text[:text.index(right)].count("\n") + 1, code))
            text = text.replace(right, wrong)
        shadow = tmp_path / module.replace("/", "_")
        shadow.write_text(text)
        args += ["--shadow-file", module, str(shadow)]
    out = mypy(*args)
    assert out.returncode == 1, out.stdout + out.stderr
    assert errors(out.stdout) == expected, out.stdout


# Calls as the modules make them; each wrong one says the error code mypy must report.
SNIPPET = '''
from __future__ import annotations

from pathlib import Path

import tensorrt as trt

from engines.tensorrt import network_flags
from runtime.backends.tensorrt import make_logger, shape_tuple


def build(path: Path) -> bytes:
    logger, errors = make_logger()
    builder = trt.Builder(logger)
    if not builder:  # E: truthy-bool
        raise RuntimeError("TensorRT raises TypeError instead: this is never true")
    network = builder.create_netwrk(network_flags())  # E: attr-defined
    network = builder.create_network(network_flags())
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))  # E: attr-defined
    parser = trt.OnnxParser(network)  # E: call-arg
    parser = trt.OnnxParser(network, logger)
    parser.parse_from_file(path)  # E: arg-type
    parser.parse_from_file(str(path))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP17)  # E: attr-defined
    config.set_flag(trt.BuilderFlag.FP16)  # E: attr-defined
    config.clear_flag(trt.BuilderFlag.TF32)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)  # E: call-arg
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    plan = builder.build_serialized_network(network, config)
    return bytes(plan)


def run(engine: trt.ICudaEngine, stream: int) -> tuple[int, ...]:
    context = engine.create_execution_context()
    context.execute_async_v2(stream)  # E: attr-defined
    context.set_tensor_address("input_ids", "0x7f00")  # E: arg-type
    context.execute_async_v3(stream)
    make_logger(trt.Logger())  # E: call-arg
    return shape_tuple(engine.get_tensor_shape("logits"))
'''


def test_the_check_finds_wrong_calls_in_a_snippet(mypy, tmp_path):
    snippet = tmp_path / "wrong_calls.py"
    snippet.write_text(SNIPPET)
    expected = {(snippet.as_posix(), number, line.rsplit("# E: ", 1)[1])
                for number, line in enumerate(SNIPPET.splitlines(), 1) if "# E: " in line}
    out = mypy(str(snippet))
    assert out.returncode == 1, out.stdout + out.stderr
    assert errors(out.stdout) == expected, out.stdout
