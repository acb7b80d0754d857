"""The docs hold together: README.md is a short front door that links every guide in docs/, no
relative link in README.md or docs/ points at a missing file or heading, every guide opens with a
table of contents, and docs/configuration.md is what scripts/gen_config_docs.py writes from the
config dataclasses now. Text only: no model is loaded."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *GUIDES]
MAX_README_LINES = 260

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(?:.|\n)*?\1")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def links(page: Path) -> list[str]:
    """Every Markdown link target on the page, outside code blocks and code spans."""
    prose = _CODE_SPAN.sub("", "\n".join(prose_lines(page.read_text(encoding="utf-8"))))
    return _LINK.findall(prose)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, with every character but
    letters, digits, '_', '-' and spaces dropped, and spaces made '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """'page: target (why)' for each relative link that leads nowhere."""
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        name = f"{page.relative_to(root)}: {target}"
        if not where.exists():
            broken.append(f"{name} (no such file)")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{name} (no heading with that anchor in {where.name})")
    return broken


def generator() -> ModuleType:
    """scripts/gen_config_docs.py as a module (scripts/ is not a package)."""
    path = ROOT / "scripts" / "gen_config_docs.py"
    spec = importlib.util.spec_from_file_location("gen_config_docs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_link_checker_sees_a_broken_file_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "guide.md").write_text("# A guide\n\n## What ε means here\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](guide.md#what-ε-means-here) [ok](#top) [gone](missing.md) "
                    "[bad](guide.md#what-e-means) `[in code](nowhere.md)`\n\n# Top\n\n"
                    "```\n[in a block](nowhere.md)\n```\n[web](https://example.org/x)\n")
    assert broken_links(page, tmp_path) == [
        "page.md: missing.md (no such file)",
        "page.md: guide.md#what-e-means (no heading with that anchor in guide.md)"]


def test_no_relative_link_in_readme_or_docs_is_broken() -> None:
    assert len(PAGES) > 1
    broken = [b for page in PAGES for b in broken_links(page)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_every_guide_in_docs() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve()
              for t in links(README) if t.partition("#")[0]}
    missing = [str(g.relative_to(ROOT)) for g in GUIDES if g.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_every_guide_opens_with_a_table_of_contents() -> None:
    for guide in GUIDES:
        head = guide.read_text(encoding="utf-8").splitlines()[:20]
        assert "## Contents" in head, f"{guide.relative_to(ROOT)}: no '## Contents' near the top"


def test_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move the detail into a "
        "guide in docs/ and link it")


def test_configuration_reference_is_generated_from_the_code() -> None:
    from client.policy import _KNOWN
    from common.config import RunConfig

    gen = generator()
    current = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == gen.render(), ("docs/configuration.md is stale: run "
                                     "python scripts/gen_config_docs.py")
    missing = [k for k in [*RunConfig.keys(), *_KNOWN] if f"| `{k}` |" not in current]
    assert not missing, f"docs/configuration.md lacks {missing}"
    assert gen.main(["--check"]) == 0


def test_a_key_added_without_regenerating_fails_the_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gen = generator()

    @dataclass(frozen=True)
    class Wider(gen.config.RunConfig):
        brand_new_key: int = gen.config._opt(1, "A key added without regenerating the docs.")

    monkeypatch.setattr(gen.config, "RunConfig", Wider)
    assert "| `brand-new-key` | `1` | int | A key added" in gen.render()
    assert gen.main(["--check"]) == 1
    monkeypatch.setattr(gen.policy, "_KNOWN", {*gen.policy._KNOWN, "brand-new-policy"})
    with pytest.raises(SystemExit, match="brand-new-policy"):
        gen.render()  # a policy key needs its meaning written down before it is documented
