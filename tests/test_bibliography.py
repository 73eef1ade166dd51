"""references.bib must let a reader find every work, and hold every cited key.

- Every entry carries a persistent identifier: a ``doi``, a ``url`` or an
  ``eprint``.
- DOIs are bare (``10.NNNN/suffix``), not ``https://doi.org/...`` links.
- URLs are absolute http(s) addresses.
- Every ``eprint`` names its archive, and arXiv eprints are arXiv identifiers
  (``YYMM.NNNNN`` or the pre-2007 ``archive/YYMMNNN``, optionally with a version).
- Every key the chapters cite ({cite}`key`, {cite:p}`a, b`, {cite:t}`key`, ...
  in ``chapters/*.md`` and the markdown of ``chapters/*.ipynb``) is in the file,
  so that sphinxcontrib-bibtex resolves every citation.

The file is parsed with pybtex, the parser sphinxcontrib-bibtex itself uses.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest

pybtex_database = pytest.importorskip(
    "pybtex.database", reason="pybtex comes with sphinxcontrib-bibtex (the book extra)"
)

ROOT = Path(__file__).resolve().parent.parent
BIB = ROOT / "references.bib"
CHAPTERS = ROOT / "chapters"

IDENTIFIER_FIELDS = ("doi", "url", "eprint")
DOI = re.compile(r"^10\.\d{4,9}/\S+$")
URL = re.compile(r"^https?://[^\s/]+\.[^\s/]+(/\S*)?$")
# New-style arXiv identifiers (since April 2007): YYMM.NNNN until 2014, YYMM.NNNNN
# after, optionally with a version; old style: archive(.SUBJECT)/YYMMNNN.
ARXIV_NEW = re.compile(r"^(?P<yy>\d{2})(?P<mm>\d{2})\.\d{4,5}(v\d+)?$")
ARXIV_OLD = re.compile(r"^[a-z]+(-[a-z]+)*(\.[A-Z]{2})?/\d{7}(v\d+)?$")
# MyST citation roles: {cite}, {cite:p}, {cite:t}, {cite:ps}, ... with one key or a
# comma-separated list of keys between backticks (keys hold no spaces or commas).
KEY = r"[^\s,`{}]+"
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`(\s*" + KEY + r"(?:\s*,\s*" + KEY + r")*\s*)`")


@cache
def bibliography():
    return pybtex_database.parse_file(str(BIB), bib_format="bibtex")


def entry_keys() -> list[str]:
    return list(bibliography().entries.keys())


def keys_with(name: str) -> list[str]:
    return [key for key in entry_keys() if field(key, name) is not None]


def field(key: str, name: str) -> str | None:
    """The value of a field (names are case-insensitive in pybtex), or None."""
    value = bibliography().entries[key].fields.get(name)
    return None if value is None else str(value).strip()


def cited_keys_in_text(text: str) -> list[str]:
    """Keys of every citation role in a piece of MyST markdown."""
    keys = []
    for group in CITE.findall(text):
        keys.extend(key.strip() for key in group.split(",") if key.strip())
    return keys


def chapter_texts() -> dict[str, str]:
    """Markdown of every chapter: the .md files and the markdown cells of notebooks."""
    texts = {}
    for path in sorted(CHAPTERS.glob("*.md")):
        texts[path.name] = path.read_text(encoding="utf8")
    for path in sorted(CHAPTERS.glob("*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf8"))
        cells = [
            "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            for cell in notebook["cells"]
            if cell["cell_type"] == "markdown"
        ]
        texts[path.name] = "\n\n".join(cells)
    return texts


def cited_keys() -> dict[str, list[str]]:
    """Cited key -> the chapters that cite it."""
    where: dict[str, list[str]] = {}
    for name, text in chapter_texts().items():
        for key in cited_keys_in_text(text):
            where.setdefault(key, [])
            if name not in where[key]:
                where[key].append(name)
    return where


def test_bibliography_parses_and_is_not_empty():
    assert len(bibliography().entries) > 0


@pytest.mark.parametrize("key", entry_keys())
def test_entry_has_a_persistent_identifier(key):
    present = [name for name in IDENTIFIER_FIELDS if field(key, name)]
    assert present, f"{key}: no doi, url or eprint; add one so readers can find the work"


@pytest.mark.parametrize("key", keys_with("doi"))
def test_doi_is_bare_and_well_formed(key):
    doi = field(key, "doi")
    assert "doi.org" not in doi.lower() and not doi.lower().startswith("doi:"), (
        f"{key}: write the bare DOI ({doi!r} has a resolver prefix)"
    )
    assert DOI.match(doi), f"{key}: {doi!r} does not look like a DOI (10.NNNN/suffix)"


@pytest.mark.parametrize("key", keys_with("url"))
def test_url_is_absolute(key):
    url = field(key, "url")
    assert URL.match(url), f"{key}: {url!r} is not an absolute http(s) URL"


@pytest.mark.parametrize("key", keys_with("eprint"))
def test_eprint_names_its_archive_and_arxiv_ids_are_well_formed(key):
    eprint = field(key, "eprint")
    archive = field(key, "archiveprefix")
    assert archive, f"{key}: eprint {eprint!r} without archiveprefix (e.g. {{arXiv}})"
    if archive.lower() != "arxiv":
        return
    assert "arxiv" not in eprint.lower(), (
        f"{key}: write the bare arXiv identifier ({eprint!r} has a prefix)"
    )
    new = ARXIV_NEW.match(eprint)
    if new:
        assert 1 <= int(new["mm"]) <= 12, f"{key}: {eprint!r} has no valid month"
        digits = len(eprint.split(".")[1].split("v")[0])
        yymm = int(new["yy"] + new["mm"])
        assert digits == (5 if yymm >= 1501 else 4), (
            f"{key}: {eprint!r} has {digits} digits after the dot; arXiv uses "
            "4 until 1412 and 5 from 1501 on"
        )
        assert yymm >= 704, f"{key}: {eprint!r} predates new-style arXiv identifiers"
    else:
        assert ARXIV_OLD.match(eprint), f"{key}: {eprint!r} is not an arXiv identifier"


def test_chapters_cite_something():
    """Guards the next test against passing because no citation was recognized."""
    assert len(cited_keys()) >= 10


def test_every_cited_key_is_in_the_bibliography():
    known = set(bibliography().entries.keys())
    missing = {key: where for key, where in cited_keys().items() if key not in known}
    assert not missing, "cited but not in references.bib: " + "; ".join(
        f"{key} ({', '.join(where)})" for key, where in sorted(missing.items())
    )


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("see {cite}`a2020`.", ["a2020"]),
        ("{cite:p}`a2020, b_2021` and {cite:t}`c-2022`", ["a2020", "b_2021", "c-2022"]),
        ("{cite:ps}`a2020,b2021`", ["a2020", "b2021"]),
        ("`{cite}` alone, or {doc}`intro`", []),
    ],
)
def test_citation_roles_are_recognized(text, keys):
    assert cited_keys_in_text(text) == keys
