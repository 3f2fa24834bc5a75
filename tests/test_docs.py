"""Keep the docs whole: every relative link resolves, every page is in the site's nav, the
generated config reference is current, and CI builds the site strictly."""

import re
from pathlib import Path

import yaml

from fednas_mpi.config import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks, where a link is a link."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(path: Path) -> set[str]:
    """The heading ids of a page, as GitHub and MkDocs both spell them for our headings."""
    ids = set()
    for heading in re.findall(r"^#+ (.+)$", _prose(path.read_text()), flags=re.M):
        text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
        ids.add(re.sub(r"\s+", "-", text))
    return ids


def _relative_links(path: Path) -> list[str]:
    return [
        t
        for t in LINK.findall(_prose(path.read_text()))
        if not re.match(r"[a-z]+:", t)  # http:, https:, mailto:
    ]


def test_the_docs_exist():
    names = {p.name for p in PAGES}
    for page in ("running", "methods", "data", "configuration", "hpc", "faults", "results"):
        assert f"{page}.md" in names
    assert "adding-a-method.md" in names


def test_every_relative_link_points_to_a_file_and_heading_that_exist():
    broken = []
    for page in [ROOT / "README.md", *PAGES]:
        for target in _relative_links(page):
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.is_file():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_links_every_docs_page_and_stays_short():
    readme = ROOT / "README.md"
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in _relative_links(readme)}
    missing = [p.name for p in PAGES if p.name != "index.md" and p.resolve() not in linked]
    assert not missing, f"README.md does not point to {missing}"
    assert len(readme.read_text().splitlines()) <= 200, "the README is the five-minute read"


def test_the_site_lists_every_page_and_only_those():
    site = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert site["docs_dir"] == "docs" and site["strict"] is True
    nav = [next(iter(entry.values())) for entry in site["nav"]]
    assert sorted(nav) == sorted(p.name for p in PAGES)
    # broken anchors and pages left out of nav are warnings, so strict mode fails on them
    assert site["validation"]["anchors"] == "warn"
    assert site["validation"]["omitted_files"] == "warn"


def test_docs_config_reference_is_current():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert reference_markdown() in page, "regenerate with: python -m fednas_mpi.config"


def test_ci_builds_the_docs_strictly():
    lines = [ln.strip() for ln in (ROOT / ".ci/run").read_text().splitlines()]
    assert "python -m mkdocs build --strict" in lines
    assert "python -m pip install --quiet -c constraints.txt -e '.[docs]'" in lines
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^docs = \["mkdocs[^"]*"\]', pyproject, flags=re.M)
