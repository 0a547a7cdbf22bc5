"""Each command's third-party imports are covered by the extras it is documented to need
(pyproject.toml), read from the source without installing anything: a deployment machine
with `pip install 'recycle-export[onnxruntime]'` must be able to build CPU engines."""

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("cli", "recycle_export", "engines", "runtime", "serve")
# Import name -> distribution name, where they differ or matter.
DISTRIBUTIONS = {"onnx_ir": "onnx-ir", "cuda": "cuda-python", "jinja2": "jinja2", "yaml": "pyyaml"}
# Backends a command loads only when asked for them (another extra's job), and packages a
# command uses only when present (bench draws its chart with matplotlib, else notes it).
NOT_FOLLOWED = {"runtime.backends.tensorrt", "engines.tensorrt", "runtime.cuda", "engines.ort"}
OPTIONAL = {"matplotlib"}
# Third-party modules whose own imports a command reaches (read from their installed source).
THIRD_PARTY_FOLLOWED = {"onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization.quantize"}

# command -> (modules it runs, extras README.md tells its users to install)
COMMANDS = {
    "import-gguf": (("recycle_export.gguf_import", "recycle_export.checkpoint"), ("export",)),
    "export": (("recycle_export.export",), ("export", "onnxruntime")),
    "validate": (("recycle_export.validate",), ("export", "onnxruntime")),
    "inspect": (("recycle_export.describe",), ("export", "onnxruntime")),
    "train-recycler": (("recycle_export.train",), ("export", "onnxruntime")),  # onnxruntime: --answers-artifacts
    "build --target cpu": (("engines.build", "engines.ort", "engines.ort_fused"), ("onnxruntime",)),
    "build --target ort-cuda": (("engines.build", "engines.ort"), ("onnxruntime-gpu",)),
    **{f"build --target {t} ({extra})": (("engines.build", "engines.tensorrt", "runtime.backends.tensorrt",
                                           "runtime.cuda"), (extra,))
       for t, extra in (("t4", "tensorrt10"), ("orin", "jetson"), ("hopper", "tensorrt"),
                        ("hopper", "tensorrt-cu13"))},
    "generate --artifacts": (("runtime.generator", "runtime.backends", "runtime.backends.onnxruntime",
                              "runtime.engines", "runtime.tokenizer"), ("onnxruntime",)),
    "bench": (("runtime.bench", "runtime.backends.onnxruntime", "runtime.tokenizer"), ("onnxruntime",)),
    "eval": (("runtime.evaluate", "runtime.backends.onnxruntime", "runtime.tokenizer"), ("onnxruntime",)),
    "serve": (("serve.app", "runtime.generator", "runtime.backends.onnxruntime", "runtime.engines",
               "runtime.tokenizer"), ("onnxruntime", "serve")),
}


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def imports_of(source: str, top_level_only: bool = False) -> set[str]:
    """Modules a source file imports; with `top_level_only`, those its module body imports
    when it is imported (a library's lazy, optional imports left out)."""
    names = set()
    tree = ast.parse(source)
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_file(module: str) -> Path | None:
    path = ROOT / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(roots) -> set[str]:
    """Top-level third-party packages that the modules `roots` import, following the
    project's own modules (and THIRD_PARTY_FOLLOWED) transitively."""
    seen, todo, found = set(), list(roots), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        top = module.split(".")[0]
        if top in PROJECT:
            file = project_file(module)
            if file is None:
                continue  # `from runtime import contract` names a module, handled as its own entry
            for name in imports_of(file.read_text()):
                if name.split(".")[0] in PROJECT:
                    if name not in NOT_FOLLOWED or name in roots:
                        todo.append(name)
                else:
                    todo.append(name)
        elif top not in sys.stdlib_module_names:
            found.add(top)
            if module in THIRD_PARTY_FOLLOWED:
                spec = importlib.util.find_spec(module)
                if spec and spec.origin:
                    todo.extend(n for n in imports_of(Path(spec.origin).read_text(), top_level_only=True)
                                if n.split(".")[0] != top)
    return found


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_imports_are_in_its_extras(command):
    project = pyproject()
    modules, extras = COMMANDS[command]
    provided = {requirement_name(r) for r in project["dependencies"]}
    for extra in extras:
        provided |= {requirement_name(r) for r in project["optional-dependencies"][extra]}
    if "onnxruntime-gpu" in provided:
        provided.add("onnxruntime")  # the same `onnxruntime` module
    if any(p.startswith("tensorrt-cu") for p in provided) or "jetson" in extras:
        provided.add("tensorrt")  # the `tensorrt` module of a CUDA-specific wheel, or JetPack's own
    needed = {DISTRIBUTIONS.get(name, name).lower().replace("_", "-") for name in third_party_imports(modules)}
    missing = sorted(needed - provided - OPTIONAL)
    assert not missing, f"`{command}` imports {missing}, which its extras {list(extras)} do not install"


def test_cpu_builds_reach_onnxruntimes_quantizer():
    """The int4 build imports MatMulNBitsQuantizer, which imports onnx_ir: the check must see it."""
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed")
    assert "onnx_ir" in third_party_imports(COMMANDS["build --target cpu"][0])


def test_tensorrt_extras_pin_what_list_targets_says():
    """Each TensorRT stack's extra pins the cuda-python and TensorRT that `build --list-targets`
    names for it: cuda-python 13 on a CUDA 12 driver fails at the first CUDA call."""
    from engines.targets import STACKS, TARGETS

    extras = pyproject()["optional-dependencies"]
    for name, stack in STACKS.items():
        pins = {requirement_name(r): r[len(requirement_name(r)):] for r in extras[name]}
        assert pins["cuda-python"] == stack.cuda_python, name
        cuda_major = stack.cuda.split(".")[0]
        assert pins["cuda-python"] == f">={cuda_major},<{int(cuda_major) + 1}", name
        trt = [p for p in pins if p.startswith("tensorrt")]
        if name == "jetson":
            assert not trt  # JetPack's TensorRT
        else:
            assert trt == [f"tensorrt-cu{cuda_major}"], name
            assert pins[trt[0]] == (">=10.0,<11" if stack.tensorrt == "10.x" else ">=10.0,<12"), name
    assert {s for t in TARGETS.values() for s in t.stacks} == set(STACKS)
