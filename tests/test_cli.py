"""The command line: one `Error: ...` line and exit status 1 for what a user gets wrong,
and the commands' output (tests of the library behind each command live beside its package)."""

import json
import re

import pytest
from click.testing import CliRunner

from cli import main
from recycle_export.checkpoint import Checkpoint, save_checkpoint
from recycle_export.export import ExportOptions, export
from runtime.artifacts import GenerationRecord
from tests.conftest import TINY


def test_cli_prints_one_error_line(tiny, tmp_path):
    saved = tmp_path / "ckpt"
    save_checkpoint(Checkpoint(tiny, True, GenerationRecord(eos_token_ids=(2,))), saved)
    (saved / "config.json").write_text(json.dumps({**TINY, "format": "recycle-export-checkpoint",
                                                   "format_version": 1, "n_layers": -2}))
    result = CliRunner().invoke(main, ["generate", "--model", str(saved), "--prompt", "hi"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {saved / 'config.json'}: config field 'n_layers' must be a positive integer, got -2"]


def test_validate_command_and_tampering(tiny_checkpoint, tmp_path):
    out = tmp_path / "art"
    export(tiny_checkpoint, out)
    result = CliRunner().invoke(main, ["validate", "--artifacts", str(out)])
    assert result.exit_code == 0 and "passed" in result.output
    result = CliRunner().invoke(main, ["inspect", "--artifacts", str(out)])
    assert result.exit_code == 0 and "past_key_values.2.key" in result.output and "warning:" in result.output
    with open(out / "recycle_step.onnx", "ab") as f:
        f.write(b"\0")
    result = CliRunner().invoke(main, ["validate", "--artifacts", str(out)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {out}/recycle_step.onnx changed since export; re-run `cli.py export`"


def test_eval_command_on_held_out_prompts_of_a_template_set(tiny_chat_checkpoint, tmp_path):
    """`cli.py eval` encodes held-out prompts of the chosen set and prints its figures."""
    export(tiny_chat_checkpoint, tmp_path / "art", ExportOptions(max_seq_len=256))  # character tokens
    args = ["eval", "--artifacts", str(tmp_path / "art"), "--prompts", "2", "--max-new-tokens", "6",
            "--template-set", "requests", "--json", str(tmp_path / "eval.json"), "--gates", "0,0.5,1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "held-out prompts: 2 of the requests set" in result.output
    assert "alternate's confidence gate" in result.output
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["prompts"] == 2 and [g["gate"] for g in written["gates"]] == [0.0, 0.5, 1.0]
    result = CliRunner().invoke(main, args[:4] + ["99999"] + args[5:])
    assert result.exit_code == 1 and "--prompts must be in 1..408" in result.output


@pytest.fixture(scope="module")
def tiny_chat_export(tiny_chat_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_chat_export") / "art"
    export(tiny_chat_checkpoint, out, ExportOptions(max_seq_len=256))  # character tokens
    return out


def _task_file(path, *lengths):
    """A task set of a multi-turn chat, a math prompt, and a translation prompt per length."""
    tasks = [{"id": "c1", "kind": "chat", "messages": [{"role": "user", "content": "Hi there"},
                                                        {"role": "assistant", "content": "Hello!"},
                                                        {"role": "user", "content": "Write a poem."}]},
             {"id": "m1", "kind": "math", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}]
    tasks += [{"id": f"t{n}", "kind": "translation", "messages": [{"role": "user", "content": "x" * n}]} for n in lengths]
    path.write_text("".join(json.dumps({**t, "source": ["recycle-export:tests"], "licence": "Apache-2.0"}) + "\n"
                            for t in tasks))
    return str(path)


def test_bench_on_a_task_set_reports_per_kind_and_skips_long_prompts(tiny_chat_export, tmp_path):
    tasks = _task_file(tmp_path / "tasks.jsonl", 300)  # 300 characters leave no room in 256 positions
    args = ["bench", "--artifacts", str(tiny_chat_export), "--task-set", tasks, "--max-new-tokens", "4",
            "--repeats", "1", "--warmup", "0", "--json", str(tmp_path / "b.json"), "--chart", str(tmp_path / "b.png")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "note: skipped 1 prompt(s) longer than 252 tokens (max_seq_len 256 - 4 new tokens): t300" in result.stderr
    rows = [line.split()[:3] for line in result.stdout.splitlines()]
    for kind, count in (("chat", "1"), ("math", "1"), ("overall", "2")):
        assert [[kind, count, s] for s in ("standard", "alternate", "verify")] == [r for r in rows if r[:1] == [kind]]
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["task_set"] == tasks and record["prompts"] == 2 and list(record["kinds"]) == ["chat", "math", "overall"]
    assert record["kinds"]["chat"][0]["tokens"] == 4

    result = CliRunner().invoke(main, args + ["--kinds", "translation"])
    assert result.exit_code == 1 and "Error: no prompt of task set" in result.output
    result = CliRunner().invoke(main, args + ["--kinds", "math,poems"])
    assert result.exit_code == 1 and "Error: the task set has no poems tasks; it has chat, math, translation" in result.output
    result = CliRunner().invoke(main, args + ["--prompt", "hi"])
    assert result.exit_code == 1 and "--task-set and --prompt both choose the prompts" in result.output


def test_eval_on_a_task_set_reports_per_kind(tiny_chat_export, tmp_path):
    tasks = _task_file(tmp_path / "tasks.jsonl", 20, 30)
    args = ["eval", "--artifacts", str(tiny_chat_export), "--task-set", tasks, "--kinds", "math,translation",
            "--per-kind", "1", "--max-new-tokens", "5", "--json", str(tmp_path / "e.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "task set" in result.output and "alternate NLL cost" in result.output
    rows = [line.split()[:2] for line in result.stdout.splitlines()[3:]]
    assert rows == [["translation", "1"], ["math", "1"], ["overall", "2"]]  # kinds in KINDS order
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["prompts"] == 2 and 0 < record["kinds"]["translation"]["agreement_tokens"] <= 5
    result = CliRunner().invoke(main, ["eval", "--artifacts", str(tiny_chat_export), "--per-kind", "1"])
    assert result.exit_code == 1 and "add --task-set NAME" in result.output


def test_list_targets():
    result = CliRunner().invoke(main, ["build", "--list-targets"])
    assert result.exit_code == 0
    for name in ("cpu", "ort-cuda", "ort-tensorrt", "t4", "orin", "ampere", "ada", "hopper"):
        assert f"\n{name} " in result.output
    assert "JetPack 6" in result.output and "sm87" in result.output
    lines = result.output.split("with one of these")[1].strip().splitlines()
    rows = {tuple(re.split(r"  +", line)[:5]) for line in lines[1:]}  # target, TensorRT, CUDA, cuda-python, install
    assert ("orin", "10.3", "12.6", ">=12,<13", "pip install 'recycle-export[jetson]'") in rows
    assert ("t4", "10.x", "12.x", ">=12,<13", "pip install 'recycle-export[tensorrt10]'") in rows
    for gpu in ("ampere", "ada", "hopper"):
        assert (gpu, "10.x or 11.x", "12.x", ">=12,<13", "pip install 'recycle-export[tensorrt]'") in rows
        assert (gpu, "10.x or 11.x", "13.x", ">=13,<14", "pip install 'recycle-export[tensorrt-cu13]'") in rows


def test_tensorrt_absent_gives_a_clear_error(tiny_artifacts):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    result = CliRunner().invoke(main, ["build", "--artifacts", str(tiny_artifacts), "--target", "t4"])
    assert result.exit_code == 1  # fp16 by default, and this export is float32: said before TensorRT is needed
    assert result.output.startswith("Error: t4-fp16 needs a float16 export") and "--dtype float16" in result.output
    args = ["build", "--artifacts", str(tiny_artifacts), "--target", "t4", "--precision", "fp32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output.startswith("Error: TensorRT is not installed: pip install 'recycle-export[tensorrt]'")
    result = CliRunner().invoke(main, ["build", "--artifacts", str(tiny_artifacts), "--target", "ort-cuda"])
    assert result.exit_code == 1 and "needs CUDAExecutionProvider" in result.output


def test_bench_without_matplotlib_writes_json_and_skips_the_chart(tiny_chat_checkpoint, tmp_path, monkeypatch):
    import sys

    export(tiny_chat_checkpoint, tmp_path / "art", ExportOptions(max_seq_len=128))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    result = CliRunner().invoke(main, ["bench", "--artifacts", str(tmp_path / "art"), "--repeats", "1",
                                       "--max-new-tokens", "3", "--prompt", "hi", "--strategies", "standard",
                                       "--json", str(tmp_path / "b.json"), "--chart", str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.output
    assert "no chart: matplotlib is not installed" in result.output
    assert json.loads((tmp_path / "b.json").read_text())["strategies"][0]["strategy"] == "standard"
    assert not (tmp_path / "b.png").exists()


def test_a_generation_with_nothing_decoded_has_no_decode_speed():
    from runtime.request import Stats

    assert Stats(generated_tokens=0, batch=1, decode_seconds=1e-6).decode_tokens_per_s is None
    assert Stats(generated_tokens=1, batch=1, decode_seconds=1e-6).decode_tokens_per_s is None
    assert Stats(generated_tokens=3, batch=1, decode_seconds=0.5).decode_tokens_per_s == 4.0


def test_reimport_and_reexport_keep_a_users_file(tmp_path):
    """import-gguf and export into folders that hold an earlier result plus a user's file."""
    from tests.conftest import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    runner = CliRunner()
    commands = {"ckpt": ["import-gguf", "--gguf", str(gguf), "--out", str(tmp_path / "ckpt")],
                "art": ["export", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "art")]}
    for folder, args in commands.items():
        assert runner.invoke(main, args).exit_code == 0
        (tmp_path / folder / "notes.txt").write_text("mine")
        result = runner.invoke(main, args)  # again, into the folder with the user's file
        assert result.exit_code == 0, result.output
        assert (tmp_path / folder / "notes.txt").read_text() == "mine"
