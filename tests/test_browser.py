"""The prompt probe in a real browser: JupyterLab + headless Chromium, driven by Playwright.

Starts JupyterLab on 127.0.0.1 (free port, random token) over a temporary folder holding a copy of
notebooks/08_prompt_probe.ipynb, opens it in Debian's Chromium (no Playwright browser download), runs
all cells from the Run menu, types a new prompt, clicks the probe's Generate button and waits for the
generated tokens to appear in the model's column. The notebook runs in its smoke setting
(TULU_LAB_SMOKE=1: one model, 16 tokens). A screenshot is saved to figures/08_prompt_probe_browser.png
(or to $TULU_LAB_BROWSER_SCREENSHOT).

    .venv/bin/python -m pytest -m browser tests/test_browser.py
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "08_prompt_probe.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The machine is slow and shared: loading the model and generating can take minutes.
START_TIMEOUT_S = 180
RUN_ALL_TIMEOUT_S = 600
GENERATE_TIMEOUT_S = 300

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"Chromium is not installed at {CHROMIUM} "
                       "(Debian: apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def jupyterlab(tmp_path):
    """(base url, token, notebook name): JupyterLab serving a temporary copy of notebook 08."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    metadata = json.loads(NOTEBOOK.read_text())["metadata"]
    assert metadata["kernelspec"]["name"] == "python3", "without kernelspec metadata a kernel dialog blocks clicks"

    # Settings of our own: no news toast, no update check, nothing read from or written to ~/.jupyter.
    app_settings = tmp_path / "app-settings"
    app_settings.mkdir()
    (app_settings / "overrides.json").write_text(json.dumps({
        "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}))
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
        TULU_LAB_SMOKE="1", TULU_LAB_RUNS=str(tmp_path / "runs"), TULU_LAB_FIGURES=str(tmp_path / "figures"),
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
    )
    port, token = free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
               f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={root}",
               f"--LabApp.app_settings_dir={app_settings}", f"--LabApp.user_settings_dir={tmp_path / 'user-settings'}",
               f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--ServerApp.port_retries=0"]
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{base}/api/status?token={token}", process, log, START_TIMEOUT_S)
        yield base, token, NOTEBOOK.name
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def screenshot_path() -> Path:
    if os.environ.get("TULU_LAB_BROWSER_SCREENSHOT"):
        return Path(os.environ["TULU_LAB_BROWSER_SCREENSHOT"])
    return ROOT / "figures" / "08_prompt_probe_browser.png"


def status_run_number(text: str) -> int:
    """The N of "run N done: ..." in the probe's status line (0 before any run)."""
    words = text.split()
    return int(words[1]) if len(words) > 2 and words[0] == "run" and words[2] == "done:" else 0


def run_all_cells(page, attempts: int = 3) -> None:
    """Run > Run All Cells, again if no cell started (a click before the kernel is ready is lost)."""
    kernel_ready = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    started = page.locator(".jp-InputArea-prompt", has_text=re.compile(r"\[(\*|\d+)\]"))
    for attempt in range(attempts):
        kernel_ready.wait_for(timeout=START_TIMEOUT_S * 1000)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            started.first.wait_for(timeout=60_000)
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            page.keyboard.press("Escape")  # close a menu left open, then try again


def test_prompt_probe_generates_in_jupyterlab(jupyterlab, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    base, token, name = jupyterlab
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            drive_probe(page, base, token, name)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))  # what the browser showed, for the report
            print(f"screenshot of the failure: {tmp_path / 'failure.png'}")
            raise
        finally:
            browser.close()


def drive_probe(page, base: str, token: str, name: str) -> None:
    """Open the notebook, run all cells, type a prompt, click Generate, check and photograph the result."""
    page.goto(f"{base}/lab/tree/{name}?token={token}", timeout=START_TIMEOUT_S * 1000)
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=START_TIMEOUT_S * 1000)
    page.get_by_text("Python 3 (ipykernel)").first.wait_for(timeout=START_TIMEOUT_S * 1000)

    run_all_cells(page)

    status = page.locator(".tulu-probe-status")
    status.first.wait_for(timeout=RUN_ALL_TIMEOUT_S * 1000)
    # The notebook's own cells generate twice; wait until the last of them is done.
    deadline = time.monotonic() + RUN_ALL_TIMEOUT_S
    while status_run_number(status.first.inner_text()) < 2:
        assert time.monotonic() < deadline, f"cells did not finish: status {status.first.inner_text()!r}"
        time.sleep(2)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
        timeout=RUN_ALL_TIMEOUT_S * 1000)
    runs_before = status_run_number(status.first.inner_text())

    probe = page.locator(".jupyter-widgets.widget-vbox", has=page.locator(".tulu-probe-status")).first
    probe.scroll_into_view_if_needed()
    probe.locator("textarea").first.fill("Say hello in French.")
    page.locator(".jupyter-widgets button", has_text="Generate").first.click()

    deadline = time.monotonic() + GENERATE_TIMEOUT_S
    while status_run_number(status.first.inner_text()) <= runs_before:
        assert time.monotonic() < deadline, f"no result after Generate: {status.first.inner_text()!r}"
        time.sleep(1)
    column = page.locator(".tulu-probe-column").first
    tokens = column.locator(".tulu-token")
    assert tokens.count() > 0, f"no tokens in the probe's column: {column.inner_text()!r}"
    generated = "".join(tokens.all_inner_texts()).strip()
    assert generated, "the generated tokens are empty"
    assert "sample 1" in column.inner_text()
    assert page.locator(".tulu-probe-error").first.inner_text().strip() == ""
    assert "Say hello in French." in page.locator(".tulu-probe-prompt").first.inner_text()

    column.scroll_into_view_if_needed()
    path = screenshot_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
