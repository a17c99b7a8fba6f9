"""Docs that stay honest by themselves: the generated variant tables are the registry's, and every repository path
cited in the docs, the notebooks and the code's docstrings and comments exists."""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from pathlib import Path

import pytest

import workbench as wb
from workbench.docs import README_END, README_START, stale_docs, with_readme_variants

ROOT = Path(__file__).resolve().parents[1]


def test_generated_docs_are_what_the_registry_generates():
    stale = stale_docs(ROOT)
    assert not stale, f"{', '.join(stale)} differ from the registry: run `workbench docs`"


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(README_START) == 1 and text.count(README_END) == 1, "README.md needs one variants block"
    return text[text.index(README_START):text.index(README_END)]


def test_every_variant_is_in_the_table():
    """Read from the files on disk, not from the generator: each registered key is one row of docs/VARIANTS.md and
    is named once in README.md's block, nothing else is, and the README's count is the registry's."""
    names = wb.variant_names()
    table = (ROOT / "docs" / "VARIANTS.md").read_text(encoding="utf-8").split("\n## Recipes")[0]
    assert re.findall(r"^\| `([^`]+)` \|", table, flags=re.M) == names
    block = _readme_block()
    listed = re.findall(r"`([^`]+)`", "\n".join(line for line in block.splitlines() if line.startswith("| ")))
    assert sorted(listed) == sorted(names)
    assert re.search(r"\b(\d+) variants\b", block).group(1) == str(len(names))


def test_readme_block_without_markers_is_a_clear_error():
    with pytest.raises(wb.ConfigError, match="variants:start"):
        with_readme_variants("# a README without the block\n")
    filled = with_readme_variants(f"intro\n{README_START}\nold table\n{README_END}\noutro\n")
    assert "old table" not in filled and filled.startswith("intro\n") and filled.endswith(f"{README_END}\noutro\n")
    assert with_readme_variants(filled) == filled  # idempotent


# -- cited paths ------------------------------------------------------------------------------------------------

#: a repository path: under one of the top-level folders, or a top-level note such as README.md; not part of a longer
#: path (``../shared/STYLE.md``, a URL) or of a dotted module name
CITED = re.compile(r"(?<![\w./-])((?:workbench|tests|bench|docs|notebooks|assets)/[\w./*-]*|[A-Z][A-Z_]+\.md)")
#: cited in docs/DESIGN.md's plan for the next wave, not written yet
PLANNED = {"docs/CLAIMS.md"}


def _py_texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the module's docstrings and comments."""
    source = path.read_text(encoding="utf-8")
    out = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
           if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((node.body[0].lineno, doc))
    return out


def _notebook_texts(path: Path) -> list[tuple[int, str]]:
    """(cell number, source) of every markdown and code cell."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(i, "".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] in ("markdown", "code")]


def _sources() -> list[Path]:
    py = [*ROOT.glob("workbench/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("tests/*.py"), ROOT / "app.py"]
    return [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md")), *sorted(ROOT.glob("notebooks/*.ipynb")), *sorted(py)]


def _texts(path: Path) -> list[tuple[int, str]]:
    if path.suffix == ".py":
        return _py_texts(path)
    if path.suffix == ".ipynb":
        return _notebook_texts(path)
    return list(enumerate(path.read_text(encoding="utf-8").splitlines(), start=1))


def _exists(cited: str, where: str = "") -> bool:
    """From the repository root, or (a Markdown link) from the citing file's folder."""
    cited = cited.rstrip(".")
    if "*" in cited:
        return next(ROOT.glob(cited), None) is not None
    here = (ROOT / where.split(":")[0]).parent if where.endswith(".md") or ".md:" in where else ROOT
    return (ROOT / cited).exists() or (here / cited).exists()


def cited_paths() -> list[tuple[str, str]]:
    """(where, path) for every repository path cited in the docs, notebooks, docstrings and comments."""
    return [(f"{path.relative_to(ROOT)}:{where}", m.group(1)) for path in _sources() for where, text in _texts(path)
            for m in CITED.finditer(text)]


def test_the_scan_finds_the_citations_it_should():
    cited = {p for _, p in cited_paths()}
    assert {"tests/test_conformance.py", "docs/VARIANTS.md", "docs/DESIGN.md", "bench/step_time.py"} <= cited
    assert not CITED.findall("see ../shared/STYLE.md, https://github.com/org/repo/docs/x.md and workbench.docs")


def test_every_cited_repository_path_exists():
    missing = [f"{where}: {p}" for where, p in cited_paths()
               if p.rstrip(".") not in PLANNED and not _exists(p, where)]
    assert not missing, "cited paths that do not exist:\n" + "\n".join(missing)


# -- the lock file ----------------------------------------------------------------------------------------------

def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"requirements.lock: {line!r} is not an exact pin name==version"
            pins[_canonical(name)] = version
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_every_declared_dependency_within_its_range():
    """requirements.lock (what `make` installs) satisfies pyproject.toml's ranges, the dev extra included, and leaves
    the project itself out (it is installed from the tree with --no-deps)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = _lock()
    assert _canonical(project["name"]) not in pins
    for spec in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(spec)
        name = _canonical(req.name)
        assert name in pins, f"requirements.lock has no pin for {req.name}: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {spec!r}"


def test_every_recipe_is_in_the_recipes_table():
    section = (ROOT / "docs" / "VARIANTS.md").read_text(encoding="utf-8").split("\n## Recipes")[1].split("\n## ")[0]
    assert re.findall(r"^\| `([^`]+)` \|", section, flags=re.M) == wb.recipe_names()
