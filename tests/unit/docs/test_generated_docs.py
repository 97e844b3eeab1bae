"""The docs hold what data says, and hold together: every generated table matches its source now
(docs/generate.py renders them in memory and compares), the README stays a two-minute read, and every
relative link points at a file and heading that exist."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
README_LIMIT_BYTES = 12_288


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generate():
    return load_generator()


def doc_pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


# ---------------------------------------------------------------------------------------------
# Generated tables

def test_every_generated_table_matches_its_source(generate):
    stale = [str(page.relative_to(ROOT)) for page in generate.stale_pages()]
    assert not stale, f"stale generated tables in {', '.join(stale)}: run `make docs` and commit the result"


def test_an_edited_table_is_stale_and_the_generator_restores_it(generate):
    page = ROOT / "docs" / "recipes.md"
    text = page.read_text()
    tampered = text.replace("| `w4a16-gptq` |", "| `w4a16-gptq-renamed` |", 1)
    assert tampered != text, "the recipe table no longer lists w4a16-gptq"
    rendered, names = generate.render_page(tampered, "docs/recipes.md")
    assert "recipes" in names
    assert rendered == text


def test_check_names_the_stale_page_and_a_run_rewrites_it(generate, tmp_path, monkeypatch, capsys):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    original = (docs / "benchmarks.md").read_text()
    (docs / "benchmarks.md").write_text(original.replace("| 563.1 |", "| 999.9 |", 1))
    monkeypatch.setattr(generate, "ROOT", tmp_path)
    monkeypatch.setattr(generate, "DOCS", docs)

    assert generate.main(["--check"]) == 1
    assert "docs/benchmarks.md" in capsys.readouterr().err
    assert generate.main([]) == 0
    assert (docs / "benchmarks.md").read_text() == original
    assert generate.main(["--check"]) == 0


def test_a_results_class_without_a_table_on_any_page_is_an_error(generate, monkeypatch):
    """A bench run on a new CPU class adds rows to optimizer.json: the docs must gain their table."""
    monkeypatch.setattr(generate, "optimizer_classes", lambda: ["avx2", "avx512-bf16", "amx"])
    with pytest.raises(generate.GenerationError, match="bench-optimizer:amx"):
        generate.rendered_pages()


@pytest.mark.parametrize("text, message", [
    ("<!-- generated: no-such-table (docs/generate.py) -->\n<!-- end generated -->\n", "no-such-table"),
    ("<!-- generated: recipes (docs/generate.py) -->\nno closing marker\n", "without its"),
    ("<!-- generated: bench-optimizer (docs/generate.py) -->\n<!-- end generated -->\n", "needs an argument"),
])
def test_a_malformed_marker_is_an_error_naming_the_page(generate, text, message):
    with pytest.raises(generate.GenerationError, match=message) as raised:
        generate.render_page(text, "docs/example.md")
    assert "docs/example.md" in str(raised.value)


def test_the_recipe_table_lists_every_registered_recipe():
    from services.common.contract.recipes import RECIPES

    page = (ROOT / "docs" / "recipes.md").read_text()
    missing = [name for name in RECIPES if f"| `{name}` |" not in page]
    assert not missing, f"docs/recipes.md lacks {missing}"


def test_every_benchmark_table_states_where_it_comes_from_and_its_machine(generate):
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    blocks = generate.BLOCK.finditer(page)
    for block in blocks:
        body = block.group(0)
        assert "*From `bench/results/" in body, block["name"]
        assert "*Machine:" in body, f"{block['name']}: no machine beside the table"


# ---------------------------------------------------------------------------------------------
# The README

def test_the_readme_is_a_two_minute_read_with_the_two_commands():
    size = len(README.read_bytes())
    assert size < README_LIMIT_BYTES, f"README.md: {size} bytes, limit {README_LIMIT_BYTES}; move detail out"
    text = README.read_text()
    assert "make demo" in text and "make test" in text


# ---------------------------------------------------------------------------------------------
# Links

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """The heading anchors GitHub gives a page: lower case, punctuation dropped, spaces as hyphens,
    repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text()))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def test_the_link_checker_reads_links_and_anchors_as_github_does(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# The CPU's ISA: classes\n\n## Faults, injected\n\n## Faults, injected\n\n"
                    "See [a](other.md#x), [b](https://example.com) and `[c](not-a-link.md)`.\n")
    assert anchors(page) == {"the-cpus-isa-classes", "faults-injected", "faults-injected-1"}
    assert relative_links(page) == ["other.md#x"]


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page):
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            shown = destination.relative_to(ROOT) if destination.is_relative_to(ROOT) else destination
            broken.append(f"{target} (no file {shown})")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target} (no heading #{anchor} in {destination.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {'; '.join(broken)}"
