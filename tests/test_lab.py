"""`make lab` as a user runs it: the URL it prints logs in, the server answers only on 127.0.0.1, and only with
the token."""

from __future__ import annotations

import os
import queue
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
URL = re.compile(r"(http://[^\s/:]+:(\d+)/lab\?token=(\S+))")
START_TIMEOUT_S = 45
# No proxy, whatever the environment says: every request here goes to loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str) -> int:
    try:
        with OPENER.open(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


def wait_for(predicate, deadline: float, what: str, log: list[str]):
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"`make lab`: {what} within {START_TIMEOUT_S} s; output:\n{''.join(log)}")


@pytest.fixture
def lab(tmp_path):
    """A running `make lab` on a free port that answers its printed token: yields (printed URL, the port in it,
    the token in it, the port asked for)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    if not (ROOT / ".venv" / "bin" / "jupyter").is_file():
        pytest.skip("the environment is not built (`make env` would install packages)")
    port = free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    # `-o .venv/.installed`: the built environment counts as current, so a requirement file edited since it was
    # built does not make this test reinstall packages (a download); the recipe run is `make lab`'s own.
    process = subprocess.Popen(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "lab", f"LAB_PORT={port}"],
        cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    log: list[str] = []

    def printed_url():
        while not lines.empty():
            log.append(lines.get())
            match = URL.search(log[-1])
            if match:
                return match
        if process.poll() is not None:
            pytest.fail(f"`make lab` exited with {process.returncode} before printing a URL:\n{''.join(log)}")
        return None

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        match = wait_for(printed_url, deadline, "no URL printed", log)
        url, printed_port, token = match.group(1), int(match.group(2)), match.group(3)

        def answers():
            if process.poll() is not None:
                pytest.fail(f"`make lab` exited with {process.returncode}:\n{''.join(log)}")
            try:
                return http_status(f"http://127.0.0.1:{port}/api/status?token={token}") == 200
            except OSError:  # not listening yet
                return False

        wait_for(answers, deadline, "the server did not answer with the printed token", log)
        yield url, printed_port, token, port
    finally:
        # The recipe execs jupyter in make's shell: the whole session goes with the group.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_make_lab_prints_a_url_that_logs_in_on_loopback_only(lab):
    url, printed_port, token, port = lab
    assert url.startswith(f"http://127.0.0.1:{port}/lab?token="), url
    assert printed_port == port
    assert re.fullmatch(r"[0-9a-f]{48}", token), f"the printed token is masked or not a fresh random one: {token!r}"

    assert http_status(f"http://127.0.0.1:{port}/api/status?token={token}") == 200
    assert http_status(f"http://127.0.0.1:{port}/api/status") in (401, 403)
    assert http_status(f"http://127.0.0.1:{port}/api/status?token={'0' * 48}") in (401, 403)
    # Bound to 127.0.0.1 itself, not to every interface: another loopback address (Linux routes all of
    # 127.0.0.0/8 to lo) is refused.
    with socket.socket() as sock, pytest.raises(OSError):
        sock.settimeout(2)
        sock.connect(("127.0.0.2", port))
