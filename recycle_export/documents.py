"""Readers of the real text that ships in Debian 12 packages: the Debian Administrator's
Handbook (HTML, in many languages), the Python documentation's reStructuredText sources,
translated manual pages and the licence texts of base-files. Standard library only.

Used by benchmarks/tasks/make_real_tasks.py (the real-task benchmark) and by
recycle_export/real_prompts.py (the module's real-text training prompts), which must read
the same documents the same way so that "leave the benchmark's documents out" means one thing.

    apt-get install -y debian-handbook manpages-de manpages-fr manpages-es python3-doc
"""

from __future__ import annotations

import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

HANDBOOK = Path("/usr/share/doc/debian-handbook/html")
PYDOC = Path("/usr/share/doc/python3/html/_sources")
MAN = Path("/usr/share/man")
LICENSES = Path("/usr/share/common-licenses")
# Cut a long section at a paragraph boundary near this many words: 1,000-1,800 tokens, so
# that a prompt, its chat template and 128 new tokens fit a 2,048-token model. The Python
# HOWTOs hold code, which takes more tokens per word.
SUMMARY_WORDS = 1150
PYDOC_SUMMARY_WORDS = 800


class _HandbookParagraphs(HTMLParser):
    """Headings (prefixed '#') and `div.para` paragraphs of a handbook page, program
    listings left out."""

    def __init__(self):
        super().__init__()
        self.blocks: list[str] = []
        self._buf: list[str] = []
        self._mode: str | None = None
        self._depth = self._pre = 0

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if self._mode:
            self._depth += tag == "div"
            self._pre += tag == "pre"
        elif tag == "div" and classes[:1] == ["para"]:
            self._mode, self._depth, self._buf = "para", 1, []
        elif tag in ("h2", "h3", "h4"):
            self._mode, self._depth, self._buf = tag, 1, []

    def handle_endtag(self, tag):
        if not self._mode:
            return
        self._pre -= tag == "pre"
        self._depth -= self._mode == "para" and tag == "div"
        if (self._mode == "para" and self._depth == 0) or tag == self._mode:
            text = re.sub(r"\s+", " ", "".join(self._buf)).strip()
            if text:
                self.blocks.append(text if self._mode == "para" else "#" + text)
            self._mode = None

    def handle_data(self, data):
        if self._mode and not self._pre:
            self._buf.append(data)


def handbook_path(section: str, lang: str = "en-US") -> Path:
    return HANDBOOK / lang / f"sect.{section}.html"


def handbook(section: str, lang: str = "en-US") -> list[str]:
    parser = _HandbookParagraphs()
    parser.feed(handbook_path(section, lang).read_text(encoding="utf-8"))
    return parser.blocks


def as_text(blocks: list[str]) -> str:
    """Blocks as plain text, headings on their own lines."""
    return "\n\n".join(b[1:] if b.startswith("#") else b for b in blocks)


def cut(blocks: list[str], words: int = SUMMARY_WORDS) -> list[str]:
    """The leading blocks up to about `words` words, ending on a paragraph."""
    kept, count = [], 0
    for block in blocks:
        if count >= words:
            break
        kept.append(block)
        count += len(block.split())
    while kept and kept[-1].startswith("#"):
        kept.pop()
    return kept


def pydoc(rel: str) -> str:
    """An reStructuredText source of the Python docs, roles and directives made plain."""
    text = (PYDOC / rel).read_text(encoding="utf-8")
    text = re.sub(r":[a-z:]+:`~?([^`<]*?)(?: <[^>]*>)?`", r"\1", text)  # :func:`sorted` -> sorted
    lines = [line for line in text.splitlines()
             if not re.match(r"\s*\.\. (_[^:]*:|index::|sectionauthor::|highlight::|seealso::|topic::|testsetup::|doctest::)", line)
             and not re.match(r"\s*:(Author|Release|Email|author|noindex):", line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def pydoc_cut(rel: str, words: int = PYDOC_SUMMARY_WORDS) -> str:
    return "\n\n".join(cut(pydoc(rel).split("\n\n"), words))


def manpage_description(path: Path) -> str:
    """The first paragraph of a manual page's DESCRIPTION, rendered by man(1)."""
    env = {**os.environ, "MANWIDTH": "100000", "MAN_KEEP_FORMATTING": "0"}
    rendered = subprocess.run(["man", "-l", str(path)], capture_output=True, text=True, env=env, check=True).stdout
    lines = re.sub(r".\x08", "", rendered).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() in ("BESCHREIBUNG", "DESCRIPTION", "DESCRIPCIÓN"))
    paragraph = next(line.strip() for line in lines[start + 1:] if line.strip())
    return re.sub(r"\s+", " ", paragraph)


def licence_text(name: str, start: str, stop: str) -> str:
    text = (LICENSES / name).read_text(encoding="utf-8")
    return text[text.index(start):text.index(stop)].strip()
