"""The README stays the user's manual: every setting and every route is documented, and
no link between the README and docs/ leads nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.cli.docs_tables import PAGES, with_generated_tables
from app.core.config import Settings
from app.main import create_app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    missing = [
        f"| {n.upper()} |" for n in Settings.model_fields if f"| {n.upper()} |" not in CONFIGURATION
    ]
    assert missing == [], f"settings missing from docs/configuration.md: {missing}"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_settings_and_job_parameter_tables_are_the_generated_ones(page: str):
    text = (ROOT / page).read_text()
    assert with_generated_tables(text, PAGES[page]) == text, (
        f"{page}'s generated table differs from app/core/config.py / app/ml/job_params.py; "
        "regenerate it with `python -m app.cli.docs_tables --write-readme` (from the "
        "checkout root)"
    )


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_route_is_in_the_api_table():
    app = create_app(Settings(data_dir=Path("/nonexistent")), job_queue=object())
    paths = set(app.openapi()["paths"])
    assert {"/label", "/jobs/{job_id}", "/models/{version}/activate"} <= paths
    documented = {_shape(p) for p in re.findall(r"`(?:GET|POST) (/[^` ]*)", README)}
    missing = sorted(p for p in paths if _shape(p) not in documented)
    assert missing == [], f"routes missing from README.md's API table: {missing}"


# The README is the manual a newcomer reads: first run, tour, API, jobs, configuration,
# deployment and pointers, in about 300 lines with its generated tables. Its own text is
# held here without them, so a new job parameter or setting does not count against it.
README_TEXT_MAX_LINES = 230


def test_the_readme_stays_a_short_manual():
    text = re.sub(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", "", README, flags=re.S)
    lines = text.count("\n")
    assert lines <= README_TEXT_MAX_LINES, (
        f"README.md has {lines} lines besides its generated tables (at most "
        f"{README_TEXT_MAX_LINES}): move long material to a page of docs/ and point to it"
    )


# --- links between the README and docs/ --------------------------------------------------

MANUAL = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces
    as hyphens, and -1, -2... on repeats."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _FENCE.sub("", markdown), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """`page: target (why)` for each relative link whose file or heading does not exist."""
    broken = []
    for target in _LINK.findall(_CODE.sub("", _FENCE.sub("", page.read_text()))):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{page.relative_to(root)}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            broken.append(f"{page.relative_to(root)}: {target} (no such heading)")
    return broken


@pytest.mark.parametrize("page", MANUAL, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_a_link_to_a_missing_page_or_heading_is_caught(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Does it work?\n\n## Does it work?\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#does-it-work) [ok](other.md#does-it-work-1) [ok](#here)\n"
        "[web](https://example.com/x#y) `[code](nowhere.md)`\n"
        "# Here\n"
        "[gone](missing.md) [wrong](other.md#does-it-help) [self](#nowhere)\n"
        "```\n[fenced](nowhere.md)\n```\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#does-it-help (no such heading)",
        "page.md: #nowhere (no such heading)",
    ]
