"""A real JupyterLab on 127.0.0.1 with a token, driven by headless Chromium.

One Lab server and one browser page serve the whole session (pin the tests to one xdist
worker with ``--dist loadgroup``; they carry ``xdist_group("browser")``). Everything the
server and browser write lives in a temporary folder: the Lab root, its settings, workspaces
and runtime files, the nbgrader course and exchange, and Chromium's fresh profile.
Screenshots go to ``$ATTN_BROWSER_SHOTS`` (default: ``<tmp>/attn-browser-shots``, emptied
at the start of a session) and the folder is named at the end of the run.

Teardown is in fixture finalizers, so it runs when a test fails: the page's notebook is
closed and its kernel shut down by each test, then the browser is closed, the server is
asked to shut down every kernel it still has, and the server's process group gets SIGTERM
(SIGKILL after 15 s). The server also dies with pytest (PR_SET_PDEATHSIG) and its kernels
exit when their parent does (ipykernel's parent poller).
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

from grader import course

CHROMIUM = os.environ.get("ATTN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                 "--disable-dev-shm-usage"]
SHOTS = pathlib.Path(os.environ.get("ATTN_BROWSER_SHOTS") or pathlib.Path(tempfile.gettempdir()) / "attn-browser-shots")

# Lab settings for a quiet, deterministic page: no news or update checks (no network), every
# cell attached to the DOM (no windowing, so widgets below the fold exist), no autosave.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium with apt-get)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (requirements.txt pins it)"
    return None


@dataclass
class Lab:
    base: str
    token: str
    root: pathlib.Path
    course: pathlib.Path
    proc: subprocess.Popen

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}{path}{sep}token={self.token}"

    def api(self, path: str, method: str = "GET", token: bool = True):
        request = urllib.request.Request(self.url(path) if token else self.base + path, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            return response.status, (json.loads(body) if body and path.startswith("/api") else body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _server_config(root: pathlib.Path, course_root: pathlib.Path) -> str:
    return "\n".join([
        "c = get_config()  # noqa: F821",
        "c.ServerApp.ip = '127.0.0.1'",
        "c.ServerApp.open_browser = False",
        "c.ServerApp.port_retries = 0",
        f"c.ServerApp.root_dir = {str(root)!r}",
        "c.LabApp.expose_app_in_browser = True",  # window.jupyterapp: run cells through Lab's own commands
        "c.LabApp.news_url = None",
        "c.LabApp.check_for_updates_class = 'jupyterlab.NeverCheckForUpdate'",
        "c.LabApp.extension_manager = 'readonly'",
        "c.ServerApp.terminals_enabled = False",
        f"c.CourseDirectory.root = {str(course_root)!r}",
        f"c.CourseDirectory.course_id = {course.COURSE_ID!r}",
        f"c.Exchange.root = {str(course_root / 'exchange')!r}",
        "",
    ])


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("lab")
    # nbgrader wants the course folder inside the server's root
    root, config = home / "root", home / "config"
    course_root = root / "course"
    for d in (root, config, course_root, home / "settings", home / "workspaces", home / "runtime"):
        d.mkdir()
    (course_root / "exchange").mkdir(mode=0o777)
    os.chmod(course_root / "exchange", 0o777)  # nbgrader's exchange must be world-writable
    for name, value in LAB_SETTINGS.items():
        path = home / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    text = _server_config(root, course_root)
    (config / "jupyter_server_config.py").write_text(text)
    (config / "nbgrader_config.py").write_text(text)
    (root / "nbgrader_config.py").write_text(text)  # nbgrader also reads the one in the server's folder

    token, port = secrets.token_hex(24), _free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_TOKEN=token, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               # the kernels import this checkout's attnkit, as the other notebook tests do
               PYTHONPATH=os.pathsep.join([str(course.REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for var in ("MPLBACKEND", "ATTNKIT_WIDGETS"):  # a real Lab: inline figures, attnkit decides by itself
        env.pop(var, None)
    cmd = [sys.executable, "-m", "jupyterlab", f"--port={port}", f"--IdentityProvider.token={token}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with_parent)
    server = Lab(f"http://127.0.0.1:{port}", token, root, course_root, proc)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{(home / 'server.log').read_text()[-3000:]}")
            try:
                server.api("/api/status")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer in 120 s:\n{(home / 'server.log').read_text()[-3000:]}")
                time.sleep(0.25)
        yield server
    finally:
        try:
            _, kernels = server.api("/api/kernels")
            for k in kernels:
                server.api(f"/api/kernels/{k['id']}", method="DELETE")
        except Exception:
            pass
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)


@pytest.fixture(scope="session")
def shots():
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    return SHOTS


class PageErrors(list):
    """Uncaught page errors and console errors, recorded as they come. Resources from other
    hosts (the notebooks' Colab badges) are blocked on purpose and their failures ignored."""

    def __init__(self, base: str):
        super().__init__()
        self.base = base

    def console(self, msg) -> None:
        url = msg.location.get("url", "")
        if msg.type == "error" and not (url and not url.startswith(self.base)):
            self.append(f"console error: {msg.text} ({url})")

    def take(self) -> list[str]:
        out = list(self)
        self.clear()
        return out


@pytest.fixture(scope="session")
def pw_session():
    """The one Playwright of this process (its sync API cannot run twice in one process)."""
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    try:
        yield pw
    finally:
        pw.stop()


@pytest.fixture(scope="module")
def chromium(pw_session):
    """A Chromium of its own (no Lab) for one module, from the session's one Playwright."""
    browser = pw_session.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="session")
def browser_page(lab, tmp_path_factory, pw_session):
    """One Chromium page with Lab loaded; a fresh profile in a temporary folder."""
    pw = pw_session
    context = None
    try:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
        # nothing leaves the machine: only the Lab server is reachable from the page
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(lab.base)
                      else route.abort())
        page = context.pages[0] if context.pages else context.new_page()
        page.errors = PageErrors(lab.base)
        page.on("pageerror", lambda exc: page.errors.append(f"page error: {exc}"))
        page.on("console", page.errors.console)
        page.goto(lab.url("/lab"))
        page.wait_for_function("() => window.jupyterapp !== undefined", timeout=120_000)
        page.evaluate("async () => { await window.jupyterapp.restored; }")
        yield page
    finally:
        if context is not None:
            context.close()


_SESSION_START = time.time()


def pytest_terminal_summary(terminalreporter):
    if SHOTS.is_dir():
        files = [p for p in sorted(SHOTS.glob("*.png")) if p.stat().st_mtime >= _SESSION_START]
        if files:
            terminalreporter.write_line(f"browser screenshots: {SHOTS} ({len(files)} PNG files)")
