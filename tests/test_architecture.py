"""The house rules that keep adding a method one file (issue 11): shared code never branches on a variant's name,
the core imports none of its plug-ins, and every hook gets the loop's context instead of guessing."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import workbench as wb

ROOT = Path(__file__).resolve().parents[1]
SHARED = sorted(p for p in (ROOT / "workbench").rglob("*.py") if "variants" not in p.relative_to(ROOT).parts)


def _names_in(node: ast.AST, names: set[str]) -> list[str]:
    values = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [v.value for v in values if isinstance(v, ast.Constant) and v.value in names]


def name_comparisons(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every comparison (``==``, ``!=``, ``in``, ``not in``) against a variant name."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            if isinstance(node.left, ast.Name) and node.left.id == "mode":  # a landscape mode ("adapter"), no variant
                continue
            for side in [node.left, *node.comparators]:
                hits += [(node.lineno, n) for n in _names_in(side, names)]
    return hits


def test_the_check_finds_a_branch_on_a_name():
    assert name_comparisons('if run.variant == "qwha":\n    pass\nok = name in ("lora", "dora")\n',
                            {"qwha", "lora", "dora"}) == [(1, "qwha"), (3, "lora"), (3, "dora")]


@pytest.mark.parametrize("path", SHARED, ids=[str(p.relative_to(ROOT)) for p in SHARED])
def test_shared_code_never_branches_on_a_variant_name(path):
    hits = name_comparisons(path.read_text(encoding="utf-8"), set(wb.variant_names()))
    assert not hits, f"{path.relative_to(ROOT)} compares with variant names {hits}: declare a hook or attribute"


def test_the_core_does_not_import_its_plug_ins():
    # errors.py once lived in variant.py, which imported workbench.recipes, whose base imported it back: a circle
    for name in ("errors", "options", "events", "variant", "settings"):
        source = (ROOT / "workbench" / f"{name}.py").read_text(encoding="utf-8")
        top = [n for n in ast.parse(source).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        mods = [(n.module or "") if isinstance(n, ast.ImportFrom) else a.name for n in top for a in n.names]
        assert not [m for m in mods if m.split(".")[0] in ("variants", "recipes") or ".variants" in m
                    or ".recipes" in m], f"workbench/{name}.py imports a plug-in at module level: {mods}"


def test_importing_the_package_workbench_variants_gives_the_package():
    mod = importlib.import_module("workbench.variants")
    assert inspect.ismodule(mod) and hasattr(mod, "__path__")
    with pytest.warns(DeprecationWarning, match="variant_infos"):
        infos = wb.variants()  # the old function's spelling still works
    assert [i.name for i in infos] == wb.variant_names()


def test_no_hook_guesses_the_run_length():
    # variants once read getattr(adaptation, "total_steps", 1000): outside train() their schedules assumed 1,000 steps
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "workbench").rglob("*.py")
                 if "total_steps\", 1000" in p.read_text(encoding="utf-8")
                 or "getattr(adaptation, \"lr\"" in p.read_text(encoding="utf-8")]
    assert not offenders
    for info in wb.variant_infos():
        for hook in ("prepare", "on_step", "regularizer"):
            params = list(inspect.signature(getattr(info.cls, hook)).parameters)
            assert params[1] == "ctx", f"{info.name}.{hook}{params}: every hook takes the StepContext first"
