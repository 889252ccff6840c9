"""The README stays short and everything it points at exists (issue 20, item 10).

Every link of the README (and its #anchor, as GitHub makes one from a heading) and
every ``docs/`` path it names must resolve inside the repository, so moving or
renaming a section of docs/ cannot leave the README pointing at nothing.
"""

from __future__ import annotations

import re

from daemon_helpers import ROOT

README = (ROOT / "README.md").read_text()


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings (code blocks skipped)."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug)
    return found


def local_links(markdown: str) -> list[tuple[str, str]]:
    """(path, anchor) of every markdown link that does not leave the repository."""
    links = []
    for target in re.findall(r"\]\(([^)\s]+)\)", markdown):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        links.append((path, anchor))
    return links


def test_readme_is_at_most_200_lines() -> None:
    assert len(README.splitlines()) <= 200


def test_every_readme_link_and_anchor_resolves() -> None:
    links = local_links(README)
    assert links, "the README links to its docs"
    broken = []
    for path, anchor in links:
        target = ROOT / path if path else ROOT / "README.md"
        if not target.exists():
            broken.append(f"{path}: no such file")
        elif anchor and anchor not in anchors(target.read_text()):
            broken.append(f"{path}#{anchor}: no such heading")
    assert broken == []


def test_every_docs_path_the_readme_names_exists() -> None:
    named = set(re.findall(r"docs/[\w./-]*\w", README))
    assert {"docs/formats.md", "docs/operations.md", "docs/reference.md",
            "docs/design.md", "docs/benchmarks.md"} <= named
    assert sorted(p for p in named if not (ROOT / p).exists()) == []


def test_links_in_the_docs_the_readme_names_resolve() -> None:
    """One hop further: the topic docs' links to each other keep working too."""
    broken = []
    for doc in sorted(set(re.findall(r"docs/[\w-]+\.md", README))):
        base = (ROOT / doc).parent
        for path, anchor in local_links((ROOT / doc).read_text()):
            target = (base / path).resolve() if path else ROOT / doc
            if not target.exists():
                broken.append(f"{doc} -> {path}: no such file")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target.read_text()):
                broken.append(f"{doc} -> {path}#{anchor}: no such heading")
    assert broken == []


def test_the_anchor_rule_matches_githubs() -> None:
    assert anchors("## 1. Person Import (`.persons`)\n## Logs: following one file\n") == {
        "1-person-import-persons", "logs-following-one-file"}


def test_readme_sections() -> None:
    """What the README holds, in this order; everything else lives under docs/."""
    headings = re.findall(r"^## (.+)$", re.sub(r"```.*?```", "", README, flags=re.S), re.M)
    assert headings == ["Quick start", "How it works", "Guarantees", "HTTP", "Documentation"]
