"""The documentation stands alone in a clone: every link points into the repository (or to
the web), and no page points a reader at something a clone does not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "benchmarks" / "README.md",
]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m[1]) for m in re.finditer(r"^#+ (.+)$", page.read_text(), re.M)}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_link_resolves_inside_the_repository(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"https?://", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: no heading for #{anchor}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_no_page_sends_the_reader_outside_the_clone(page):
    text = page.read_text()
    for pattern in (r"\.\./shared", r"PROTOCOL\.md", r"\bseed\b", r"\bissue \d"):
        found = re.search(pattern, text)
        assert found is None, f"{page.name}: {found[0]!r}, which a reader of a clone cannot open"


SECRET_FLAGS = ("--api-key", "--jwt-secret")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_no_documented_command_puts_a_secret_on_the_command_line(page):
    # `ps` shows every process's command line to every user of the machine: the documented
    # commands pass secrets in AGENTCAST_* variables instead.
    for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.S):
        for flag in SECRET_FLAGS:
            assert not re.search(rf"{flag}[ =]\S", block), f"{page.name}: {flag} in\n{block}"
