"""The documentation resolves and cannot drift from the code.

- every relative link of README.md and docs/*.md names an existing file, and every anchor
  (``page.md#section``, ``#section``) a heading of that page (GitHub's heading slugs);
- every document that code or a config cites (``docs/science.md §1``, ``paper/README.md``)
  exists, and a cited section (``§n`` or a quoted heading) is a heading of that page;
- docs/config.md has one row for every key of workflow/schemas/config.schema.yaml and none
  for a key the schema lacks; docs/methods.md has a row for every option of every built-in
  method; docs/metrics.md names every column of runs.csv.

The checkers are run on a deliberately broken tree too, so they are known to fail.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

#: folders (and file patterns) whose documents-cited are checked
CITING = ["src", "methods", "datasets", "workflow", "config", "benchmarks", "profiles", "paper/*.py", "Snakefile", ".ci"]
#: outputs of the pipeline: cited by the code, never committed
GENERATED = ("results/",)
MD_CITATION = re.compile(r"\b[A-Za-z_/.-]+\.md\b")
SECTION_CITATION = re.compile(r"\b(docs/[\w-]+\.md)(?:\s*§(\d+)|,[\s#]*\"([^\"]+)\")")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def outside_code(text: str) -> list[str]:
    """The lines of a markdown text that are not inside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markdown links reduced to their text, lower case,
    everything but letters, digits, spaces, ``-`` and ``_`` dropped, spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = text.lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    """The heading texts of a markdown file (outside code blocks), in order."""
    return [m.group(2) for line in outside_code(path.read_text())
            if (m := re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line))]


def anchors(path: Path) -> set[str]:
    """Every anchor a markdown file defines (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for h in headings(path):
        s = slug(h)
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


def broken_links(pages: list[Path], root: Path) -> list[str]:
    """Relative links of ``pages`` whose file or anchor does not exist, as 'page: target (why)'."""
    problems = []
    for page in pages:
        for line in outside_code(page.read_text()):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (page.parent / file_part).resolve() if file_part else page
                where = f"{page.relative_to(root)}: {target}"
                if not dest.exists():
                    problems.append(f"{where} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    problems.append(f"{where} (no heading with anchor #{anchor})")
    return problems


def citing_files(root: Path) -> list[Path]:
    files = []
    for entry in CITING:
        for path in sorted(root.glob(entry)):
            files += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [p for p in files if p.suffix in {".py", ".yaml", ".yml", ".smk", ".sh", ".rst", ""}
            and "egg-info" not in str(p) and "__pycache__" not in p.parts]


def unresolved_citations(root: Path) -> list[str]:
    """Documents cited from code and configs that are not in the tree, and cited sections
    (``docs/page.md §n``, ``docs/page.md, "Heading"``) that are no heading of the page."""
    names = {p.name for p in root.rglob("*.md") if ".venv" not in p.parts}
    problems = []
    for path in citing_files(root):
        text = path.read_text(errors="replace")
        for doc in sorted(set(MD_CITATION.findall(text))):
            if doc.startswith(GENERATED) or (root / doc).exists() or (path.parent / doc).exists():
                continue
            if "/" not in doc and (doc in names or doc.count(".") > 1):  # a bare file name, e.g.
                continue  # "tables" / "results.md", or an attribute such as snakemake.output.md
            problems.append(f"{path.relative_to(root)}: cites {doc}, which is not in the repository")
        for doc, number, title in SECTION_CITATION.findall(text):
            page = root / doc
            if not page.exists():
                continue  # reported above
            heads = headings(page)
            title = re.sub(r"[\s#]+", " ", title).strip().lower()
            if number and not any(h.startswith(f"§{number} ") for h in heads):
                problems.append(f"{path.relative_to(root)}: cites {doc} §{number}, which has no such section")
            if title and not any(h.lower().startswith(title) or h.lower().strip("`") == title for h in heads):
                problems.append(f"{path.relative_to(root)}: cites {doc}, \"{title}\", which is no heading there")
    return problems


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def table_keys(page: Path, heading: str) -> set[str]:
    """The backticked names in the first column of the tables under ``heading`` (up to the
    next heading of the same or a higher level)."""
    keys, inside, level = set(), False, 0
    for line in outside_code(page.read_text()):
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if m:
            if inside and len(m.group(1)) <= level:
                break
            if m.group(2).strip() == heading:
                inside, level = True, len(m.group(1))
            continue
        if inside and line.startswith("| `"):
            first = line.split("|")[1]
            keys |= set(re.findall(r"`([^`]+)`", first))
    return keys


def schema_properties(node, found: set[str] | None = None) -> set[str]:
    """Every property name anywhere in a JSON schema."""
    found = set() if found is None else found
    if isinstance(node, dict):
        found |= set(node.get("properties", {}))
        for value in node.values():
            schema_properties(value, found)
    elif isinstance(node, list):
        for value in node:
            schema_properties(value, found)
    return found


# --- the repository -------------------------------------------------------------------------


def test_docs_pages_exist():
    assert (ROOT / "docs").is_dir()
    for name in ["science", "methods", "datasets", "metrics", "config", "extending", "performance", "paper",
                 "cluster", "published"]:
        assert (ROOT / "docs" / f"{name}.md").is_file(), name


def test_every_relative_link_and_anchor_resolves():
    assert broken_links(pages(ROOT), ROOT) == []


def test_every_document_cited_from_code_and_configs_exists():
    assert unresolved_citations(ROOT) == []


def test_the_readme_stays_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, page.name
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"python3 -m venv \.venv && .*pytest", ci).group(0)
    assert command in readme  # the README's test command is what CI runs


def test_config_reference_matches_the_schema():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    page = ROOT / "docs" / "config.md"
    top, experiment = table_keys(page, "Top-level keys"), table_keys(page, "Experiment keys")
    exp_schema = schema["properties"]["experiments"]["additionalProperties"]
    assert top == set(schema["properties"]), "docs/config.md, Top-level keys, differs from the schema"
    assert experiment == set(exp_schema["properties"]), "docs/config.md, Experiment keys, differs from the schema"
    assert schema_properties(schema) <= top | experiment  # a key nested anywhere else is documented too


def test_methods_page_lists_every_option_of_every_builtin_method():
    from slabbench.registry import method_class

    page = ROOT / "docs" / "methods.md"
    for path in sorted((ROOT / "methods").glob("*.py")):
        name = path.stem
        fields = {f.name for f in dataclasses.fields(method_class(name).Params)}
        documented = table_keys(page, f"`{name}`")
        assert fields <= documented, f"docs/methods.md, section `{name}`, lacks {sorted(fields - documented)}"
        assert documented <= fields, f"docs/methods.md, section `{name}`, names options it lacks: {sorted(documented - fields)}"


def test_metrics_page_names_every_column():
    from slabbench.aggregate import COLUMNS, LATENCY

    text = (ROOT / "docs" / "metrics.md").read_text()
    missing = [c for c in COLUMNS + LATENCY if f"`{c}`" not in text]
    assert missing == []


# --- the checkers fail where they must ---------------------------------------------------------


def test_a_broken_link_and_a_broken_anchor_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Top\n\nSee [the guide](docs/guide.md#the-recipe) and [gone](docs/gone.md).\n")
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n\n## Adding one: the recipe\n\n[back](../README.md#top), [self](#guide), [bad](#nowhere)\n\n"
        "```\n[not a link](inside-code.md)\n```\n")
    problems = broken_links(pages(tmp_path), tmp_path)
    assert problems == [
        "README.md: docs/guide.md#the-recipe (no heading with anchor #the-recipe)",
        "README.md: docs/gone.md (no such file)",
        "docs/guide.md: #nowhere (no heading with anchor #nowhere)",
    ]
    (tmp_path / "README.md").write_text("# Top\n\nSee [the guide](docs/guide.md#adding-one-the-recipe).\n")
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Adding one: the recipe\n\n[back](../README.md#top)\n")
    assert broken_links(pages(tmp_path), tmp_path) == []


def test_a_cited_document_or_section_that_is_missing_is_reported(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "science.md").write_text("# Science\n\n## §1 The prior\n\n## Closed form\n")
    (tmp_path / "src" / "mod.py").write_text(
        '"""The prior, SCIENCE.md §1; see docs/science.md §1 and docs/science.md §2,\n'
        'docs/science.md, "Closed form", and docs/science.md, "Open form"; writes results/x.md."""\n')
    assert unresolved_citations(tmp_path) == [
        "src/mod.py: cites SCIENCE.md, which is not in the repository",
        "src/mod.py: cites docs/science.md §2, which has no such section",
        'src/mod.py: cites docs/science.md, "open form", which is no heading there',
    ]


def test_table_keys_reads_the_first_column_under_its_heading_only(tmp_path):
    page = tmp_path / "config.md"
    page.write_text("# C\n\n## Top-level keys\n\n| key | meaning |\n|---|---|\n| `device` | where |\n| `colour` | none |\n\n"
                    "## Experiment keys\n\n| `lr` | rate |\n")
    assert table_keys(page, "Top-level keys") == {"device", "colour"}
    assert table_keys(page, "Experiment keys") == {"lr"}


@pytest.mark.parametrize("heading, anchor", [
    ("§1 Spike-and-slab VI (`spike_slab`)", "1-spike-and-slab-vi-spike_slab"),
    ("Bai et al.'s protocol", "bai-et-als-protocol"),
    ("Short runs: the slab's scale and the closed-form update (mnist5k)",
     "short-runs-the-slabs-scale-and-the-closed-form-update-mnist5k"),
])
def test_slugs_are_githubs(heading, anchor):
    assert slug(heading) == anchor
