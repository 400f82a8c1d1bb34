"""Every relative link and anchor in README.md and docs/*.md resolves (GitHub's rules)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FENCE = re.compile(r"^ {0,3}(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped, spaces to '-'."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link or image keeps its text
    text = re.sub(r"(\*\*|__|\*)", "", text)  # emphasis markers
    text = text.lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def prose_lines(path: Path):
    """The lines of a markdown file outside fenced code blocks."""
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            yield line


def anchors(path: Path) -> set[str]:
    """Every anchor a markdown file defines: heading slugs (duplicates get -1, -2, ...) and <a id/name>."""
    found, seen = set(), {}
    for line in prose_lines(path):
        found.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """The relative links of one markdown file whose file or anchor does not exist, as 'file: target (why)'."""
    problems, cache = [], {}
    for line in prose_lines(path):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}: {target}"
            if not dest.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md":
                if dest not in cache:
                    cache[dest] = anchors(dest)
                if anchor not in cache[dest]:
                    problems.append(f"{where} (no heading with this anchor in {dest.name})")
    return problems


def doc_files():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_anchors_resolve(path):
    problems = broken_links(path)
    assert not problems, "broken links (fix the target or the heading):\n" + "\n".join(problems)


def test_slug_follows_github_rules():
    assert slug("Quick start") == "quick-start"
    assert slug("SMAX: 2s3z and 5m_vs_6m (3 seeds each, 1M steps; MAT and MAT-Dec 500k)") == (
        "smax-2s3z-and-5m_vs_6m-3-seeds-each-1m-steps-mat-and-mat-dec-500k"
    )
    assert slug("Dead agents' values and `ValueNorm`: the smax-2s3z divergence") == (
        "dead-agents-values-and-valuenorm-the-smax-2s3z-divergence"
    )
    assert slug("**Bold** and [a link](x.md) ± 1") == "bold-and-a-link--1"


def test_checker_finds_a_bad_file_and_a_bad_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Same\n\n## Same\n\ntext\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n"
        "[ok](docs/a.md#title) [dup](docs/a.md#same-1) [self](#top) [web](https://example.com/x#y)\n"
        "[missing file](docs/b.md) [missing anchor](docs/a.md#nope) ![img](fig.png)\n"
        "`[in code](nowhere.md)`\n"
        "```\n[in a fence](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page, tmp_path) == [
        "README.md: docs/b.md (no such file)",
        "README.md: docs/a.md#nope (no heading with this anchor in a.md)",
        "README.md: fig.png (no such file)",
    ]
