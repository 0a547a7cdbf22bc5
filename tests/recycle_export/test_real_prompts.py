"""The real-text training prompts: split by source document, never a benchmark document."""

import pytest

from recycle_export import real_prompts
from recycle_export.real_prompts import KINDS, document_key, real_prompts as build, usable
from runtime.tasks import source_documents

INSTALLED = (real_prompts.HANDBOOK / "en-US").is_dir() and real_prompts.PYDOC.is_dir()
needs_packages = pytest.mark.skipif(not INSTALLED, reason="reads Debian's debian-handbook, manpages-* and python3-doc")


def test_document_keys_name_a_document_in_every_language():
    handbook = "/usr/share/doc/debian-handbook/html/{}/sect.backup.html"
    assert document_key("debian-handbook:" + handbook.format("en-US")) == "handbook:backup"
    assert document_key("debian-handbook:" + handbook.format("de-DE")) == "handbook:backup"
    assert document_key("manpages-fr:/usr/share/man/fr/man1/tar.1.gz") == "man:man1/tar.1"
    assert document_key("python3-doc:/usr/share/doc/python3/html/_sources/howto/sorting.rst.txt") == "pydoc:howto/sorting"
    assert document_key("base-files:/usr/share/common-licenses/GPL-3") == "licence:GPL-3"


def test_no_benchmark_document_is_usable_for_training():
    keys = {document_key(s) for s in source_documents("real")}
    assert "handbook:backup" in keys and "man:man1/tar.1" in keys and "pydoc:howto/sorting" in keys
    assert not any(usable(key, split) for key in keys for split in ("train", "heldout"))


@needs_packages
def test_prompts_of_each_kind_from_documents_outside_the_benchmark():
    benchmark = {document_key(s) for s in source_documents("real")}
    train, heldout = build("train", 6), build("heldout", 2)
    assert [p.kind for p in train[:6]] == list(KINDS)  # interleaved
    assert {p.kind for p in heldout} == set(KINDS) and len(train) == 36
    train_docs = {d for p in train for d in p.documents}
    heldout_docs = {d for p in heldout for d in p.documents}
    assert not (train_docs | heldout_docs) & benchmark
    assert not train_docs & heldout_docs  # split by document
    for p in train:
        assert p.messages[-1][0] == "user" and p.messages[-1][1].strip()
    assert build("train", 6) == train  # deterministic
