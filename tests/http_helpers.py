"""A small HTTP server on 127.0.0.1 that records what is posted to it (OTLP collector, webhook),
free ports for the servers the tests start, and the wait until one of them is ready."""

import http.server
import pathlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable

import httpx


def free_port() -> int:
    """A port of 127.0.0.1 free right now (the system's choice: two test processes running side
    by side get different ones)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports of 127.0.0.1, all free right now (a server whose
    worker ``i`` listens on ``first + i``)."""
    while True:
        first = free_port()
        socks = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()


class PortTaken(RuntimeError):
    """A server could not listen: a port chosen free was taken before it bound it (by a server of
    another test file, or by another server starting at the same moment)."""


def wait_ready(proc: subprocess.Popen, url: str, log: pathlib.Path, seconds: float,
               kill: Callable[[], None] | None = None) -> None:
    """Wait until ``url`` answers 200 while ``proc`` runs. A server that exits first, or is not
    ready within ``seconds`` (then killed: ``kill``, else ``proc.kill``), fails at once with the
    end of its output (``log``): :class:`PortTaken` when a port it was to bind was taken."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    if proc.poll() is None:
        (kill or proc.kill)()
        proc.wait(timeout=20)
    output = log.read_text(errors="replace")[-3000:]
    error = PortTaken if "address already in use" in output.lower() else RuntimeError
    raise error(f"{pathlib.Path(str(proc.args[0])).name} was not ready at {url} (exit {proc.returncode}):\n{output}")


class RecordingServer(http.server.ThreadingHTTPServer):
    """Keeps ``(path, body)`` of every POST it accepts (and its headers, lower-cased, in
    ``headers``); answers 500 to the first ``failures`` posts (not recorded) and waits ``delay``
    seconds before each answer."""

    def __init__(self, failures: int = 0, delay: float = 0.0) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.headers: list[dict[str, str]] = []  # in the order of ``received``
        lock = threading.Lock()
        self.failures, self.delay = failures, delay
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(outer.delay)
                if outer.failures > 0:
                    outer.failures -= 1
                    self.send_response(500)
                else:
                    with lock:
                        outer.received.append((self.path, body))
                        outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"
