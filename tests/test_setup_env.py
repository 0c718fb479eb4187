"""tools/setup_env.py, what `make setup` runs: where torch comes from, which
wheels a toolkit switch removes, and what it would do here (--dry-run)."""

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import setup_env  # noqa: E402


def _never(url):
    raise AssertionError("the index must not be probed here")


@pytest.mark.parametrize("installed, requested, platform, driver, expected", [
    (True, None, "linux", False, None),                       # keep the torch there is
    (False, "https://example.org/cu126", "linux", True, "https://example.org/cu126"),
    (False, None, "darwin", False, None),                     # PyPI's macOS torch has no CUDA
    (False, None, "linux", True, None),                       # a GPU: the CUDA build
])
def test_torch_index_without_probing(installed, requested, platform, driver, expected):
    index, why = setup_env.torch_index(requested, installed, platform, driver, reachable=_never)
    assert index == expected and why


def test_no_driver_takes_the_cpu_index_when_it_answers():
    index, why = setup_env.torch_index(None, False, "linux", False, reachable=lambda url: True)
    assert index == setup_env.TORCH_CPU_INDEX == "https://download.pytorch.org/whl/cpu"
    assert "CPU build" in why


def test_no_driver_falls_back_to_the_default_index_and_says_so():
    index, why = setup_env.torch_index(None, False, "linux", False, reachable=lambda url: False)
    assert index is None
    assert "cannot be reached" in why and "default index" in why


def test_index_reachable_with_a_local_index():
    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/simple/torch/" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert setup_env.index_reachable(f"http://127.0.0.1:{server.server_port}/simple", timeout=5)
        assert not setup_env.index_reachable(f"http://127.0.0.1:{server.server_port}/missing", timeout=5)
    finally:
        server.shutdown()


def test_a_silent_index_times_out_quickly():
    """An index that accepts the connection and never answers (a blocked
    link) must not stall `make setup`: it counts as unreachable."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        start = time.monotonic()
        assert not setup_env.index_reachable(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        assert time.monotonic() - start < 5
    finally:
        listener.close()


def test_a_refused_index_is_unreachable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends
    assert not setup_env.index_reachable(f"http://127.0.0.1:{port}", timeout=5)


needs_numba_cuda = pytest.mark.skipif("numba-cuda" not in setup_env.installed_names(),
                                      reason="this environment has no numba-cuda (CUDA=none)")


@needs_numba_cuda
def test_toolkit_wheels_are_numba_cuda_and_its_cuda_libraries_only():
    installed = setup_env.installed_names()
    wheels = setup_env.toolkit_wheels(installed)
    assert {"numba-cuda", "cuda-bindings"} <= wheels
    assert any(name.startswith("nvidia-cuda-runtime") for name in wheels)
    # What the rest of the course needs stays.
    assert not wheels & {"numba", "numpy", "torch", "packaging", "llvmlite", "upsamplelib"}


def test_installed_toolkit_is_what_make_recorded():
    toolkit = os.environ.get("UPSAMPLELIB_TOOLKIT")
    if toolkit is None:
        pytest.skip("UPSAMPLELIB_TOOLKIT is not set (it is under make test)")
    assert setup_env.installed_toolkit(setup_env.installed_names()) == toolkit
    assert setup_env.recorded_toolkit() == toolkit


def test_nothing_is_removed_when_the_toolkit_stays():
    installed = setup_env.installed_names()
    current = setup_env.installed_toolkit(installed)
    if current is None or setup_env.recorded_toolkit() not in (None, current):
        pytest.skip("this environment is between two toolkits")
    assert setup_env.wheels_to_remove(current, installed) == set()


def _dry_run(toolkit):
    result = subprocess.run([sys.executable, "tools/setup_env.py", "--toolkit", toolkit, "--dry-run"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, TORCH_INDEX=""))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@needs_numba_cuda
def test_switching_away_removes_the_toolkit_and_installs_the_other_extra():
    current = setup_env.installed_toolkit(setup_env.installed_names())
    other = {"cu13": "cu12", "cu12": "cu13"}.get(current)
    if other is None:
        pytest.skip("no single toolkit installed")
    plan = _dry_run(other)
    removed = next(line for line in plan.splitlines() if line.startswith(f"switching to toolkit {other}: removing"))
    assert "numba-cuda" in removed and f"nvidia-cuda-runtime{'' if current == 'cu13' else '-cu12'}" in removed
    assert "numba," not in removed and "torch" not in removed
    assert f"[course,test,{other}]" in plan
    plan = _dry_run("none")
    assert "switching to toolkit none: removing" in plan and "[course,test]" in plan


def test_staying_removes_nothing():
    current = setup_env.installed_toolkit(setup_env.installed_names())
    if current is None or setup_env.recorded_toolkit() not in (None, current):
        pytest.skip("this environment is between two toolkits")
    plan = _dry_run(current)
    assert "switching" not in plan
    assert ("[course,test]" if current == "none" else f"[course,test,{current}]") in plan


def test_torch_cuda_major_reads_the_installed_build():
    import torch

    expected = torch.version.cuda.split(".")[0] if torch.version.cuda else None
    assert setup_env.torch_cuda_major() == expected
