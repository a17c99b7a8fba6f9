"""Every tutorial notebook teaches in the one format (issue 23; the format is the project's exercise note):

* the first markdown cell after the title (or the title cell itself, below the title) has a ``**What you will
  learn**`` section with 2-4 bullets, before the first code cell;
* the notebook ends with a ``## Exercises`` section holding a **Predict, then run.** exercise (question, code that
  answers it, what to look for) and a **Your turn.** exercise (task, a starter code cell, then a solution code cell
  whose metadata is ``{"tags": ["solution"], "jupyter": {"source_hidden": true}}`` and whose first line is
  ``# Solution``), so JupyterLab shows the solution collapsed and nbmake still executes it;
* no notebook stores outputs or widget state (they are cleared before saving: the repository holds teaching text
  and code only; a saved widget state was 115 KB of notebook 02's 165);
* a cell that redraws an ``ipywidgets.Output`` does it with :func:`workbench.widgets.replace_output`, never by
  capturing output in ``with out:``: under nbclient (nbmake, nbconvert --execute) captured output can stall the cell
  until its timeout (jupyter/nbclient#312; notebook 08 took 315 s of nbmake's 300-s limit for 14 s of work).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
SOLUTION_TAG = "solution"
LEARN = "**What you will learn**"
BULLET = re.compile(r"^\s*[*-]\s+\S")


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _is_solution(cell: dict) -> bool:
    meta = cell.get("metadata", {})
    return (cell["cell_type"] == "code" and SOLUTION_TAG in meta.get("tags", [])
            and meta.get("jupyter", {}).get("source_hidden") is True
            and _source(cell).lstrip().splitlines()[0].strip() == "# Solution")


def _learn_problems(cells: list[dict]) -> list[str]:
    first_code = next((i for i, c in enumerate(cells) if c["cell_type"] == "code"), len(cells))
    for cell in cells[:first_code]:
        text = _source(cell)
        if cell["cell_type"] == "markdown" and LEARN in text:
            after = text.split(LEARN, 1)[1].splitlines()
            bullets, started = 0, False
            for line in after:
                if BULLET.match(line):
                    bullets, started = bullets + 1, True
                elif started and line.strip() and not line.startswith(" "):
                    break  # the list ended (a continuation line of a bullet is indented)
            if not 2 <= bullets <= 4:
                return [f"'{LEARN}' has {bullets} bullets; it needs 2-4"]
            return []
    return [f"no '{LEARN}' section in a markdown cell before the first code cell"]


def _exercise_problems(cells: list[dict]) -> list[str]:
    starts = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
              and _source(c).lstrip().startswith("## Exercises")]
    if not starts:
        return ["no '## Exercises' markdown cell"]
    start = starts[-1]
    later = [i for i, c in enumerate(cells) if i > start and c["cell_type"] == "markdown"
             and re.search(r"^#{1,2} ", _source(c), re.M)]
    problems = [f"'## Exercises' is not the last section: cell {later[0]} starts another"] if later else []
    part = cells[start + 1:]
    kinds = [c["cell_type"] for c in part]
    predict = [i for i, c in enumerate(part) if c["cell_type"] == "markdown"
               and _source(c).lstrip().startswith("**Predict, then run.**")]
    turns = [i for i, c in enumerate(part) if c["cell_type"] == "markdown"
             and _source(c).lstrip().startswith("**Your turn.**")]
    if not predict:
        problems.append("no '**Predict, then run.**' exercise")
    for i in predict:
        if kinds[i + 1:i + 3] != ["code", "markdown"] or _source(part[i + 2]).lstrip().startswith("**"):
            problems.append("a 'Predict, then run.' question needs a code cell that answers it, then a markdown "
                            "cell saying what to look for")
    if not turns:
        problems.append("no '**Your turn.**' exercise")
    for i in turns:
        if kinds[i + 1:i + 2] != ["code"] or _is_solution(part[i + 1]):
            problems.append("a 'Your turn.' task needs a starter code cell ('# your code here')")
        if len(part) < i + 3 or not _is_solution(part[i + 2]):
            problems.append("a 'Your turn.' task needs, after its starter cell, a code cell starting '# Solution' "
                            'with metadata {"tags": ["solution"], "jupyter": {"source_hidden": true}}')
    for c in part:
        meta = c.get("metadata", {})
        if SOLUTION_TAG in meta.get("tags", []) and not _is_solution(c):
            problems.append("a cell tagged 'solution' is not a hidden code cell starting '# Solution'")
    return problems


def _output_problems(cells: list[dict]) -> list[str]:
    stored = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
              and (c.get("outputs") or c.get("execution_count") is not None)]
    timed = [i for i, c in enumerate(cells) if "execution" in c.get("metadata", {})]
    return ([f"stored outputs in code cells {stored} (jupyter nbconvert --clear-output --inplace)"] if stored else []) \
        + ([f"stored execution times in the metadata of cells {timed}"] if timed else [])


def _metadata_problems(metadata: dict) -> list[str]:
    return ["stored widget state in the notebook's metadata (JupyterLab: Settings > Save Widget State "
            "Automatically off, or delete metadata.widgets)"] if "widgets" in metadata else []


def _widget_problems(cells: list[dict]) -> list[str]:
    stalls = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
              and re.search(r"^\s*with\s+\w+\s*:", _source(c), re.M) and "Output(" in _source(c)]
    return [f"cells {stalls} capture output in an Output widget (`with out:`); use "
            f"workbench.widgets.replace_output(out, ...)"] if stalls else []


def problems(notebook: dict) -> list[str]:
    """Every way ``notebook`` (parsed .ipynb JSON) breaks the format; empty when it follows it."""
    cells = notebook["cells"]
    return (_learn_problems(cells) + _exercise_problems(cells) + _output_problems(cells) + _widget_problems(cells)
            + _metadata_problems(notebook.get("metadata", {})))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 7, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_teaches_in_the_one_format(path):
    assert problems(json.loads(path.read_text(encoding="utf-8"))) == []


# -- the checker on notebooks built here ---------------------------------------------------------------------------

def _md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(text: str, metadata: dict | None = None) -> dict:
    return {"cell_type": "code", "metadata": metadata or {}, "source": text, "outputs": [], "execution_count": None}


def _good() -> dict:
    return {"cells": [
        _md("# Title\n\nIntro.\n\n**What you will learn**\n\n* one thing;\n* another thing,\n  on two lines.\n"),
        _code("import workbench"),
        _md("## 1. A section"), _code("x = 1"),
        _md("## Exercises"),
        _md("**Predict, then run.** What is x + 1?"), _code("print(x + 1)"), _md("Look for 2."),
        _md("**Your turn.** Make y twice x."), _code("# your code here\n..."),
        _code("# Solution\ny = 2 * x\nassert y == 2", {"tags": ["solution"], "jupyter": {"source_hidden": True}}),
    ]}


def test_checker_accepts_the_format():
    assert problems(_good()) == []
    title_apart = _good()
    title_apart["cells"][:1] = [_md("# Title"), _md("Intro.\n\n**What you will learn**\n- a\n- b\n\nMore text.")]
    assert problems(title_apart) == []


def _broken(edit) -> list[str]:
    nb = copy.deepcopy(_good())
    edit(nb["cells"])
    return problems(nb)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.__setitem__(0, _md("# Title\n\nIntro.")), "What you will learn"),
    (lambda c: c.__setitem__(0, _md("# T\n\n**What you will learn**\n\n* only one\n")), "1 bullets"),
    (lambda c: c.__setitem__(0, _md("# T\n\n**What you will learn**\n" + "* b\n" * 5)), "5 bullets"),
    (lambda c: (c.insert(1, c.pop(0))), "before the first code cell"),
    (lambda c: c.__setitem__(4, _md("## Practice")), "no '## Exercises'"),
    (lambda c: c.append(_md("## Appendix")), "not the last section"),
    (lambda c: c.__setitem__(5, _md("Predict what x + 1 is.")), "Predict, then run"),
    (lambda c: c.pop(7), "what to look for"),
    (lambda c: c.__setitem__(8, _md("Make y twice x.")), "no '**Your turn.**'"),
    (lambda c: c.pop(9), "starter code cell"),
    (lambda c: c.pop(10), "'# Solution'"),
    (lambda c: c[10]["metadata"].pop("jupyter"), "source_hidden"),
    (lambda c: c[10]["metadata"].__setitem__("tags", []), "'# Solution'"),
    (lambda c: c[10].__setitem__("source", "y = 2 * x"), "not a hidden code cell"),
    (lambda c: c[1].__setitem__("outputs", [{"output_type": "stream", "name": "stdout", "text": "hi"}]),
     "stored outputs in code cells [1]"),
    (lambda c: c[3].__setitem__("execution_count", 3), "stored outputs in code cells [3]"),
    (lambda c: c[3]["metadata"].__setitem__("execution", {"iopub.status.idle": "2026-12-02T22:36:46Z"}),
     "stored execution times in the metadata of cells [3]"),
    (lambda c: c.__setitem__(3, _code("out = widgets.Output()\n\ndef f():\n    with out:\n        display(fig)")),
     "cells [3] capture output in an Output widget"),
])
def test_checker_names_each_broken_rule(edit, message):
    """Each edit breaks one rule of a notebook that follows the format; the checker names that rule."""
    found = _broken(edit)
    assert found and any(message in p for p in found), found


def test_checker_names_stored_widget_state():
    nb = _good()
    nb["metadata"] = {"widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}}}
    assert any("widget state" in p for p in problems(nb))
