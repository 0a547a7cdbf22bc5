"""Build benchmarks/tasks/real_tasks.jsonl from real text installed on a Debian 12 machine.

    apt-get install -y debian-handbook manpages-de manpages-fr manpages-es python3-doc
    python benchmarks/tasks/make_real_tasks.py

The texts are read from the installed packages (README.md beside this file lists each
document and its licence); the questions, requests, chat turns and math problems are
written here. The output is deterministic, so a re-run on the same package versions
rewrites the same file. Not imported by the runtime: runtime/tasks.py reads the JSONL.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from recycle_export.documents import (LICENSES, MAN, PYDOC, as_text, cut, handbook, handbook_path, licence_text,
                                      manpage_description, pydoc_cut)

OUT = Path(__file__).resolve().parent / "real_tasks.jsonl"

HANDBOOK_LICENCE = "GPL-2.0+ or CC-BY-SA-3.0 (debian-handbook)"
PYDOC_LICENCE = "PSF-2.0 (Python documentation)"
MANPAGES_LICENCE = "GPL-3+ (manpages-l10n translations)"
OWN_LICENCE = "Apache-2.0 (written for this project)"
OWN_SOURCE = "recycle-export:benchmarks/tasks/make_real_tasks.py"


def item(kind: str, messages: list[tuple[str, str]], source: list[str], licence: str) -> dict:
    return {"kind": kind, "messages": [{"role": r, "content": c} for r, c in messages],
            "source": source, "licence": licence}


def hb_source(section: str, lang: str = "en-US") -> str:
    return f"debian-handbook:{handbook_path(section, lang)}"


# 1. Chat: multi-turn conversations written here around topics from the texts.
CHAT = [
    ("apt-get", [
        ("user", "What is the difference between apt and apt-get on Debian?"),
        ("assistant", "Both are command-line front ends to the same APT library. apt-get came first and keeps a "
                      "stable interface for scripts; apt is newer and tuned for interactive use, with a progress "
                      "bar and friendlier defaults."),
        ("user", "Thanks. Write a short cheat sheet a new colleague could pin next to their screen: the five apt "
                 "commands they will use most, one line each.")]),
    ("backup", [
        ("user", "I run a small office server with about 200 GB of shared files. How often should I back it up?"),
        ("assistant", "For shared office files, a nightly incremental backup and a weekly full backup is a common "
                      "baseline, with at least one copy kept off site."),
        ("user", "Our manager thinks backups are a waste of money because nothing has gone wrong in five years. "
                 "Write a short, polite email to her explaining why we need them and what it would cost us to "
                 "lose the data.")]),
    ("why-debian", [
        ("user", "My company is choosing a Linux distribution for twenty servers. We care about long support "
                 "periods and stability."),
        ("assistant", "Then a community distribution with a long-term stable release, such as Debian stable, is a "
                      "good fit: releases come out when they are ready and receive security updates for years."),
        ("user", "Can you list three questions we should ask before we decide?"),
        ("assistant", "1. How long will each release receive security updates? 2. Who will we call when something "
                      "breaks: a vendor or our own staff? 3. Are the packages we need available and maintained?"),
        ("user", "Good. Now turn that into a one-page decision memo for our IT director, with a recommendation.")]),
    ("shell-environment", [
        ("user", "Every time I open a terminal I type the same three aliases. Is there a way to keep them?"),
        ("assistant", "Yes. Put them in ~/.bashrc; bash reads that file for every interactive shell, so the "
                      "aliases will be there each time you open a terminal."),
        ("user", "Explain the difference between a login shell and an interactive shell, with one example of "
                 "each, as if I were new to Linux.")]),
    ("sorting", [
        ("user", "In Python, what is the difference between list.sort() and sorted()?"),
        ("assistant", "list.sort() sorts the list in place and returns None; sorted() builds a new sorted list "
                      "from any iterable and leaves the original alone."),
        ("user", "Show me how to sort a list of (name, age) tuples by age, oldest first, and then by name for "
                 "equal ages. Explain each part of the key function.")]),
    ("unicode", [
        ("user", "My Python script crashes with UnicodeDecodeError when it reads a CSV file from a colleague."),
        ("assistant", "The file is probably not in the encoding Python assumed. Open it with an explicit "
                      "encoding, for example open(path, encoding='utf-8'), or the encoding the file was saved in."),
        ("user", "How can I find out which encoding the file uses? And write a short paragraph I can add to our "
                 "team wiki about always specifying encodings.")]),
    ("foundation-documents", [
        ("user", "What is the Debian Social Contract?"),
        ("assistant", "It is a short document in which the Debian project states its commitments to its users and "
                      "to the free software community: for example that Debian will remain free software and "
                      "will not hide problems."),
        ("user", "Write a short speech, about two minutes long, that a volunteer could give at a local meetup to "
                 "explain why such a promise matters for a volunteer project.")]),
    ("firewall-packet-filtering", [
        ("user", "I just set up a home server that runs a web site and SSH. Do I need a firewall?"),
        ("assistant", "It is a good idea. A firewall lets only the traffic you expect reach the machine: here "
                      "ports 80 and 443 for the web site and 22 for SSH, ideally only from trusted addresses."),
        ("user", "What other simple steps would you take to protect SSH on that server? Give me a numbered list "
                 "with a sentence of explanation for each.")]),
    ("kernel-compilation", [
        ("user", "Why would anyone compile their own Linux kernel today?"),
        ("assistant", "Mostly to enable a feature or driver the distribution kernel lacks, to apply a patch, or to "
                      "learn how the kernel is built; most users never need to."),
        ("user", "I'd like to try it anyway on a spare laptop. Write me a friendly step-by-step plan, with what "
                 "can go wrong at each step and how to get back to a working system.")]),
    ("logging", [
        ("user", "My Python program prints debug messages with print() and it is getting messy."),
        ("assistant", "Switch to the logging module: create a logger per module with logging.getLogger(__name__) "
                      "and choose the level of detail in one place with logging.basicConfig."),
        ("user", "Write a short example program that logs to the console at INFO level and to a file at DEBUG "
                 "level, and explain when I would use each level.")]),
    ("release-lifecycle", [
        ("user", "What do the names Sid, Testing and Stable mean in Debian?"),
        ("assistant", "They are the stages a package goes through: Unstable (always called Sid) receives new "
                      "uploads, packages migrate to Testing after some days without serious bugs, and Testing is "
                      "frozen and released as the new Stable every two years or so."),
        ("user", "Write a short story for children in which a little software package travels from Sid to "
                 "Stable, meeting the people who help it along the way.")]),
    ("virtualization", [
        ("user", "I have one powerful machine and want to run a web server, a database and a test system on it, "
                 "kept apart from each other."),
        ("assistant", "You can use virtual machines (for example with KVM) or lighter containers (for example LXC). "
                      "Virtual machines isolate more strongly; containers use fewer resources."),
        ("user", "Which would you pick for each of the three uses, and why? Put the answer in a small table and "
                 "add a two-sentence recommendation below it.")]),
]
CHAT_SOURCES = {"sorting": "python3-doc:" + str(PYDOC / "howto/sorting.rst.txt"),
                "unicode": "python3-doc:" + str(PYDOC / "howto/unicode.rst.txt"),
                "logging": "python3-doc:" + str(PYDOC / "howto/logging.rst.txt")}

# 2. Translation: (language, source) -> paragraphs to English. Handbook paragraphs are
# picked where the translation exists (some paragraphs of a translation are still English).
TRANSLATION_HANDBOOK = [("de-DE", "why-debian", 1), ("de-DE", "role-of-distributions", 5),
                        ("fr-FR", "why-gnu-linux", 1), ("fr-FR", "follow-debian-news", 6),
                        ("es-ES", "foundation-documents", 7), ("es-ES", "foundation-documents", 44)]
TRANSLATION_MAN = [("de", "man1/less.1.gz"), ("de", "man1/ssh.1.gz"), ("fr", "man1/nano.1.gz"),
                   ("fr", "man1/tar.1.gz"), ("es", "man1/grep.1.gz"), ("es", "man1/chmod.1.gz")]
LANGUAGES = {"de": "German", "fr": "French", "es": "Spanish"}
TRANSLATE_ASKS = [
    "Translate the following {lang} text into English.\n\n{text}",
    "Please translate this {lang} paragraph into natural English:\n\n{text}",
    "{text}\n\nTranslate the text above from {lang} to English.",
    "I found this paragraph in a {lang} manual and don't speak {lang}. What does it say? Give me an English "
    "translation.\n\n\"{text}\"",
]

# 3. Summarization: long sections, each with its own request.
SUMMARY_HANDBOOK = ["computer-layers", "kernel-role-and-tasks", "backup", "release-lifecycle",
                    "dealing-with-compromised-machine", "how-to-migrate"]
SUMMARY_PYDOC = ["howto/sorting.rst.txt", "howto/unicode.rst.txt", "howto/sockets.rst.txt",
                 "howto/functional.rst.txt"]
SUMMARY_ASKS = [
    "Summarize the following section of a book in one paragraph.\n\n{text}",
    "{text}\n\nSummarize the text above in five bullet points.",
    "Here is a section from a system administration book:\n\n{text}\n\nWrite a short summary for a busy manager "
    "who has two minutes to read it.",
    "Read this and give me a TL;DR of three sentences.\n\n{text}",
    "{text}\n\nWhat are the main points of this text? Answer with a short summary.",
    "Summarize this section for a new system administrator, in plain words.\n\n{text}",
    "Summarize the following document in about 100 words.\n\n{text}",
    "{text}\n\nWrite a summary of this tutorial for someone deciding whether to read it.",
    "Give me a short summary of the following text, then list the three most important details.\n\n{text}",
    "Summarize this HOWTO.\n\n{text}",
    "Summarize the key obligations in this licence text in plain English.\n\n{text}",
    "{text}\n\nExplain in a short summary what this licence allows and what it requires.",
]

# 4. Short-answer questions: (section, paragraph indices, question) about a quoted passage,
# then general-knowledge questions with no passage.
QA_HANDBOOK = [
    ("syslog", [2], "Which daemon collects the messages, and in which directory are the log files usually stored?"),
    ("task-scheduling-cron-atd", [1], "What is the difference between cron and atd?"),
    ("shell-environment", [2, 3], "Which initialization script does bash use for login shells?"),
    ("ipv6", [1, 2], "In which packages are ping6 and traceroute6 available?"),
    ("quotas", [1, 2], "Which options in /etc/fstab enable user and group quotas?"),
    ("hostname-name-service", [1, 2], "In which file is a machine's canonical name stored?"),
    ("inetd", [1, 2, 3], "Why was the update-inetd script created?"),
    ("dhcp", [1, 2, 3], "What is the name of the Debian package for the DHCP server?"),
    ("package-authentication", [2, 3], "Since which Debian release is InRelease the signed file?"),
]
QA_GENERAL = [
    "Which planet in our solar system has the most moons? Answer in one sentence.",
    "Who wrote the novel 'Pride and Prejudice'? Answer briefly.",
    "How many sides does a hexagon have? Just give the number and one sentence of explanation.",
]

# 5. Math word problems, written here.
MATH = [
    "A bakery sells muffins for $3 each and cookies for $1.50 each. Maria buys 4 muffins and 6 cookies. How much "
    "does she spend in total? Show your work.",
    "A train leaves at 9:40 and arrives at 13:15. How long is the journey in minutes?",
    "Tom has 3 times as many marbles as Ana. Together they have 48 marbles. How many marbles does each of them "
    "have?",
    "A rectangular garden is 12 meters long and 7 meters wide. How many meters of fence are needed to go around "
    "it, and what is its area?",
    "A shirt costs $40. It is on sale for 25% off, and then a 10% tax is added to the sale price. What is the "
    "final price?",
    "A school has 18 classes with 27 students each. If each bus holds 50 students, how many buses are needed for "
    "a trip with all the students?",
    "Lena reads 35 pages a day. Her book has 420 pages. She has already read 105 pages. How many more days does "
    "she need to finish the book?",
    "A recipe needs 3 eggs for 8 pancakes. How many eggs are needed for 32 pancakes? Explain step by step.",
    "A car uses 6 liters of fuel per 100 km. Fuel costs $1.80 per liter. How much does the fuel cost for a "
    "trip of 350 km?",
    "Sam saves $15 every week. He already has $40. How many weeks will it take until he has at least $200?",
    "The temperature was -4 degrees at 6 a.m. and rose by 3 degrees every two hours. What was the temperature "
    "at noon?",
    "A farmer has chickens and cows. Together they have 30 heads and 74 legs. How many chickens and how many "
    "cows are there? Solve it step by step.",
]

# 6. Retrieval-augmented answers: a question, the relevant passages, then passages on
# other subjects; the passages are shuffled (seeded) so the relevant ones are not first.
RAG = [
    ("Which Debian-based distribution is meant for penetration testing?",
     [("kali", 1)], [("tails", 1), ("grml", 1), ("quotas", 1)]),
    ("I need a live system that leaves no trace on the computer and connects through Tor. Which distribution "
     "fits, and how does it protect me?", [("tails", 1)], [("knoppix", 1), ("steamos", 1), ("dhcp", 1)]),
    ("Why was Devuan started?", [("devuan", 1)], [("pureos", 1), ("ubuntu", 1), ("inetd", 1)]),
    ("How long does Canonical provide security updates for Ubuntu LTS and non-LTS releases, and which packages "
     "does that cover?", [("ubuntu", 4), ("ubuntu", 3)], [("linux-mint", 1), ("syslog", 2)]),
    ("Which desktop does Linux Mint use by default, and what is LMDE?", [("linux-mint", 1), ("linux-mint", 3)],
     [("ubuntu", 2), ("raspbian", 1)]),
    ("Which distribution is made for young children, and is it still actively developed?",
     [("doudoulinux", 1)], [("steamos", 1), ("kali", 1), ("shell-environment", 1)]),
    ("What hardware is Raspbian built for, and what does the arm64 release change?", [("raspbian", 1)],
     [("grml", 1), ("ipv6", 2), ("aptosid", 1)]),
    ("What netmask do IPv6 subnets usually have, and what does SLAAC do?", [("ipv6", 4)],
     [("dhcp", 2), ("hostname-name-service", 3), ("knoppix", 2)]),
    ("How much software is on the Knoppix CD-ROM, and can Knoppix be installed on a hard disk?",
     [("knoppix", 1), ("knoppix", 3)], [("grml", 1), ("tails", 1)]),
    ("Where does APT get the public keys it uses to verify the signatures of the mirrors' files?",
     [("package-authentication", 4)], [("quotas", 2), ("task-scheduling-cron-atd", 1), ("pureos", 1)]),
    ("What is stored in /etc/hostname, and what is the /sys/ directory for?",
     [("hostname-name-service", 2), ("hostname-name-service", 4)], [("syslog", 2), ("aptosid", 1)]),
    ("Besides an IP address, what can a DHCP server tell a machine when it boots?", [("dhcp", 2)],
     [("inetd", 2), ("ipv6", 3), ("devuan", 1)]),
]
RAG_ASK = ("Answer the question using only the passages below. Say which passage numbers you used; if the "
           "passages do not answer it, say so.\n\n{passages}\n\nQuestion: {question}")


def chat_items() -> list[dict]:
    return [item("chat", turns, [CHAT_SOURCES.get(topic) or hb_source(topic)], OWN_LICENCE + "; topic from the source")
            for topic, turns in CHAT]


def _not_english(text: str) -> str:
    assert not re.search(r"\b(the|and|is|with)\b", text), f"untranslated paragraph: {text[:80]}"
    return text


def translation_items() -> list[dict]:
    items = []
    for i, (lang, section, index) in enumerate(TRANSLATION_HANDBOOK):
        text = _not_english(handbook(section, lang)[index])
        ask = TRANSLATE_ASKS[i % len(TRANSLATE_ASKS)].format(lang=LANGUAGES[lang[:2]], text=text)
        items.append(item("translation", [("user", ask)], [hb_source(section, lang)], HANDBOOK_LICENCE))
    for i, (lang, page) in enumerate(TRANSLATION_MAN):
        path = MAN / lang / page
        text = _not_english(manpage_description(path))
        ask = TRANSLATE_ASKS[(i + 2) % len(TRANSLATE_ASKS)].format(lang=LANGUAGES[lang], text=text)
        items.append(item("translation", [("user", ask)], [f"manpages-{lang}:{path}"], MANPAGES_LICENCE))
    return items


def summarization_items() -> list[dict]:
    docs = [(as_text(cut(handbook(s))), [hb_source(s)], HANDBOOK_LICENCE) for s in SUMMARY_HANDBOOK]
    docs += [(pydoc_cut(rel), [f"python3-doc:{PYDOC / rel}"], PYDOC_LICENCE) for rel in SUMMARY_PYDOC]
    docs.append((licence_text("GPL-3", "Preamble", "  2. Basic Permissions."),
                 [f"base-files:{LICENSES / 'GPL-3'}"], "GPL-3 licence text (verbatim copying permitted)"))
    docs.append((licence_text("Apache-2.0", "TERMS AND CONDITIONS", "   5. Submission of Contributions."),
                 [f"base-files:{LICENSES / 'Apache-2.0'}"], "Apache-2.0 licence text"))
    return [item("summarization", [("user", ask.format(text=text))], source, licence)
            for ask, (text, source, licence) in zip(SUMMARY_ASKS, docs, strict=True)]


def qa_items() -> list[dict]:
    items = []
    for section, indices, question in QA_HANDBOOK:
        passage = "\n\n".join(handbook(section)[i] for i in indices)
        items.append(item("qa", [("user", f"{passage}\n\nBased on the text above: {question} Answer in one or "
                                           f"two sentences.")], [hb_source(section)], HANDBOOK_LICENCE))
    items += [item("qa", [("user", q)], [OWN_SOURCE], OWN_LICENCE) for q in QA_GENERAL]
    return items


def math_items() -> list[dict]:
    return [item("math", [("user", q)], [OWN_SOURCE], OWN_LICENCE) for q in MATH]


def rag_items() -> list[dict]:
    rng = random.Random(14)
    items = []
    for question, relevant, other in RAG:
        chosen = relevant + other
        rng.shuffle(chosen)
        passages = []
        for n, (section, index) in enumerate(chosen, 1):
            blocks = handbook(section)
            title = blocks[0].lstrip("#")
            passages.append(f"Passage {n} ({title}):\n{blocks[index]}")
        sections = sorted({s for s, _ in chosen})
        items.append(item("rag", [("user", RAG_ASK.format(passages="\n\n".join(passages), question=question))],
                          [hb_source(s) for s in sections], HANDBOOK_LICENCE))
    return items


def main() -> None:
    items = [*chat_items(), *translation_items(), *summarization_items(), *qa_items(), *math_items(), *rag_items()]
    counts: dict[str, int] = {}
    with OUT.open("w", encoding="utf-8") as f:
        for record in items:
            counts[record["kind"]] = counts.get(record["kind"], 0) + 1
            record = {"id": f"{record['kind']}-{counts[record['kind']]:02d}", **record}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}: {counts}, {OUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
