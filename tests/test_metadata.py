"""The book's metadata has one source (pyproject.toml) and every copy agrees with it;
the citation file and the publishing workflows are valid; the Library reference pages
match the library's modules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import metadata  # noqa: E402
import reference  # noqa: E402


def test_every_copy_of_the_metadata_agrees_with_pyproject():
    stale = [str(p.relative_to(ROOT)) for p in metadata.stale()]
    assert not stale, f"out of step with pyproject.toml (run `make metadata`): {stale}"


def test_the_check_notices_a_changed_address(tmp_path):
    text = (ROOT / "_config.yml").read_text(encoding="utf8")
    meta = metadata.read()
    moved = meta.__class__(**{**meta.__dict__, "repository": "https://github.com/someone/else"})
    new = metadata.config_yml(text, moved)
    assert "url: https://github.com/someone/else" in new
    assert "baseurl: https://someone.github.io/else/" in new
    assert "someone/else@main" in metadata.install_cell_source(moved)


def test_version_is_the_one_of_pyproject():
    assert lib.__version__ == metadata.read().version
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf8")
    assert f"## [{lib.__version__}]" in changelog, "CHANGELOG.md has no entry for this version"


def _validate(schema: str, *files: Path):
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema,
                             *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_citation_file_is_valid_cff():
    _validate("vendor.citation-file-format", ROOT / "CITATION.cff")


def test_workflows_are_valid_github_actions():
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows, "no workflow publishes the book"
    _validate("vendor.github-workflows", *workflows)
    book = yaml.safe_load((ROOT / ".github/workflows/book.yml").read_text(encoding="utf8"))
    steps = [s.get("run", "") + s.get("uses", "") for s in book["jobs"]["build"]["steps"]]
    assert any(s.strip() == "make book" for s in steps), "the site must be built with the README's command"
    assert any("deploy-pages" in s.get("uses", "") for s in book["jobs"]["deploy"]["steps"])


def test_the_pdf_knows_the_notation_macros():
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf8"))["sphinx"]["config"]
    mathjax = config["mathjax3_config"]["tex"]["macros"]
    latex = dict(re.findall(r"\\(?:re)?newcommand\{\\(\w+)\}\{(.+)\}", config["latex_elements"]["preamble"]))
    assert latex == mathjax


def test_library_reference_pages_are_current():
    stale = [str(p.relative_to(ROOT)) for p in reference.stale()]
    assert not stale, f"run `make reference`: {stale}"


def test_licence_is_stated():
    text = (ROOT / "LICENSE").read_text(encoding="utf8")
    assert "MIT License" in text and "CC BY 4.0" in text
    readme = (ROOT / "README.md").read_text(encoding="utf8")
    assert "CC BY 4.0" in readme and "MIT" in readme
