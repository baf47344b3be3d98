"""`make demo`'s script: after its traffic the service keeps serving until Ctrl-C, then stops."""

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from conftest import EXAMPLE

pytestmark = pytest.mark.integration


def test_the_demo_keeps_serving_after_its_traffic_until_ctrl_c(tmp_path):
    proc = subprocess.Popen([sys.executable, "-u", str(EXAMPLE / "demo.py"), "--duration", "3", "--drift-after", "1",
                             "--port", "0", "--dir", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            lines.append(line)
            if "keeps serving until Ctrl-C" in line or time.monotonic() > deadline:
                break
        assert any("keeps serving until Ctrl-C" in line for line in lines), "".join(lines)
        base = next(line.split()[0] for line in lines if line.split()[0:1] and line.split()[0].endswith("/docs"))
        base = base.removesuffix("/docs")
        time.sleep(1.0)  # well after the traffic: the server still answers
        assert httpx.get(f"{base}/mlmon/health", timeout=5).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        with pytest.raises(httpx.HTTPError):  # Ctrl-C stopped the server it started
            httpx.get(f"{base}/mlmon/health", timeout=2)
    finally:
        if proc.poll() is None:  # the demo did not stop: kill it, and then its server must stop too
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        server = next((int(m[1]) for line in lines if (m := re.search(r"\(uvicorn, pid (\d+)\)", line))), None)
        if server is not None:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and alive(server):
                time.sleep(0.2)
            assert not alive(server), f"the demo's server {server} outlived the demo"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_demos_server_stops_when_the_demo_is_killed_with_9(tmp_path):
    """The server runs in a session of its own (so that Ctrl-C reaches the demo, which stops it);
    a demo killed with -9 cannot stop it, so the kernel does (PR_SET_PDEATHSIG), and no server
    is left behind, owned by init."""
    proc = subprocess.Popen([sys.executable, "-u", str(EXAMPLE / "demo.py"), "--duration", "30", "--port", "0",
                             "--dir", str(tmp_path / "demo")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = re.search(r"\(uvicorn, pid (\d+)\)", line)
            if found:
                server = int(found[1])
                break
        assert server is not None and alive(server)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and alive(server):
        time.sleep(0.2)
    assert not alive(server), "the demo's server outlived the demo killed with -9"
