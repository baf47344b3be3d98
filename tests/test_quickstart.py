"""The README's quick start, exactly as written, in a fresh venv from the built wheel.

The wheel is built from this checkout; the README's ``pip install`` line runs with the wheel in
place of the package name (same extras, same other packages) in a new venv; its ``app.py`` is
the README's Python block; its shell lines start uvicorn and send the request and the scrape.
What a user would see is checked: the answer, and ``mlmon_predictions_total`` counting it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from http_helpers import free_port

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


def test_the_readme_quick_start_runs_as_written(tmp_path):
    install, app, run = quickstart_blocks()
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], check=True)
    [wheel] = dist.glob("mlmon_middleware-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    words = shlex.split(install)
    assert words[:2] == ["pip", "install"] and words[2].startswith("mlmon-middleware[")
    words[2] = f"{wheel}{words[2][len('mlmon-middleware'):]}"
    # the README's pip install into the new venv, run by this venv's pip (--python: no pip of
    # its own to bootstrap) without compiling bytecode ahead: the same packages, 20 s sooner
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *words[1:], "-q",
                    "--no-compile"], check=True, timeout=600)

    work = tmp_path / "work"
    work.mkdir()
    (work / "app.py").write_text(app)
    port = free_port()
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    # the block as written (its port made free), in one shell, in a session of its own so that
    # the server it leaves in the background can be stopped with it
    # (its output to a file: the server it leaves running keeps a pipe open; uvicorn's own log
    # lines go there too, as on a user's terminal)
    output = tmp_path / "terminal.txt"
    with open(output, "w") as terminal:
        shell = subprocess.Popen(["bash", "-c", run.replace("8000", str(port))], cwd=work, env=env,
                                 stdout=terminal, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert shell.wait(timeout=120) == 0, output.read_text()
        lines = output.read_text().splitlines()
        assert '{"prediction":0.9}' in lines, lines
        [counted] = [line for line in lines if line.startswith("mlmon_predictions_total")]
        assert counted.startswith("mlmon_predictions_total{") and counted.endswith(" 1.0")
        assert 'mlmon_model_name="fraud"' in counted and 'outcome="ok"' in counted
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGTERM)  # the uvicorn the block started in the background
