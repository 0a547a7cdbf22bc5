"""Real-text training prompts for the recyclable module (the `real` data set of train-recycler).

Six kinds, as in the real-task benchmark (benchmarks/tasks/README.md): chat, translation,
summarization, qa, math, rag, built around documents that ship in Debian 12 packages
(recycle_export/documents.py) with requests written here. The base answers them itself
(self-distillation, recycle_export/distill_data.py), so what the module learns is the base's
own behaviour on such prompts: copying from a long context, translating, arithmetic.

Split by source document: every document the benchmark quotes is left out entirely (a
handbook section in every language, a manual page in every language, a Python doc page, a
licence text; runtime.tasks.source_documents), and of the rest, one document in ten (by a
hash of its key) is held out for the training's own evaluation. No public evaluation set
(Spec-Bench, MT-bench, CNN/DailyMail, XSum, WMT, Natural Questions, GSM8K) is used.
Standard library only; deterministic for a seed and the same package versions.
"""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from recycle_export.documents import (HANDBOOK, LICENSES, MAN, PYDOC, as_text, cut, handbook,
                                      manpage_description, pydoc)
from runtime.errors import ConfigError

KINDS = ("chat", "translation", "summarization", "qa", "math", "rag")
HELD_OUT_EVERY = 10  # one document in ten, by hash, is held out of training
PER_KIND = {"train": 240, "heldout": 8}  # prompts per kind and split (fewer where documents run out)
TRANSLATION_LANGUAGES = {"de-DE": "German", "fr-FR": "French", "es-ES": "Spanish", "it-IT": "Italian",
                         "pt-BR": "Portuguese"}
MAN_LANGUAGES = {"de": "German", "fr": "French", "es": "Spanish"}
LICENCE_FILES = ("GPL-2", "LGPL-2.1", "LGPL-3", "MPL-2.0", "Artistic", "GFDL-1.3", "BSD", "CC0-1.0")
# Python doc folders whose pages are prose (the C API and the "what's new" pages are mostly lists).
PYDOC_FOLDERS = ("tutorial", "howto", "faq", "library", "reference", "using")


@dataclass(frozen=True)
class Prompt:
    kind: str
    messages: tuple[tuple[str, str], ...]  # (role, content), the last from the user
    documents: tuple[str, ...]  # document keys (document_key) the text came from

    def chat(self) -> list[dict]:
        return [{"role": role, "content": content} for role, content in self.messages]


def document_key(source: str) -> str:
    """The document a source (`package:path`, as the task sets write it) belongs to, the same
    for every language of a translated document: `handbook:<section>`, `man:<man1/page.1>`,
    `pydoc:<folder/page>`, `licence:<name>`; other sources are their own key."""
    path = source.split(":", 1)[-1]
    if m := re.search(r"debian-handbook/html/[^/]+/sect\.(.+)\.html$", path):
        return f"handbook:{m[1]}"
    if m := re.search(r"/usr/share/man/[^/]+/(man\d/[^/]+?)(\.gz)?$", path):
        return f"man:{m[1]}"
    if m := re.search(r"python3/html/(?:_sources/)?(.+?)(\.rst\.txt|\.html)$", path):
        return f"pydoc:{m[1]}"
    if m := re.search(r"common-licenses/(.+)$", path):
        return f"licence:{m[1]}"
    return source


def _split_of(key: str) -> str:
    digest = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return "heldout" if digest % HELD_OUT_EVERY == 0 else "train"


@lru_cache(maxsize=1)
def _benchmark_documents() -> frozenset[str]:
    from runtime.tasks import source_documents

    return frozenset(document_key(s) for s in source_documents("real"))


def usable(key: str, split: str) -> bool:
    """Whether a document may give prompts to `split`: never one the benchmark quotes."""
    return key not in _benchmark_documents() and _split_of(key) == split


# Documents, read once.

@lru_cache(maxsize=None)
def _handbook_sections(lang: str = "en-US") -> tuple[str, ...]:
    return tuple(sorted(p.name[len("sect."):-len(".html")] for p in (HANDBOOK / lang).glob("sect.*.html")))


@lru_cache(maxsize=None)
def _handbook_blocks(section: str, lang: str = "en-US") -> tuple[str, ...]:
    return tuple(handbook(section, lang))


def _paragraphs(blocks, low: int = 25, high: int = 220) -> list[str]:
    """Prose paragraphs of `low` to `high` words (no headings, no indented code or listings)."""
    return [b for b in blocks if not b.startswith("#") and "\n" not in b and low <= len(b.split()) <= high]


def _title(blocks) -> str:
    """The document's first heading, as a reader would name it: "9.11. Hot Plugging: hotplug"
    -> "Hot Plugging: hotplug", "!importlib --- The implementation of !import" -> "importlib"."""
    if not blocks or not blocks[0].startswith("#"):
        return ""
    title = re.sub(r"^[\d.]+\s+", "", blocks[0].lstrip("#").strip()).replace("!", "")
    return title.split(" --- ")[0].strip()


@lru_cache(maxsize=None)
def _pydoc_pages() -> tuple[str, ...]:
    return tuple(sorted(str(p.relative_to(PYDOC)) for folder in PYDOC_FOLDERS
                        for p in (PYDOC / folder).glob("*.rst.txt") if p.name != "index.rst.txt"))


@lru_cache(maxsize=None)
def _pydoc_blocks(rel: str) -> tuple[str, ...]:
    """A Python doc page as paragraphs; a page title underlined with = or * becomes a heading."""
    blocks = []
    for block in pydoc(rel).split("\n\n"):
        lines = block.strip().splitlines()
        if len(lines) >= 2 and re.fullmatch(r"[=*\-~^]{3,}", lines[-1].strip()):
            blocks.append("#" + lines[-2].strip())
        elif lines:
            blocks.append(re.sub(r"\s+", " ", " ".join(lines)) if not block.startswith(" ") else block.strip("\n"))
    return tuple(blocks)


def _pydoc_key(rel: str) -> str:
    return f"pydoc:{rel.removesuffix('.rst.txt')}"


def _looks_foreign(text: str) -> bool:
    """A translated paragraph that is not still English (some translations are partial)."""
    return not re.search(r"\b(the|and|is|with|of)\b", text)


# Requests, written here (none from a public evaluation set).

SUMMARY_ASKS = (
    "Summarize the following text in one paragraph.\n\n{text}",
    "{text}\n\nGive me the key points of this text as a bulleted list.",
    "Please write a short summary of this documentation page.\n\n{text}",
    "{text}\n\nSummarize the above in three sentences.",
    "Can you sum up what this section says? Keep it short.\n\n{text}",
    "I have no time to read this. What do I need to know?\n\n{text}",
    "{text}\n\nWrite an abstract of about 80 words for the text above.",
    "Condense the following into a short overview for a beginner.\n\n{text}",
    "{text}\n\nWhat is this text about? Summarize it, then name its most important detail.",
    "Summarize this document for a colleague who asked what it covers.\n\n{text}",
)
QA_ASKS = (
    "{text}\n\nAccording to the text above, what is the main point? Answer in one or two sentences.",
    "{text}\n\nBased on this passage, {question}",
    "Read the passage and answer the question.\n\n{text}\n\nQuestion: {question}",
    "{text}\n\nWhich commands, files or programs does the passage mention, and what is each for?",
    "Here is an excerpt from the documentation:\n\n{text}\n\n{question} Answer briefly, using the excerpt.",
    "{text}\n\nExplain the passage above to a beginner in two or three sentences.",
)
TITLE_QUESTIONS = (
    "what does it say about {title}?", "what is {title} used for?", "why does {title} matter?",
    "what should a user know about {title}?", "how does {title} work?",
)
RAG_ASKS = (
    "Use the passages below to answer the question. Cite the passage numbers you rely on; if none of them "
    "answers it, say so.\n\n{passages}\n\nQuestion: {question}",
    "{passages}\n\nAnswer from the passages above only, naming the passage you used: {question}",
    "Question: {question}\n\nContext:\n\n{passages}\n\nAnswer the question with the context. Ignore passages that "
    "are not relevant.",
)
TRANSLATE_ASKS = (
    "Translate this {lang} text into English:\n\n{text}",
    "{text}\n\nPlease translate the paragraph above from {lang} into English.",
    "What does this {lang} paragraph mean? Translate it to English.\n\n{text}",
    "Give an English translation of the following {lang} text, keeping the technical terms.\n\n{text}",
    "Translate to English:\n\n{text}",
)
FIRST_TURNS = ("What is {title}?", "Can you tell me about {title}?", "I keep hearing about {title}. What is it?",
               "Explain {title} briefly.")
FOLLOW_UPS = (
    "Thanks! Now write a short email to my team explaining this.",
    "Can you turn that into a checklist I can follow?",
    "Write a short story in which a system administrator runs into this.",
    "Explain it again as if I were ten years old.",
    "Put the key points in a table with two columns.",
    "Write a short blog post introduction about it.",
    "Summarize what you said in one sentence.",
    "Give me three questions I could ask to check that I understood it.",
    "Write a friendly message to a new colleague about this.",
    "What are the common mistakes here, and how do I avoid them?",
)
WRITING_ASKS = (
    "Write a short blog post about {title}.", "Write a memo to the staff about {title}.",
    "Write a poem about {title}.", "Give me a five-step plan to learn about {title}.",
    "Write a product description for a tool that helps with {title}.",
    "Write a dialogue between a teacher and a student about {title}.",
)
NAMES = ("Anna", "Ben", "Chen", "Dara", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Keiko", "Luis", "Mei",
         "Nora", "Omar", "Priya", "Raul", "Sofia", "Tariq", "Yara")
ITEMS = ("notebook", "apple", "ticket", "pen", "sandwich", "plant", "book", "candle", "mug", "toy car")


def _math(template: int, rng: random.Random) -> str:
    """A grade-school word problem from one of the templates below, numbers drawn by rng."""
    n, n2 = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    r = rng.randint
    problems = (
        lambda: f"{n} buys {r(2, 9)} {item}s at ${r(2, 12)} each and pays with a $100 bill. How much change does "
                f"{n} get?",
        lambda: f"A train travels {r(12, 40) * 10} km in {r(2, 5)} hours. What is its average speed? At that speed, "
                f"how far does it go in {r(6, 9)} hours?",
        lambda: f"A water tank holds {r(4, 20) * 50} liters and is {rng.choice([20, 25, 40, 60, 75])}% full. How "
                f"many liters are needed to fill it?",
        lambda: f"{n} works {r(15, 40)} hours a week and earns ${r(11, 25)} an hour. How much does {n} earn in "
                f"{r(3, 8)} weeks?",
        lambda: f"A class has {r(8, 16)} boys and {r(8, 16)} girls. What fraction of the class are girls? Give the "
                f"fraction in lowest terms.",
        lambda: (lambda a, b: f"The sum of two numbers is {a + b} and their difference is {a - b}. What are the "
                              f"two numbers?")(r(30, 90), r(2, 29)),
        lambda: (lambda w, l: f"A rectangle has a perimeter of {2 * (w + l)} cm and a length of {l} cm. What are "
                              f"its width and its area?")(r(3, 12), r(13, 30)),
        lambda: f"{n} has ${r(3, 20) * 12}. {n} spends a third of it on books and a quarter of what is left on "
                f"lunch. How much money is left?",
        lambda: f"Pencils come in packs of {r(6, 12)}. {n} needs {r(40, 130)} pencils for a class. How many packs "
                f"must {n} buy, and how many pencils will be left over?",
        lambda: f"What is {rng.choice([5, 10, 15, 20, 30, 40])}% of {r(4, 60) * 10}? Add {r(3, 50)} to the result. "
                f"Show each step.",
        lambda: f"A recipe uses {r(2, 4)} cups of flour for {r(2, 4) * 6} cookies. How much flour is needed for "
                f"{r(5, 10) * 6} cookies?",
        lambda: f"A bus leaves at {r(6, 18)}:{rng.choice(['05', '15', '20', '35', '50'])} and the trip takes "
                f"{r(35, 170)} minutes. At what time does it arrive?",
        lambda: (lambda k, avg: f"The average of {k} numbers is {avg}. The number {avg + r(3, 30)} is added to "
                                f"them. What is the new average?")(r(3, 9), r(10, 60)),
        lambda: f"A bike costs ${r(12, 60) * 10}. Its price goes up by {rng.choice([10, 20, 25])}% and later down "
                f"by {rng.choice([10, 20, 25])}%. What is the final price?",
        lambda: f"{n} runs {r(2, 9)} km on Monday, {r(2, 9)} km on Tuesday and twice Monday's distance on "
                f"Wednesday. How far does {n} run in the three days?",
        lambda: f"A bag holds {r(2, 9)} red, {r(2, 9)} blue and {r(2, 9)} green marbles. {n} takes one without "
                f"looking. What is the probability that it is blue?",
        lambda: f"Solve for x: {r(2, 9)}x + {r(1, 30)} = {r(31, 120)}. Explain each step.",
        lambda: f"{n} is {r(3, 9)} years older than {n2}. In {r(2, 10)} years their ages will add up to "
                f"{r(40, 80)}. How old is each of them now?",
        lambda: f"A shop sells {r(120, 400)} {item}s on Saturday and {r(20, 60)}% fewer on Sunday. How many "
                f"{item}s does it sell over the weekend?",
        lambda: f"{n} saves ${r(5, 30)} a week and already has ${r(10, 90)}. How many weeks until {n} can buy a "
                f"${r(150, 500)} bike?",
    )
    return problems[template % len(problems)]()


MATH_TEMPLATES = 20


# Prompt builders, one per kind: each yields prompts of a split, in a seeded order.

def _interleave(*lists: list) -> list:
    """The lists' items taken in turn while all last, then the rest: the handbook's ~100
    sections are not drowned by the Python docs' ~400 pages."""
    out = [x for group in zip(*lists) for x in group]
    shortest = min(len(lst) for lst in lists)
    return out + [x for lst in lists for x in lst[shortest:]]


def _summaries(split: str, rng: random.Random):
    handbook_docs = [(f"handbook:{s}", lambda s=s: as_text(cut(list(_handbook_blocks(s)),
                                                               rng.choice([300, 500, 700, 900]))))
                     for s in _handbook_sections()]
    pydoc_docs = [(_pydoc_key(rel), lambda rel=rel: as_text(cut(list(_pydoc_blocks(rel)), rng.choice([250, 400, 600]))))
                  for rel in _pydoc_pages()]
    rng.shuffle(handbook_docs)
    rng.shuffle(pydoc_docs)
    docs = []
    docs += [(f"licence:{name}", lambda name=name: "\n\n".join(
        cut((LICENSES / name).read_text(encoding="utf-8").split("\n\n"), rng.choice([400, 800]))))
        for name in LICENCE_FILES if (LICENSES / name).is_file()]
    for key, text in docs + _interleave(handbook_docs, pydoc_docs):
        if usable(key, split):
            body = text()
            if len(body.split()) >= 150:
                yield Prompt("summarization", (("user", rng.choice(SUMMARY_ASKS).format(text=body)),), (key,))


def _passages(split: str, rng: random.Random):
    """(key, title, paragraphs) of usable handbook sections and Python doc pages, shuffled."""
    handbook_docs = [(f"handbook:{s}", s, "handbook") for s in _handbook_sections()]
    pydoc_docs = [(_pydoc_key(rel), rel, "pydoc") for rel in _pydoc_pages()]
    rng.shuffle(handbook_docs)
    rng.shuffle(pydoc_docs)
    for key, name, kind in _interleave(handbook_docs, pydoc_docs):
        if not usable(key, split):
            continue
        blocks = _handbook_blocks(name) if kind == "handbook" else _pydoc_blocks(name)
        paragraphs, title = _paragraphs(blocks), _title(blocks)
        if paragraphs and title:
            yield key, title, paragraphs


def _qa(split: str, rng: random.Random):
    for key, title, paragraphs in _passages(split, rng):
        first = rng.randrange(len(paragraphs))
        text = "\n\n".join(paragraphs[first:first + rng.randint(1, 3)])
        question = rng.choice(TITLE_QUESTIONS).format(title=title)
        question = question[0].upper() + question[1:]
        yield Prompt("qa", (("user", rng.choice(QA_ASKS).format(text=text, question=question)),), (key,))


def _rag(split: str, rng: random.Random):
    pool = list(_passages(split, rng))
    for i, (key, title, paragraphs) in enumerate(pool):
        others = rng.sample([d for j, d in enumerate(pool) if j != i], min(3, len(pool) - 1))
        chosen = [(title, rng.choice(paragraphs)), *((t, rng.choice(p)) for _, t, p in others)]
        rng.shuffle(chosen)
        passages = "\n\n".join(f"Passage {n} ({t}):\n{p}" for n, (t, p) in enumerate(chosen, 1))
        question = rng.choice(TITLE_QUESTIONS).format(title=title)
        question = question[0].upper() + question[1:]
        yield Prompt("rag", (("user", rng.choice(RAG_ASKS).format(passages=passages, question=question)),),
                     (key, *(k for k, _, _ in others)))


def _manpage_text(lang: str, page: Path, split: str, rng: random.Random) -> tuple[str, str, str] | None:
    """(document key, language, text) of a translated manual page's first DESCRIPTION
    paragraph, or None when the page is not for this split or has no such paragraph."""
    key = f"man:man1/{page.name.removesuffix('.gz')}"
    if not usable(key, split):
        return None
    try:
        text = manpage_description(page)
    except (StopIteration, OSError, UnicodeDecodeError, subprocess.CalledProcessError):
        return None  # a page without a DESCRIPTION paragraph man(1) can render
    return (key, MAN_LANGUAGES[lang], text) if len(text.split()) >= 20 else None


def _handbook_text(lang: str, section: str, split: str, rng: random.Random) -> tuple[str, str, str] | None:
    """(document key, language, text) of a translated handbook paragraph, or None."""
    key = f"handbook:{section}"
    if not usable(key, split):
        return None
    paragraphs = [p for p in _paragraphs(_handbook_blocks(section, lang), 20, 160) if _looks_foreign(p)]
    return (key, TRANSLATION_LANGUAGES[lang], rng.choice(paragraphs)) if paragraphs else None


def _translations(split: str, rng: random.Random):
    handbook_items = [(_handbook_text, lang, s) for lang in TRANSLATION_LANGUAGES for s in _handbook_sections(lang)]
    man_items = [(_manpage_text, lang, p) for lang in MAN_LANGUAGES for p in sorted((MAN / lang / "man1").glob("*.1.gz"))]
    rng.shuffle(handbook_items)
    rng.shuffle(man_items)
    for read, lang, where in _interleave(handbook_items, man_items):
        found = read(lang, where, split, rng)
        if found:
            key, language, text = found
            yield Prompt("translation", (("user", rng.choice(TRANSLATE_ASKS).format(lang=language, text=text)),),
                         (key,))


def _chats(split: str, rng: random.Random):
    for key, title, paragraphs in _passages(split, rng):
        if rng.random() < 0.7:  # a real paragraph as the assistant's first answer, then a request
            first = rng.choice(FIRST_TURNS).format(title=title)
            turns = (("user", first), ("assistant", rng.choice(paragraphs)), ("user", rng.choice(FOLLOW_UPS)))
        else:
            turns = (("user", rng.choice(WRITING_ASKS).format(title=title)),)
        yield Prompt("chat", turns, (key,))


def _maths(split: str, rng: random.Random):
    templates = [t for t in range(MATH_TEMPLATES) if usable(f"math:{t}", split)]
    while True:
        t = rng.choice(templates)
        yield Prompt("math", (("user", _math(t, rng)),), (f"math:{t}",))


BUILDERS = {"chat": _chats, "translation": _translations, "summarization": _summaries, "qa": _qa,
            "math": _maths, "rag": _rag}
assert tuple(BUILDERS) == KINDS


def real_prompts(split: str, per_kind: int | None = None, seed: int = 0) -> list[Prompt]:
    """Up to `per_kind` prompts of each kind for a split ("train" or "heldout"), kinds
    interleaved so that any prefix of the list mixes them.

    Raises: ConfigError for an unknown split or when the Debian packages are not installed.
    """
    if split not in PER_KIND:
        raise ConfigError(f"split must be 'train' or 'heldout', got {split!r}")
    if not (HANDBOOK / "en-US").is_dir() or not PYDOC.is_dir():
        raise ConfigError("the real-text training set reads Debian's documentation: "
                          "apt-get install -y debian-handbook manpages-de manpages-fr manpages-es python3-doc")
    count = PER_KIND[split] if per_kind is None else per_kind
    lists = []
    for i, kind in enumerate(KINDS):
        rng = random.Random(f"{seed}-{split}-{kind}")
        items, seen = [], set()
        for prompt in BUILDERS[kind](split, rng):
            if prompt.messages in seen:
                continue
            seen.add(prompt.messages)
            items.append(prompt)
            if len(items) == count:
                break
        lists.append(items)
    return [p for group in zip(*(lst + [None] * (count - len(lst)) for lst in lists)) for p in group if p]
