"""Task sets: the committed real-task set loads, a set in the plain form (kind, prompt,
source) loads too, and every kind of bad line is refused with an error that names the file,
the line and the field."""

import json

import pytest

from runtime.errors import TaskSetError
from runtime.tasks import KINDS, TASK_SETS, fit, load_tasks, parse_kinds, select, source_documents
from runtime.tokenizer import TextCodec
from tests.conftest import char_tokenizer_json


def _task(**overrides) -> dict:
    task = {"id": "chat-01", "kind": "chat", "messages": [{"role": "user", "content": "Hi"}],
            "source": ["recycle-export:tests"], "licence": "Apache-2.0"}
    return {**task, **overrides}


def _write(tmp_path, *tasks) -> str:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join((t if isinstance(t, str) else json.dumps(t)) + "\n" for t in tasks))
    return str(path)


def test_the_real_set_has_every_kind_and_lists_its_documents():
    tasks = load_tasks("real")
    assert TASK_SETS["real"].stat().st_size < 1_500_000
    for kind in KINDS:
        assert sum(t.kind == kind for t in tasks) >= 10, kind
    assert any(len(t.messages) > 1 for t in tasks if t.kind == "chat")
    assert all(t.id.startswith(f"{t.kind}-") and t.source and t.licence for t in tasks)  # optional elsewhere
    documents = source_documents("real")
    assert "base-files:/usr/share/common-licenses/GPL-3" in documents
    assert all(":" in d for d in documents)


def test_select_orders_by_kind_and_takes_the_first_of_each(tmp_path):
    path = _write(tmp_path, _task(id="m1", kind="math"), _task(id="c1"), _task(id="m2", kind="math"),
                  _task(id="c2"), "")
    assert [t.id for t in select(load_tasks(path))] == ["c1", "c2", "m1", "m2"]
    assert [t.id for t in select(load_tasks(path), ("math",), 1)] == ["m1"]
    assert parse_kinds(" math, chat ,") == ("math", "chat") and parse_kinds("") is None
    with pytest.raises(TaskSetError, match="has no poems tasks; it has math, chat"):
        select(load_tasks(path), ("poems",))
    with pytest.raises(TaskSetError, match="has no rag tasks"):
        select(load_tasks(path), ("rag",))
    with pytest.raises(TaskSetError, match="--per-kind must be at least 1"):
        select(load_tasks(path), per_kind=0)


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (_task(kind=" "), "field kind must not be empty"),
    ({k: v for k, v in _task().items() if k != "kind"}, "field kind is missing"),
    (_task(id=""), "field id must not be empty"),
    (_task(id=1.5), "field id must be str or int, not float"),
    (_task(messages=[]), "field messages must hold at least one message"),
    (_task(messages=[{"role": "bot", "content": "x"}]), "field messages[0].role is 'bot'"),
    (_task(messages=[{"role": "user", "content": 3}]), "field messages[0].content must be str, not int"),
    (_task(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]),
     "must end with a user message, not 'assistant'"),
    (_task(source=[""]), "field source must be a string or a list of non-empty strings"),
    (_task(source=3), "field source must be list or str, not int"),
    (_task(licence=["MIT"]), "field licence must be str, not list"),
    (_task(prompt="x"), "field messages or prompt (one user turn) must be given, and not both"),
    ({"kind": "chat"}, "field messages or prompt (one user turn) must be given"),
    ({"kind": "chat", "prompt": ""}, "field prompt must not be empty"),
    ({"kind": "chat", "prompt": [{"role": "user", "content": "x"}]}, "field prompt must be str, not list"),
])
def test_bad_lines_are_refused_naming_the_line_and_field(tmp_path, line, problem):
    path = _write(tmp_path, _task(id="ok"), line)
    with pytest.raises(TaskSetError) as e:
        load_tasks(path)
    assert str(e.value).startswith(f"{path}:2: ") and problem in str(e.value)


def test_the_plain_form_loads_with_defaults_and_other_fields_are_ignored(tmp_path):
    path = _write(tmp_path, {"kind": "summarization", "prompt": "Summarize: ...", "source": "a report"},
                  {"kind": "code", "prompt": "Write a loop.", "reference": "for ...", "id": 7},
                  _task(messages=[{"role": "user", "content": "Hi", "name": "ann"}]),
                  {"kind": "chat", "prompt": "Hello"})
    tasks = load_tasks(path)
    assert [(t.id, t.kind, t.source, t.licence) for t in tasks] == [
        ("line-1", "summarization", ("a report",), ""), ("7", "code", (), ""),
        ("chat-01", "chat", ("recycle-export:tests",), "Apache-2.0"), ("line-4", "chat", (), "")]
    assert tasks[0].chat() == [{"role": "user", "content": "Summarize: ..."}]
    assert tasks[2].chat() == [{"role": "user", "content": "Hi"}]
    # Kinds the project knows come first, in KINDS order; others follow as the set has them.
    assert [t.id for t in select(tasks)] == ["chat-01", "line-4", "line-1", "7"]
    assert [t.id for t in select(tasks, ("code",))] == ["7"]


def test_missing_sets_empty_files_and_repeated_ids(tmp_path):
    with pytest.raises(TaskSetError, match="neither a known name \\(real\\) nor a file"):
        load_tasks("nonesuch")
    with pytest.raises(TaskSetError, match="holds no tasks"):
        load_tasks(_write(tmp_path, ""))
    with pytest.raises(TaskSetError, match="id 'chat-01' repeats line 1"):
        load_tasks(_write(tmp_path, _task(), _task()))


def test_fit_skips_prompts_without_room_to_generate(tmp_path):
    tasks = load_tasks(_write(tmp_path, _task(id="a"), _task(id="b")))
    kept, prompts, skipped = fit(tasks, [[1] * 10, [1] * 11], max_seq_len=16, max_new_tokens=6)
    assert [t.id for t in kept] == ["a"] and prompts == [[1] * 10] and [t.id for t in skipped] == ["b"]


def test_a_conversation_goes_through_the_chat_template_whole():
    codec = TextCodec.from_json(char_tokenizer_json(), "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}|{% endfor %}",
                                "test")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "ok"}]
    assert codec.decode(codec.encode_messages(messages)) == "u:hi|a:yo|u:ok|"
    assert codec.encode_messages(messages[:1]) == codec.encode("hi", chat=True)
