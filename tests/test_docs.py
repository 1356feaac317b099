"""The user documentation: a short README, docs/ for the rest, relative links that resolve (files and
heading anchors), every docs/ page linked from the README, and no references to the project's
development process (issue numbers, the tracker)."""

from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
PAGES = [README] + DOCS
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _prose(text: str, blank_code: bool = True) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked out (or only unquoted)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "``", line) if blank_code else line.replace("`", ""))
    return lines


def _anchors(path: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose(_read(path), blank_code=False):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(path: str) -> list[str]:
    return [target for line in _prose(_read(path)) for target in LINK.findall(line)]


def test_the_docs_folder_exists():
    assert DOCS, "docs/*.md"


def test_readme_is_short():
    lines = _read(README).splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda path: os.path.relpath(path, ROOT))
def test_relative_links_point_to_existing_files_and_headings(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
        if not os.path.exists(resolved):
            broken.append(f"{target} (no file {os.path.relpath(resolved, ROOT)})")
        elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {os.path.relpath(resolved, ROOT)})")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme():
    linked = {os.path.normpath(os.path.join(ROOT, target.partition("#")[0])) for target in _links(README)}
    assert [os.path.relpath(page, ROOT) for page in DOCS if page not in linked] == []


def test_every_docs_page_starts_with_a_title_and_an_intro():
    for page in DOCS:
        lines = _read(page).splitlines()
        assert lines[0].startswith("# ") and lines[1] == "" and lines[2].strip(), page


@pytest.mark.parametrize("page", PAGES, ids=lambda path: os.path.relpath(path, ROOT))
def test_no_issue_numbers_or_tracker_references(page):
    found = []
    for number, line in enumerate(_read(page).splitlines(), 1):
        if re.search(r"(?<![\w&])#\d+\b", line) or re.search(r"\b(issues?|tracker)\b", line, re.I):
            found.append(f"{os.path.relpath(page, ROOT)}:{number}: {line.strip()}")
    assert not found, found
