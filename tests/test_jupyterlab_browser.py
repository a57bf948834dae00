"""Notebook 00 in a live JupyterLab, checked in a real browser (Chromium driven by Playwright), and its exported HTML.

One JupyterLab server from this environment (its ``python3`` kernel is the virtualenv's, as ``scripts/setup.sh``
registers it) runs on 127.0.0.1, on a free port, with a token, over a temporary root / config / data / settings
folder holding a copy of the notebook (the committed file is never touched). Chromium runs all cells at the tiny
profile and the page is checked: no error output, every plotly figure drawn, the threshold explorer's slider there
and moving it changes the precision / coverage it shows. The executed notebook is then exported with
``fer_lab.notebooks.export_html`` and opened with every network request refused: the figures must still draw.

Screenshots (test artefacts): ``reports/browser/jupyterlab_00.png`` and ``reports/browser/export_00.png``
(``FER_LAB_BROWSER_ARTEFACTS`` picks another folder). The server's process group (and any kernel it started) is
stopped and its port checked free whatever happens. Chromium comes from ``scripts/setup.sh`` (Debian's package,
where it runs as root); ``FER_LAB_CHROMIUM`` names another binary. Without Playwright or a browser the tests skip
and say why.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fer_lab import notebooks as nbs


REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "00_synthfer_tour.ipynb"
ARTEFACTS = Path(os.environ.get("FER_LAB_BROWSER_ARTEFACTS", REPO / "reports" / "browser"))
PLOTLY_MIME = "application/vnd.plotly.v1+json"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 90
RUN_ALL_S = 420           # notebook 00 at the tiny profile runs in about 40 s; a loaded 2-core machine is far slower
TITLE = re.compile(r"threshold (?P<t>[\d.]+): coverage (?P<cov>[\d.]+%|n/a) \(\d+/\d+\), precision (?P<prec>[\d.]+%|n/a)")


def chromium_binary() -> str | None:
    named = os.environ.get("FER_LAB_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


class LabServer:
    """A JupyterLab server in its own process group over a temporary root; :meth:`stop` ends it and its kernels."""

    def __init__(self, base: Path):
        self.root, self.home = base / "root", base / "jupyter"
        self.root.mkdir(parents=True)
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        settings = self.home / "settings"
        # every cell in the DOM (the default windowing detaches cells out of view); no news or update checks
        write_json(settings / "@jupyterlab/notebook-extension/tracker.jupyterlab-settings", {"windowingMode": "none"})
        write_json(settings / "@jupyterlab/apputils-extension/notification.jupyterlab-settings",
                   {"fetchNews": "false", "checkForUpdates": False})
        env = {**os.environ, "FER_LAB_PROFILE": "tiny", "JUPYTER_CONFIG_DIR": str(self.home / "config"),
               "JUPYTER_DATA_DIR": str(self.home / "data"), "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
               "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(self.home / "workspaces"),
               "PYTHONUNBUFFERED": "1"}
        env.pop("JUPYTER_PATH", None)  # the kernel is this environment's (sys.prefix/share/jupyter/kernels/python3)
        self.log_path = base / "jupyterlab.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={self.root}", "--ServerApp.terminals_enabled=False",
             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
            + (["--allow-root"] if os.geteuid() == 0 else []),
            cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]

    def wait_ready(self, timeout: float = SERVER_START_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with status {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer on {self.url} within {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM to the server's process group (the server shuts its kernels down, then exits), SIGKILL to
        whatever is left, kernels included (they run in sessions of their own); then the port must be free."""
        import psutil

        try:
            family = [self.proc.pid] + [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            family = [self.proc.pid]
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = []
            for pid in family:
                try:
                    proc = psutil.Process(pid)
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        proc.send_signal(sig)
                        alive.append(proc)
                except psutil.Error:
                    pass
            if not alive:
                break
            psutil.wait_procs(alive, timeout=5)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=10)
        self._log.close()
        deadline = time.monotonic() + 10
        while not port_is_free(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert port_is_free(self.port), f"port {self.port} is still taken after stopping JupyterLab"


# -- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def playwright_browser(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium found: scripts/setup.sh installs Debian's chromium where it runs as root "
                    "(apt-get); elsewhere install one or point FER_LAB_CHROMIUM at it")
    with sync_api.sync_playwright() as pw:
        profile = tmp_path_factory.mktemp("chromium-profile")  # a new, empty user-data dir
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=binary, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000}, chromium_sandbox=False)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = LabServer(tmp_path_factory.mktemp("jupyterlab"))
    try:
        shutil.copy(NOTEBOOK, server.root / NOTEBOOK.name)
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def executed_lab_page(playwright_browser, lab):
    """Notebook 00 opened in JupyterLab, every cell run (tiny profile) and the notebook saved; yields the page."""
    page = playwright_browser.new_page()
    page.set_default_timeout(60_000)
    try:
        open_and_run_all(page, lab)
    except Exception:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTEFACTS / "jupyterlab_00_failed.png"))  # where it stood
        page.close()
        raise
    saved = lab.root / NOTEBOOK.name
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if any(c.get("outputs") for c in json.loads(saved.read_text())["cells"] if c["cell_type"] == "code"):
                break
        except (json.JSONDecodeError, KeyError):
            pass  # half written
        time.sleep(0.5)
    try:
        yield page
    finally:
        page.close()


def open_and_run_all(page, lab: LabServer) -> None:
    """Open the notebook, wait for its kernel, run every cell, wait until all ran (or one failed), save."""
    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}")
    page.wait_for_function(
        """name => {
            const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const kernel = w && w.context && w.context.path === name && w.sessionContext.session
                           && w.sessionContext.session.kernel;
            return kernel && kernel.status === 'idle' && w.content.widgets.length > 0;
        }""", arg=NOTEBOOK.name, timeout=SERVER_START_S * 1000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # done when every code cell has run, or when a cell failed (run-all then stops there)
    page.wait_for_function(
        """() => {
            const w = window.jupyterapp.shell.currentWidget;
            const cells = w.content.widgets.filter(c => c.model.type === 'code');
            const failed = cells.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
            const done = cells.every(c => c.model.executionCount !== null && !/\\*/.test(c.promptNode.textContent));
            return failed || (done && w.sessionContext.session.kernel.status === 'idle');
        }""", timeout=RUN_ALL_S * 1000, polling=500)
    page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")


# -- tests ---------------------------------------------------------------------------------------------------------
def cell_outputs(page) -> list[list[dict]]:
    return page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets
        .filter(c => c.model.type === 'code').map(c => c.model.outputs.toJSON())""")


def explorer_title(cell) -> str:
    return cell.locator(".js-plotly-plot .gtitle").first.text_content() or ""


def test_export_html_embeds_plotly_once_and_drops_widget_state(tmp_path):
    """Without a browser: the page holds one plotly.js, one drawing div per figure, no widget state; the renderer's
    own copy of the library (and its stale per-figure HTML) is gone, other outputs are kept."""
    import nbformat
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    figs = [go.Figure(go.Bar(x=["a", "b"], y=[1, 2])), go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))]
    library = f"<script>window.PlotlyConfig = {{}};</script>\n<script>{get_plotlyjs()}</script>"
    outputs = [nbformat.v4.new_output("display_data", data={"text/html": library})]
    outputs += [nbformat.v4.new_output("display_data", data={PLOTLY_MIME: f.to_plotly_json(),
                                                             "text/html": "<div>stale-figure-html</div>"}) for f in figs]
    outputs.append(nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "m1", "version_major": 2, "version_minor": 0},
        "text/plain": "VBox()", "text/html": "<p class='static'>static copy</p>"}))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("figs", outputs=outputs)])
    nb.metadata["widgets"] = {nbs.WIDGET_STATE_MIME: {"state": {"m1": {}}, "version_major": 2, "version_minor": 0}}
    path = tmp_path / "report.ipynb"
    nbformat.write(nb, path)
    page = nbs.export_html(path).read_text()
    assert page.count("plotly.js v") == 1 and page.index("plotly.js v") < page.index("</head>")
    assert page.count('class="plotly-graph-div"') == 2 and page.count("Plotly.newPlot") == 2
    assert "stale-figure-html" not in page and "static copy" in page
    assert nbs.WIDGET_STATE_MIME not in page and "html-manager" not in page  # no widget loader from a CDN
    assert nbformat.read(path, as_version=4).metadata["widgets"]  # the notebook itself is left as it was


@pytest.mark.browser
@pytest.mark.slow
def test_notebook_00_runs_in_jupyterlab(executed_lab_page, lab):
    page = executed_lab_page
    outputs = cell_outputs(page)
    errors = [o for cell in outputs for o in cell if o.get("output_type") == "error"]
    assert not errors, "error output: " + "\n".join(f"{e['ename']}: {e['evalue']}" for e in errors)
    assert page.locator(".jp-OutputArea-output:has-text('Traceback (most recent call last)')").count() == 0
    counts = page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets
        .filter(c => c.model.type === 'code').map(c => c.model.executionCount)""")
    assert None not in counts, f"cells left unrun (execution counts {counts})"

    # every plotly figure is drawn: an SVG (or WebGL canvas) of non-zero size holding its traces
    n_figures = sum(PLOTLY_MIME in o.get("data", {}) for cell in outputs for o in cell)
    assert n_figures >= 5, f"notebook 00 shows {n_figures} plotly figures"
    plots = page.locator(".jp-OutputArea .js-plotly-plot")  # the plotly renderer's output node is the plot
    assert plots.count() >= n_figures + 1  # + the explorer's figure (inside its widget)
    for i in range(plots.count()):
        plot = plots.nth(i)
        plot.scroll_into_view_if_needed()
        box = plot.locator("svg.main-svg").first.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, f"plotly figure {i} is not drawn ({box})"
        assert plot.locator("g.trace, .gl-container canvas, image").count() > 0, f"plotly figure {i} has no traces"

    # the threshold explorer: a slider whose move changes the coverage / precision the figure shows
    explorer = page.locator(".jp-CodeCell:has(.widget-hslider)")
    assert explorer.count() == 1, "the threshold explorer's slider is not on the page"
    explorer.scroll_into_view_if_needed()
    before = TITLE.search(explorer_title(explorer))
    assert before, f"explorer title not understood: {explorer_title(explorer)!r}"
    handle = explorer.locator(".widget-hslider .noUi-handle").first
    track = explorer.locator(".widget-hslider .noUi-target").first.bounding_box()
    hb = handle.bounding_box()
    assert hb and track, "the slider has no handle or track"
    # toward the end that changes what is accepted: everything at 0 unless already all, else little at 1
    target_x = track["x"] + 1 if before["cov"] != "100.0%" else track["x"] + track["width"] - 1
    page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2)
    page.mouse.down()
    page.mouse.move(target_x, hb["y"] + hb["height"] / 2, steps=8)
    page.mouse.up()
    page.wait_for_function(
        "([sel, old]) => { const t = document.querySelector(sel); return t && t.textContent !== old; }",
        arg=[".jp-CodeCell:has(.widget-hslider) .js-plotly-plot .gtitle", before.group(0)], timeout=30_000)
    page.wait_for_timeout(1500)  # let the last of the drag's updates land
    after = TITLE.search(explorer_title(explorer))
    assert after, f"explorer title not understood after the move: {explorer_title(explorer)!r}"
    readout = explorer.locator(".widget-readout").first.text_content().strip()
    assert float(readout) == pytest.approx(float(after["t"]), abs=0.011), (readout, after.group(0))
    assert after["t"] != before["t"] and (after["cov"], after["prec"]) != (before["cov"], before["prec"]), \
        (before.group(0), after.group(0))
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "jupyterlab_00.png"))


@pytest.mark.browser
@pytest.mark.slow
def test_exported_html_opens_offline_with_figures(executed_lab_page, lab, playwright_browser):
    saved = lab.root / NOTEBOOK.name
    page_path = nbs.export_html(saved, lab.root / "00_synthfer_tour.html")
    text = page_path.read_text()
    assert text.count("plotly.js v") == 1, "plotly.js must be embedded exactly once"
    n_figures = text.count('class="plotly-graph-div"')
    assert n_figures >= 6  # notebook 00's figures + the explorer's static copy

    page = playwright_browser.new_page()
    refused, js_errors = [], []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
               else (refused.append(route.request.url), route.abort()))
    page.on("pageerror", lambda err: js_errors.append(str(err)))
    try:
        page.goto(page_path.as_uri(), wait_until="load", timeout=60_000)
        page.wait_for_function("n => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                               ".filter(p => p.querySelector('svg.main-svg')).length >= n", arg=n_figures,
                               timeout=60_000)
        plots = page.locator(".js-plotly-plot")
        assert plots.count() == n_figures
        for i in range(n_figures):
            assert plots.nth(i).locator("g.trace, image").count() > 0, f"exported figure {i} has no traces"
        note = page.locator(".fer-lab-static-explorer .fer-lab-static-note")
        assert note.count() == 1 and "live kernel" in note.text_content()
        static = page.locator(".fer-lab-static-explorer .js-plotly-plot")
        assert static.count() == 1 and static.locator("svg.main-svg").count() > 0
        assert not js_errors, js_errors
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTEFACTS / "export_00.png"), full_page=True)
    finally:
        page.close()

