"""
docs/configuration.md is the configuration reference: it and the schema in
scepproxyd/config/schema.py name the same sections and keys, with the same
defaults. The lists below come from the code, so a key added, renamed,
removed or given a new default fails here until the reference says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scepproxyd.config import RETIRED, SCHEMA, TEMPLATE_PREFIX, TEMPLATE_SCHEMA

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "docs" / "configuration.md"
TEMPLATE_HEADING = TEMPLATE_PREFIX + "NAME"
RETIRED_HEADING = "Retired settings"

#: Every page that may name a setting as `[section] key`.
PAGES = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md", REPO / "bench" / "README.md"]


def _chapters(text: str) -> dict[str, str]:
    """``## `[section]` `` (or ``## Title``) -> the text up to the next ``## `` heading."""
    chapters = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        heading = heading.strip()
        match = re.fullmatch(r"`\[([^\]]+)\]`", heading)
        chapters[match.group(1) if match else heading] = body
    return chapters


def _table_rows(body: str, key_column: str) -> list[dict[str, str]]:
    """The rows of the tables in ``body`` whose header has ``key_column``, as header -> cell."""
    rows, header = [], None
    for line in body.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif set("".join(cells)) <= set("-: "):
            continue  # the |---|---| line
        elif key_column in header:
            rows.append(dict(zip(header, cells)))
    return rows


def _documented(section: str) -> dict[str, str]:
    """Key -> the default cell of its row, for every key the reference's chapter on ``section`` lists."""
    chapters = _chapters(REFERENCE.read_text(encoding="utf-8"))
    assert section in chapters, "docs/configuration.md has no chapter '## `[%s]`'" % (section,)
    documented = {}
    for row in _table_rows(chapters[section], "key"):
        for key in re.findall(r"`([^`]+)`", row["key"]):
            assert key not in documented, "[%s] %s is listed twice" % (section, key)
            documented[key] = row["default"]
    return documented


def _sections():
    return [(section, keys) for section, keys in SCHEMA.items()] + [(TEMPLATE_HEADING, TEMPLATE_SCHEMA)]


@pytest.mark.parametrize("section, keys", _sections(), ids=[s for s, _ in _sections()])
def test_reference_lists_every_key_of_the_section_and_no_other(section, keys):
    documented = _documented(section)
    assert sorted(set(keys) - set(documented)) == [], "keys of [%s] missing from docs/configuration.md" % (section,)
    assert sorted(set(documented) - set(keys)) == [], "docs/configuration.md lists keys [%s] does not have" % (section,)


@pytest.mark.parametrize("section, keys", _sections(), ids=[s for s, _ in _sections()])
def test_reference_gives_each_key_its_default(section, keys):
    documented = _documented(section)
    wrong = {
        key: (default, documented[key])
        for key, (default, _convert) in keys.items()
        if key in documented and "`%s`" % (default,) not in documented[key]
    }
    assert wrong == {}, "[%s] key: (default in the code, default column of the reference)" % (section,)


def test_reference_has_a_chapter_for_each_section_and_no_other():
    headings = re.findall(r"^## `\[([^\]]+)\]`$", REFERENCE.read_text(encoding="utf-8"), re.M)
    assert sorted(headings) == sorted(list(SCHEMA) + [TEMPLATE_HEADING])


def test_reference_lists_the_sections_in_the_schema_order():
    """The file-syntax paragraph names the sections in the order the daemon's own message does."""
    text = REFERENCE.read_text(encoding="utf-8")
    listing = re.search(r"The sections are (.*?) and any number of `\[template\.NAME\]`", text, re.S)
    assert listing is not None
    assert re.findall(r"`\[([a-z]+)\]`", listing.group(1)) == list(SCHEMA)


def test_reference_lists_every_retired_setting_and_no_other():
    chapter = _chapters(REFERENCE.read_text(encoding="utf-8"))[RETIRED_HEADING]
    listed = [
        tuple(re.fullmatch(r"`\[([a-z]+)\] ([a-z_]+)`", row["setting"]).groups())
        for row in _table_rows(chapter, "setting")
    ]
    assert sorted(listed) == sorted((section, key) for section, keys in RETIRED.items() for key in keys)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_pages_name_only_keys_that_exist(page):
    """A `[section] key` anywhere in the README or docs names a key the daemon reads (or a retired one)."""

    def exists(section, key):
        if section.startswith(TEMPLATE_PREFIX):
            return key in TEMPLATE_SCHEMA
        return key in SCHEMA.get(section, {}) or key in RETIRED.get(section, {})

    named = re.findall(r"`\[([a-z]+(?:\.[A-Za-z0-9_.-]+)?)\] ([A-Za-z0-9_]+)`", page.read_text(encoding="utf-8"))
    assert [(s, k) for s, k in named if not exists(s, k)] == []
