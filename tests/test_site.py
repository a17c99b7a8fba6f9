"""The rendered tutorial site (issue 23, ``make site``): notebooks executed into static HTML whose plotly figures are
interactive and offline, plotly.js written once for the whole site, an index page linking every page; two pages
opened in headless Chromium (Debian's /usr/bin/chromium, as tests/test_browser.py drives it) draw their figures.

The notebooks here are two small ones written by the test (the project's own take a minute each; `make site`
renders those), built with the same :func:`workbench.site.build_site`."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

from workbench import site

pytestmark = pytest.mark.slow  # executing two notebooks: a kernel each (about a minute on a busy 2-core machine)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]

CELLS = {
    "first": ["# Loss of a short run\nA run of LoRA on the synthetic task.",
              "import workbench as wb\nfrom workbench import figures\nfigures.setup_notebook()",
              "run = wb.train('synthetic:lowrank', 'lora', steps=20, every=10, probes=['spectra'])\n"
              "figures.loss_curves(run)",
              "figures.spectra(run)"],
    "second": ["# A weight update\nΔW as a heatmap.",
               "import torch\nfrom workbench import figures\nfigures.setup_notebook()\n"
               "figures.delta_heatmap(torch.outer(torch.arange(4.0), torch.ones(6)))"],
}


def notebook(folder: Path, name: str, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(c) if c.startswith("#") else nbformat.v4.new_code_cell(c)
                for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    src, out = tmp_path_factory.mktemp("notebooks"), tmp_path_factory.mktemp("site")
    paths = [notebook(src, name, cells) for name, cells in CELLS.items()]
    pages = site.build_site(paths, out, timeout=300)
    return out, pages


def test_site_pages_index_and_one_plotly_js(built):
    out, pages = built
    assert [p["name"] for p in pages] == ["first", "second"]
    assert [p["figures"] for p in pages] == [2, 1]
    index = (out / "index.html").read_text()
    assert 'href="first.html"' in index and 'href="second.html"' in index and "Loss of a short run" in index
    js = (out / site.PLOTLY_JS).read_text()
    assert len(js) > 1_000_000  # the whole library, offline
    marker = js[:2000][-200:]  # a piece of the library's own text
    for page in ("first.html", "second.html"):
        text = (out / page).read_text()
        assert marker not in text and "PlotlyConfig" not in text  # the pages load the one shared file instead
        assert f'<script src="{site.PLOTLY_JS}"' in text and "Plotly.newPlot" in text
        assert len(text) < 1_000_000
    print(f"\nsite of 2 small notebooks: {site.size_of(out) / 2**20:.1f} MiB")


@pytest.mark.browser
@pytest.mark.slow
def test_pages_draw_their_figures_in_chromium(built):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    playwright = pytest.importorskip("playwright.sync_api")
    out, _ = built
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        remote = []
        page.on("request", lambda r: remote.append(r.url) if urlparse(r.url).scheme in ("http", "https") else None)
        for name, figures in (("first", 2), ("second", 1)):
            page.goto((out / f"{name}.html").as_uri())
            page.locator(".js-plotly-plot svg.main-svg").first.wait_for(timeout=30_000)
            assert page.locator(".js-plotly-plot").count() == figures
            assert page.evaluate("typeof Plotly") == "object"
            drawn = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(g => g.data.length)")
            assert all(n >= 1 for n in drawn), drawn
        page.goto((out / "index.html").as_uri())
        page.get_by_role("link", name="A weight update").click()
        page.locator(".js-plotly-plot svg.main-svg").first.wait_for(timeout=30_000)
        browser.close()
    # the figures need nothing from the network (the lab template may still ask a CDN for MathJax/require.js)
    assert not [u for u in remote if "plotly" in u], remote
