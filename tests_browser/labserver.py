"""A private JupyterLab server for the browser tests, and what the tests ask it.

``running_lab(root, log)`` starts ``python -m jupyterlab`` (this Python, so
the course's environment and its ``python3`` kernel) on 127.0.0.1, a free
port and a random token, serving ``root``; its settings, workspaces and
runtime files live in a temporary folder, so a user's own JupyterLab
settings change nothing and nothing is written outside it. On exit, also
after a failure, it shuts down the kernels and the server, and ends any of
the server's processes still alive (by their ids).
"""

from __future__ import annotations

import contextlib
import json
import os
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
from pathlib import Path

import psutil

#: Seconds JupyterLab may take to answer after it starts (a cold start on a
#: loaded 2-core machine takes 10-20 s).
START_TIMEOUT = 180
STOP_TIMEOUT = 30

#: Settings a fresh JupyterLab would otherwise ask about in a toast that can
#: cover the notebook: no news, no update check.
USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
}


@dataclass
class Lab:
    url: str
    token: str
    process: subprocess.Popen

    def page_url(self, notebook: str) -> str:
        # a workspace of its own, reset: the default one would reopen the
        # notebooks of earlier tests, and one of them could take the focus
        workspace = notebook.split(".")[0].replace("_", "-")
        return f"{self.url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def kernels(self) -> list[dict]:
        return self.api("kernels")

    def kernels_idle(self) -> bool:
        """Every kernel started and idle (none busy, starting or restarting)."""
        kernels = self.kernels()
        return bool(kernels) and all(k["execution_state"] == "idle" for k in kernels)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.25):
    """Poll ``condition()`` until it returns a true value (returned), or fail
    after ``timeout`` seconds saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(interval)


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _answers(lab: Lab) -> bool:
    if lab.process.poll() is not None:
        raise RuntimeError(f"JupyterLab exited with code {lab.process.returncode}")
    try:
        lab.api("status")
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def running_lab(root: Path, log: Path):
    """A JupyterLab serving ``root``, its output written to ``log``."""
    with tempfile.TemporaryDirectory(prefix="upsample-lab-") as private:
        private = Path(private)
        for name, values in USER_SETTINGS.items():
            target = private / "settings" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(values))
        port, token = free_port(), secrets.token_hex(24)
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            f"--LabApp.user_settings_dir={private / 'settings'}",
            f"--LabApp.workspaces_dir={private / 'workspaces'}",
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            # window.jupyterapp: the tests read the notebook's model (which
            # cells ran, their tags) instead of parsing prompts
            "--LabApp.expose_app_in_browser=True",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # containers and CI run as root
        environment = dict(os.environ, JUPYTER_CONFIG_DIR=str(private / "config"),
                           JUPYTER_RUNTIME_DIR=str(private / "runtime"), PYTHONUNBUFFERED="1")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment,
                                       cwd=root, start_new_session=True)
        lab = Lab(f"http://127.0.0.1:{port}", token, process)
        try:
            try:
                wait_for(lambda: _answers(lab), START_TIMEOUT, "JupyterLab to answer")
            except (RuntimeError, TimeoutError) as error:
                raise RuntimeError(f"{error}; its log ({log}):\n{_log_tail(log)}") from None
            yield lab
        finally:
            stop_lab(lab)


def stop_lab(lab: Lab):
    """Shut the kernels and the server down through the API; then end, by
    their ids, whichever of the server's processes (kernels included) is
    still alive."""
    try:
        started = psutil.Process(lab.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    if lab.process.poll() is None:
        with contextlib.suppress(Exception):
            for kernel in lab.kernels():
                lab.api(f"kernels/{kernel['id']}", method="DELETE")
        with contextlib.suppress(Exception):
            lab.api("shutdown", method="POST")
        try:
            lab.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(lab.process.pid, signal.SIGTERM)
            try:
                lab.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                lab.process.kill()
                lab.process.wait()
    _, alive = psutil.wait_procs(started, timeout=STOP_TIMEOUT)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=STOP_TIMEOUT)


def find_chromium() -> str:
    """The Chromium (or Chrome) binary to drive: $CHROMIUM, else Debian's
    chromium package (whose /usr/bin/chromium is a wrapper script around
    /usr/lib/chromium/chromium), else one on the PATH."""
    candidates = [os.environ.get("CHROMIUM"), "/usr/lib/chromium/chromium",
                  *(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome"))]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("no Chromium found for the browser test: on Debian or Ubuntu `apt-get install chromium`, "
                       "or set CHROMIUM=/path/to/chromium (Google Chrome works too)")
