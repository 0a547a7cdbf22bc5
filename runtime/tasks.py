"""Task sets: benchmark prompts of several kinds, read from a JSONL file (one task a line),
for `cli.py bench --task-set` and `cli.py eval --task-set`.

A line is {"kind", "messages": [{"role", "content"}, ...]} or {"kind", "prompt": "..."} (one
user turn), with optional "id", "source" (a list of documents, or one) and "licence"; other
fields are ignored, so a set that carries references or metadata loads as it is. Kinds
outside KINDS are kept and reported after the known ones. benchmarks/tasks/README.md
describes the `real` set and where its texts come from. Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import TaskSetError
from runtime.records import Fields

ROOT = Path(__file__).resolve().parents[1]
TASK_SETS = {"real": ROOT / "benchmarks" / "tasks" / "real_tasks.jsonl"}
KINDS = ("chat", "translation", "summarization", "qa", "math", "rag")  # the order reports use
ROLES = ("system", "user", "assistant")
_FIX = "fix the task file"


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Task:
    id: str
    kind: str
    messages: tuple[Message, ...]  # the last from the user
    source: tuple[str, ...]  # package:path of each document the text came from
    licence: str

    def chat(self) -> list[dict]:
        """The messages as a chat template takes them."""
        return [{"role": m.role, "content": m.content} for m in self.messages]


def resolve(name: str) -> Path:
    """The file of a task set: a name from TASK_SETS or a path to a JSONL file.

    Raises: TaskSetError when neither names an existing file.
    """
    path = TASK_SETS.get(name, Path(name))
    if not path.is_file():
        known = ", ".join(TASK_SETS)
        raise TaskSetError(f"task set {name!r} is neither a known name ({known}) nor a file")
    return path


def _string(fields: Fields, key: str) -> str:
    value = fields.get(key, str)
    if not value.strip():
        fields.fail(key, "must not be empty")
    return value


def _messages(fields: Fields, where: str) -> tuple[Message, ...]:
    """A task's turns: its "messages", or its "prompt" as one user turn (exactly one of them)."""
    if ("messages" in fields.data) == ("prompt" in fields.data):
        fields.fail("messages", "or prompt (one user turn) must be given, and not both")
    if "prompt" in fields.data:
        return (Message("user", _string(fields, "prompt")),)
    turns = fields.get("messages", list)
    if not turns:
        fields.fail("messages", "must hold at least one message")
    messages = []
    for i, turn in enumerate(turns):
        message = Fields(turn, where, _FIX, f"messages[{i}].", TaskSetError)
        messages.append(Message(message.choice("role", ROLES), _string(message, "content")))
    if messages[-1].role != "user":
        fields.fail("messages", f"must end with a user message, not {messages[-1].role!r}")
    return tuple(messages)


def _task(line: str, where: str, number: int) -> Task:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise TaskSetError(f"{where}: not valid JSON ({e.msg}); {_FIX}") from None
    fields = Fields(data, where, _FIX, error=TaskSetError)
    kind = _string(fields, "kind").strip()
    given = fields.get("id", (str, int), optional=True)
    task_id = f"line-{number}" if given is None else str(given).strip()
    if not task_id:
        fields.fail("id", "must not be empty")
    messages = _messages(fields, where)
    source = fields.get("source", (list, str), optional=True) or []
    source = [source] if isinstance(source, str) else source
    if not all(isinstance(s, str) and s.strip() for s in source):
        fields.fail("source", "must be a string or a list of non-empty strings")
    licence = fields.get("licence", str, optional=True) or ""
    return Task(task_id, kind, messages, tuple(source), licence)


def load_tasks(name: str) -> list[Task]:
    """Every task of a set (a name from TASK_SETS or a JSONL path), in file order; blank
    lines are skipped.

    Raises: TaskSetError for a missing file, an invalid line (naming its file, line and
        field), a repeated id, or a file with no tasks.
    """
    path = resolve(name)
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            task = _task(line, f"{path}:{number}", number)
            if task.id in seen:
                raise TaskSetError(f"{path}:{number}: id {task.id!r} repeats line {seen[task.id]}; {_FIX}")
            seen[task.id] = number
            tasks.append(task)
    if not tasks:
        raise TaskSetError(f"{path} holds no tasks")
    return tasks


def select(tasks: list[Task], kinds: tuple[str, ...] | None = None, per_kind: int | None = None) -> list[Task]:
    """The tasks of the chosen kinds (all by default), the first `per_kind` of each, grouped
    by kind: KINDS in their order, then any other kind in the order the set first has it.

    Raises: TaskSetError for a kind the set lacks, or per_kind < 1.
    """
    if per_kind is not None and per_kind < 1:
        raise TaskSetError(f"--per-kind must be at least 1, got {per_kind}")
    present = list(dict.fromkeys(t.kind for t in tasks))
    for kind in kinds or ():
        if kind not in present:
            raise TaskSetError(f"the task set has no {kind} tasks; it has {', '.join(present)}")
    wanted = kinds or present
    ordered = [k for k in KINDS if k in wanted] + [k for k in present if k in wanted and k not in KINDS]
    return [t for kind in ordered for t in [t for t in tasks if t.kind == kind][:per_kind]]


def parse_kinds(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated --kinds value; None or blank means every kind."""
    kinds = tuple(k.strip() for k in (text or "").split(",") if k.strip())
    return kinds or None


def fit(tasks: list[Task], prompts: list[list[int]], max_seq_len: int,
        max_new_tokens: int) -> tuple[list[Task], list[list[int]], list[Task]]:
    """Split encoded tasks into those whose prompt leaves room for max_new_tokens within
    max_seq_len and those that do not: (kept tasks, their prompts, skipped tasks)."""
    kept = [(t, p) for t, p in zip(tasks, prompts, strict=True) if len(p) + max_new_tokens <= max_seq_len]
    kept_ids = {t.id for t, _ in kept}
    return [t for t, _ in kept], [p for _, p in kept], [t for t in tasks if t.id not in kept_ids]


@dataclass
class EncodedTasks:
    prompts: list[list[int]]  # token ids through the chat template, grouped by kind
    kinds: list[str]  # the kind of each prompt
    skipped: list[Task]  # too long to leave room for the new tokens
    room: int  # the longest prompt kept: max_seq_len - max_new_tokens


def encode_task_set(generator, name: str, kinds: tuple[str, ...] | None = None, per_kind: int | None = None,
                    max_new_tokens: int = 64) -> EncodedTasks:
    """Load, select and encode a task set for `generator` (a runtime Generator: its
    encode_messages and capacity), skipping prompts with no room for max_new_tokens.

    Raises: TaskSetError as load_tasks and select, or when every chosen prompt is too long;
        GenerationError for a model without a tokenizer or chat template.
    """
    tasks = select(load_tasks(name), kinds, per_kind)
    ids = [generator.encode_messages(t.chat()) for t in tasks]
    room = generator.capacity - max_new_tokens
    tasks, ids, skipped = fit(tasks, ids, generator.capacity, max_new_tokens)
    if not tasks:
        raise TaskSetError(f"no prompt of task set {name!r} fits {room} tokens; lower --max-new-tokens "
                           f"or export with a larger --max-seq-len")
    return EncodedTasks(ids, [t.kind for t in tasks], skipped, room)


def source_documents(name: str) -> list[str]:
    """Every source document a task set quotes (package:path), sorted: the documents that
    training on real text must leave out.

    Raises: TaskSetError as load_tasks.
    """
    return sorted({s for task in load_tasks(name) for s in task.source})
