"""The rendered tutorial site (``make site``): every notebook executed and written as static HTML, with its plotly
figures interactive, plus an index page, into ``site/``.

Each notebook runs top to bottom in a fresh kernel (nbclient, the notebook's own folder as working directory), then
nbconvert's HTML exporter writes the page. Plotly's JavaScript is written **once** for the whole site
(``site/plotly.min.js``, from the installed plotly: no CDN, readable offline): every figure output is redrawn from
its plotly JSON (``application/vnd.plotly.v1+json``) as a ``<div>`` without the library, and each page loads the one
shared file. Widgets (``workbench.widgets``) need a live kernel; a page shows their text fallback.

Usage: ``python -m workbench.site [--out site] [--timeout 600] [NOTEBOOK ...]`` (default: every ``notebooks/*.ipynb``).
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from pathlib import Path

__all__ = ["build_site", "render_notebook", "PLOTLY_JS", "PLOTLY_MIME"]

PLOTLY_JS = "plotly.min.js"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
ROOT = Path(__file__).resolve().parents[1]
KERNEL = "python3"  # the kernel of the process running the build (the project's .venv under `make site`)


def _figure_html(spec: dict, div_id: str) -> str:
    """A plotly figure as a ``<div>`` and its ``Plotly.newPlot`` call, the library left out (loaded once per page)."""
    import plotly.io as pio

    return pio.to_html(spec, include_plotlyjs=False, full_html=False, div_id=div_id,
                       config={"responsive": True, "displaylogo": False})


def _is_plotly_library(out) -> bool:
    data = out.get("data") or {}
    text = data.get("text/html", "")
    text = "".join(text) if isinstance(text, list) else text
    return PLOTLY_MIME not in data and "PlotlyConfig" in text


def _plotly_outputs(nb) -> int:
    """Replace each figure output's HTML with one drawn from its plotly JSON without plotly.js inside; returns how
    many figures the notebook shows."""
    count = 0
    for cell in nb.cells:
        # the notebook renderer's one output that carries plotly.js itself (shown when setup_notebook() runs)
        cell["outputs"] = [o for o in cell.get("outputs", []) if not _is_plotly_library(o)]
        for out in cell.get("outputs", []):
            data = out.get("data") if out.get("output_type") in ("display_data", "execute_result") else None
            if not data or PLOTLY_MIME not in data:
                continue
            spec = data[PLOTLY_MIME]
            spec = json.loads(spec) if isinstance(spec, str) else spec
            count += 1
            data["text/html"] = _figure_html(spec, f"figure-{count}")
            for key in [k for k in data if k not in ("text/html", "text/plain")]:
                del data[key]  # the exporter would pick the plotly mimetype and emit nothing for it
    return count


def render_notebook(path: Path, out_dir: Path, timeout: int = 600) -> dict:
    """Execute ``path`` and write ``out_dir/<name>.html``; returns ``{name, title, seconds, figures, html}``."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(path), as_version=4)
    t0 = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    seconds = time.perf_counter() - t0
    figures = _plotly_outputs(nb)
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb)
    script = f'<script src="{PLOTLY_JS}" charset="utf-8"></script>'
    body = body.replace("</head>", f"{script}\n</head>", 1)
    target = out_dir / f"{path.stem}.html"
    target.write_text(body, encoding="utf-8")
    title = next((line.lstrip("# ").strip() for c in nb.cells if c.cell_type == "markdown"
                  for line in c.source.splitlines() if line.startswith("# ")), path.stem)
    return {"name": path.stem, "title": title, "seconds": seconds, "figures": figures, "html": target.name}


def _index(pages: list[dict]) -> str:
    rows = "\n".join(f'<li><a href="{html.escape(p["html"])}">{html.escape(p["title"])}</a> '
                     f'<small>({html.escape(p["name"])}.ipynb · {p["figures"]} interactive figure(s) · executed in '
                     f'{p["seconds"]:.0f} s)</small></li>' for p in pages)
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>LoRA Workbench tutorials</title>"
            f"<style>body{{font-family:system-ui,sans-serif;max-width:50em;margin:2em auto;line-height:1.5}}</style>"
            f"</head><body><h1>LoRA Workbench tutorials</h1><p>Every notebook executed by <code>make site</code> on "
            f"{time.strftime('%Y-%m-%d %H:%M')}; the figures are interactive (zoom, hover) and work offline.</p>"
            f"<ol>\n{rows}\n</ol></body></html>\n")


def build_site(notebooks: list[Path] | None = None, out: Path | str = "site", timeout: int = 600) -> list[dict]:
    """Execute ``notebooks`` (default: every ``notebooks/*.ipynb`` of the project) into ``out``; write plotly.js
    once and the index page. Returns one dict per page (see :func:`render_notebook`)."""
    import plotly.offline

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / PLOTLY_JS).write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    paths = [Path(p) for p in notebooks] if notebooks else sorted((ROOT / "notebooks").glob("*.ipynb"))
    pages = []
    for path in paths:
        page = render_notebook(path.resolve(), out, timeout)
        print(f"{path.name}: {page['figures']} figure(s), executed in {page['seconds']:.1f} s", flush=True)
        pages.append(page)
    (out / "index.html").write_text(_index(pages), encoding="utf-8")
    return pages


def size_of(folder: Path | str) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.site", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to render (default: notebooks/*.ipynb)")
    parser.add_argument("--out", default="site", help="output folder (default: site)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may run (default: 600)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    pages = build_site([Path(p) for p in args.notebooks] or None, args.out, args.timeout)
    print(f"{len(pages)} page(s) and index.html in {args.out}/ ({size_of(args.out) / 2**20:.1f} MiB) in "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
