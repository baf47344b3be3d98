"""The README's quick start, exactly as written, in a fresh venv from the built wheel.

The wheel is built from this checkout; the README's ``pip install`` line runs with the wheel in
place of the package name (same extras, same other packages) in a new venv; its ``app.py`` is
the README's Python block; its shell lines start uvicorn and send the request and the scrape.
What a user would see is checked: the answer, and ``mlmon_predictions_total`` counting it.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time

import httpx
import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration


def quickstart_blocks() -> tuple[str, str, str]:
    """The install line, the app and the run block of the README's quick start."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    section = section[: section.index("\n## ", 3)]
    found = re.findall(r"^```(\w+)\n(.*?)^```", section, re.M | re.S)
    [install, run] = [code for lang, code in found if lang == "sh"][:2]
    [app] = [code for lang, code in found if lang == "python"]
    return install.strip(), app, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_quick_start_runs_as_written(tmp_path):
    install, app, run = quickstart_blocks()
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], check=True)
    [wheel] = dist.glob("mlmon_middleware-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    words = shlex.split(install)
    assert words[:2] == ["pip", "install"] and words[2].startswith("mlmon-middleware[")
    words[2] = f"{wheel}{words[2][len('mlmon-middleware'):]}"
    subprocess.run([str(venv / "bin" / "python"), "-m", *words, "-q"], check=True, timeout=600)

    work = tmp_path / "work"
    work.mkdir()
    (work / "app.py").write_text(app)
    port = free_port()
    lines = [line for line in run.replace("8000", str(port)).splitlines() if line.strip()]
    server_line, requests = lines[0], lines[1:]
    assert server_line.startswith("uvicorn ") and server_line.endswith("&")
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    server = subprocess.Popen(shlex.split(server_line[:-1]), cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/mlmon/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not answer"
            time.sleep(0.2)
        outputs = [subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=30).stdout for line in requests]
        assert outputs[0].strip() == '{"prediction":0.9}'
        [counted] = outputs[1].strip().splitlines()
        assert counted.startswith("mlmon_predictions_total{") and counted.endswith(" 1.0")
        assert 'mlmon_model_name="fraud"' in counted and 'outcome="ok"' in counted
    finally:
        server.terminate()
        server.wait(timeout=30)
