"""`make demo`'s script: after its traffic the service keeps serving until Ctrl-C, then stops."""

import os
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
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
