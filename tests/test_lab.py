"""``make lab`` end to end (issue 23): JupyterLab starts on a free loopback port with a token, the project's .venv is
its kernel (``lora-workbench``), and in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright as in
tests/test_browser.py) ``00_quickstart.ipynb`` runs all its cells through the UI and draws its plotly figures; a
press of the quickstart's ``train_panel`` Run button trains live in its FigureWidgets. The notebook is a copy in a
temporary folder (``LAB_ROOT``), so nothing the run writes reaches notebooks/. Run All is JupyterLab's own command
(``notebook:run-all-cells``, what Run > Run All Cells executes) called through the app that
``LabApp.expose_app_in_browser`` exposes, once the kernel reports idle: pressing the menu while the kernel was still
starting was lost now and then. Times are printed: ``make lab`` to a usable page, and the whole notebook through the
UI. ``make screenshots`` (``WORKBENCH_SCREENSHOTS=assets``) saves the README's assets/screenshot-lab.png, otherwise
it goes to a temporary folder; ``WORKBENCH_LAB_DEBUG=<folder>`` adds two more."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]
pytestmark = [pytest.mark.slow]
SHOTS = Path(os.environ["WORKBENCH_SCREENSHOTS"]) if os.environ.get("WORKBENCH_SCREENSHOTS") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``make lab`` on a free port over a copy of the quickstart; yields (url with token, seconds to usable, port,
    (code cells, hidden code cells)). One extra config folder (JUPYTER_CONFIG_PATH, read before the others)
    exposes the app."""
    root = tmp_path_factory.mktemp("lab")
    n, hidden = _notebook_copy(root)
    config = tmp_path_factory.mktemp("lab-config")
    for name in ("jupyter_server_config.json", "jupyter_lab_config.json"):
        (config / name).write_text(json.dumps({"LabApp": {"expose_app_in_browser": True}}))
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_PLATFORM_DIRS": "1",
           "JUPYTER_CONFIG_PATH": os.pathsep.join([str(config), os.environ.get("JUPYTER_CONFIG_PATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.Popen(["make", "-s", "lab", f"LAB_PORT={port}", f"LAB_ROOT={root}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    found = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=\w+", line):
                found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.time() + 180
        while not found.wait(0.5) and proc.poll() is None and time.time() < deadline:
            pass
        assert found.is_set(), "JupyterLab printed no URL with a token:\n" + "".join(lines[-30:])
        url = re.search(rf"(http://127\.0\.0\.1:{port}/lab\?token=\w+)", "".join(lines)).group(1)
        while True:  # the URL is printed as the server starts listening: poll until the page comes
            try:
                with urllib.request.urlopen(url, timeout=60) as page:
                    assert page.status == 200 and b"JupyterLab" in page.read()
                break
            except urllib.error.URLError:
                assert proc.poll() is None and time.time() < deadline, "".join(lines[-30:])
                time.sleep(0.2)
        usable = time.perf_counter() - t0
        yield url, usable, port, (n, hidden)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the server it started: our own process group
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_make_lab_serves_loopback_with_a_token_and_the_venv_kernel(lab):
    url, usable, port, _ = lab
    print(f"\nmake lab -> usable /lab page: {usable:.1f} s")
    token = url.split("token=")[1]
    with pytest.raises(urllib.error.HTTPError):  # no token, no API
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernelspecs", timeout=30)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernelspecs?token={token}", timeout=30) as r:
        specs = json.load(r)
    assert specs["default"] == "lora-workbench"
    argv = specs["kernelspecs"]["lora-workbench"]["spec"]["argv"]
    assert Path(argv[0]).resolve() == (ROOT / ".venv" / "bin" / "python").resolve()


def _notebook_copy(root: Path) -> tuple[int, int]:
    """Copy the quickstart into ``root`` with the lab's kernel named in its metadata (the notebooks name
    ``python3`` so nbmake runs them anywhere; a name that is not the server's default made JupyterLab ask "Select
    Kernel" in a dialog that swallowed the first Run All). Returns the number of code cells and of those whose
    input is hidden (the exercises' solutions, shown collapsed)."""
    notebook = json.loads((ROOT / "notebooks" / "00_quickstart.ipynb").read_text())
    notebook["metadata"]["kernelspec"] = {"name": "lora-workbench", "display_name": "LoRA Workbench (.venv)",
                                          "language": "python"}
    (root / "00_quickstart.ipynb").write_text(json.dumps(notebook))
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    return len(code), sum(c["metadata"].get("jupyter", {}).get("source_hidden", False) for c in code)


# the notebook panel JupyterLab shows, from the app it exposes (LabApp.expose_app_in_browser, set by the fixture)
PANEL = "(() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget; " \
        "return w && w.sessionContext ? w : null; })()"
# (code cells, code cells with an execution count, kernel status) of that panel's notebook model
PROGRESS = f"""() => {{ const w = {PANEL}; const cells = w.content.model.cells; let count = 0, done = 0;
  for (let i = 0; i < cells.length; i++) {{ const c = cells.get(i);
    if (c.type === 'code') {{ count++; if (c.executionCount != null) done++; }} }}
  return [count, done, w.sessionContext.session?.kernel?.status ?? 'none']; }}"""


@pytest.mark.browser
def test_quickstart_runs_in_jupyterlab_with_a_widget(lab):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    playwright = pytest.importorskip("playwright.sync_api")
    url, _, port, (n, hidden) = lab
    token = url.split("token=")[1]
    debug = Path(os.environ["WORKBENCH_LAB_DEBUG"]) if os.environ.get("WORKBENCH_LAB_DEBUG") else None
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"http://127.0.0.1:{port}/lab/tree/00_quickstart.ipynb?token={token}")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
            # Run All only once the kernel is up and idle: a press before that was the lost press of earlier runs
            page.wait_for_function(f"{PANEL} && {PANEL}.sessionContext.session?.kernel?.status === 'idle'",
                                   timeout=120_000, polling=250)
            if debug:
                page.screenshot(path=str(debug / "lab-0-open.png"))
            t0 = time.perf_counter()
            # the menu's own command (Run > Run All Cells), executed on the notebook it shows
            page.evaluate(f"async () => {{ const w = {PANEL}; window.jupyterapp.shell.activateById(w.id); "
                          "await window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            deadline = time.time() + 240
            while time.time() < deadline:
                count, done, status = page.evaluate(PROGRESS)
                if count == n and done == n and status == "idle":
                    break
                if page.locator(".jp-OutputArea-output[data-mime-type*='error']").count():
                    break  # Run All stops at an error: no need to wait for the rest
                time.sleep(0.5)
            print(f"\n00_quickstart through the UI: {time.perf_counter() - t0:.1f} s for {n} code cells")
            errors = page.locator(".jp-OutputArea-output[data-mime-type*='error']").all_text_contents()
            assert not errors, errors[0][-2000:]
            assert (count, done, status) == (n, n, "idle"), f"{done} of {count} code cells ran; kernel {status}"
            # what the page shows agrees: every prompt of a shown input carries its execution count (text content,
            # not innerText: cells scrolled out of view are not rendered, and their innerText reads empty); a hidden
            # input (a solution) shows a placeholder without a prompt
            prompts = [t.strip() for t in page.locator(".jp-CodeCell .jp-InputPrompt").all_text_contents()]
            numbered = [t for t in prompts if re.fullmatch(r"\[\d+\]:", t)]
            assert len(numbered) == n - hidden and all(t in numbered or not t for t in prompts), prompts
            # attached, not "visible": JupyterLab skips painting cells scrolled out of view (content-visibility)
            page.locator(".js-plotly-plot svg.main-svg").first.wait_for(state="attached", timeout=60_000)
            # the quickstart's train_panel: its widgets render, and Run trains in the kernel's background thread
            # while the loss FigureWidget draws live
            button = page.locator(".jupyter-widgets button", has_text="Run").first
            button.wait_for(timeout=60_000)
            button.scroll_into_view_if_needed()
            button.click()
            trace = page.locator(".jupyter-widgets .js-plotly-plot .scatterlayer .trace").first
            trace.wait_for(state="attached", timeout=60_000)
            news = page.get_by_role("button", name="No", exact=True)  # JupyterLab's "get notified of news?" toast
            if news.count():
                news.first.click()
            # the run finishes in the kernel and the panel says so (its status line, as the dashboard's)
            page.locator(".jupyter-widgets .widget-html", has_text=re.compile(r"completed · run")).first \
                .wait_for(state="attached", timeout=120_000)
            page.locator(".jupyter-widgets h3", has_text="lora on synthetic:lowrank").first \
                .evaluate("el => el.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
            folder = SHOTS or Path(tempfile.mkdtemp(prefix="lab-shot-"))
            folder.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(folder / "screenshot-lab.png"))
        finally:
            if debug:
                page.screenshot(path=str(debug / "lab-end.png"))
            browser.close()
