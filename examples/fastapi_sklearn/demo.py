"""`make demo`: train, baseline, serve with uvicorn on 127.0.0.1, drive drifting traffic.

    python examples/fastapi_sklearn/demo.py [--duration 600] [--port 8000] [--drift-after 60] [--exit-when-done]

The traffic stops after ``--duration`` seconds; the service keeps serving (its URLs printed
again) until Ctrl-C, which stops the server it started. ``--exit-when-done`` stops it with the
traffic (for scripts).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import time

import httpx

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
from traffic import drive  # noqa: E402
from train import train  # noqa: E402


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def with_parent(command: list[str]) -> list[str]:
    """``command`` run so that it gets SIGTERM when this process exits, however it exits (Linux:
    prctl PR_SET_PDEATHSIG, which exec keeps; it exits at once if this process is gone already).
    Set in the child before exec: no ``preexec_fn``, which is unsafe in a parent with threads.
    Strictly, the kernel watches the *thread* that started it: start servers from a thread that
    lives as long as they should (the main one, here and in the tests)."""
    if sys.platform != "linux":
        return command
    return [sys.executable, "-c",
            "import ctypes, os, signal, sys\n"
            "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
            "if os.getppid() != int(sys.argv[1]):\n"
            "    sys.exit('the process that started this server is gone')\n"
            "os.execv(sys.argv[2], sys.argv[2:])\n",
            str(os.getpid()), *command]


def start_service(demo_dir: pathlib.Path, port: int, log_path: pathlib.Path, env: dict[str, str] | None = None,
                  app: str = "service:app", app_dir: pathlib.Path = HERE, server: str = "uvicorn",
                  workers: int = 1) -> subprocess.Popen:
    """Start the example service (or another ``app`` in ``app_dir``) in a real ``uvicorn`` (or
    ``gunicorn`` with uvicorn workers) process on 127.0.0.1 with ``workers`` worker processes and
    wait until it answers; ``env`` adds environment variables (``MLMON_*`` settings)."""
    env = {**os.environ, **(env or {}), "MLMON_DEMO_DIR": str(demo_dir.resolve())}
    log = open(log_path, "wb")
    if server == "gunicorn":
        command = [sys.executable, "-m", "gunicorn", app, "--chdir", str(app_dir), "-k", "uvicorn.workers.UvicornWorker",
                   "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--log-level", "warning"]
    else:
        command = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir), "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning"] + (["--workers", str(workers)] if workers > 1 else [])
    # a session of its own: kill_service() can end the server with its workers, even by SIGKILL;
    # and on Linux the server is told to stop (SIGTERM) when the process that started it dies,
    # however it dies: a demo or a test killed with -9 leaves no server behind, owned by init
    proc = subprocess.Popen(with_parent(command), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/mlmon/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    kill_service(proc)
    raise RuntimeError(f"the service did not answer within 60 s; see {log_path}")


def kill_service(proc: subprocess.Popen) -> None:
    """SIGKILL the server and every worker it started (killing only the server would leave its
    workers running, adopted by init)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 600)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--drift-after", type=float, default=60.0, help="seconds before the inputs start to drift")
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path(".demo"))
    parser.add_argument("--exit-when-done", action="store_true", help="stop the service when the traffic ends")
    args = parser.parse_args()

    print("training the credit-risk model on synthetic data and writing its baseline ...")
    model_path, baseline_path = train(args.dir)
    print(f"  model    {model_path}\n  baseline {baseline_path}")
    port = free_port(args.port)
    base = f"http://127.0.0.1:{port}"
    token = secrets.token_urlsafe(16)  # mlmon's routes that return inputs or take labels need it
    proc = start_service(args.dir, port, args.dir / "service.log",
                         env={"MLMON_CHECK_INTERVAL": "10", "MLMON_STORE_DIR": str((args.dir / "log").resolve()),
                              "MLMON_API_TOKEN": token})
    auth = {"Authorization": f"Bearer {token}"}
    urls = f"""  {base}/mlmon/#token={token}
                         the dashboard: drift per feature with histograms, performance, alerts, explanations
  {base}/docs            the API docs; try POST /predict
  {args.dir / 'service.log'}    the service's log
  with the header 'Authorization: Bearer {token}' (curl -H ...):
  {base}/mlmon/metrics   Prometheus metrics (mlmon_predictions_total, mlmon_inference_duration_seconds, ...)
  {base}/mlmon/health    models, counts, window fill, capture and monitor errors (status only without the token)
  {base}/mlmon/drift     the latest drift check, every 10 s: per feature PSI, KS, JS, Wasserstein, chi², severity
  {base}/mlmon/performance  accuracy, AUC, ... over the labels the traffic posts 5 s after each prediction
  {base}/mlmon/alerts    firing alerts and recent alert events"""
    print(f"\nthe example service is up (uvicorn, pid {proc.pid}); its API token (MLMON_API_TOKEN) is {token}\n{urls}\n"
          f"\nsending ~{args.rate:g} requests/s for {args.duration:g} s; inputs start drifting after {args.drift_after:g} s.\n"
          f"Ctrl-C stops it.\n", flush=True)
    try:
        counts = drive(base, args.duration, args.rate, args.drift_after, label_delay=5.0, token=token)
        print(f"traffic done: {counts}")
        health = httpx.get(f"{base}/mlmon/health", headers=auth, timeout=5).json()
        model = health["models"]["credit-risk"]
        print(f"mlmon saw {model['predictions']} predictions, {model['rows_in_window']} rows in the window, "
              f"capture errors {model['capture_errors'] or 'none'}")
        report = httpx.get(f"{base}/mlmon/drift", params={"refresh": "true"}, headers=auth, timeout=30).json()["credit-risk"]
        if report.get("status") == "ok":
            print(f"drift check on {report['rows']} rows ({report['regime']}): drifted {report['drifted'] or 'nothing'}; "
                  f"share {report['share']:.2f}; prediction drift: {report['prediction_drift']}")
        performance = httpx.get(f"{base}/mlmon/performance", headers=auth, timeout=30).json()["credit-risk"]
        overall = (performance.get("windows", {}).get("last_1000") or {}).get("overall")
        if overall:
            print(f"performance over the last {int(overall['count'])} labelled predictions: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in overall.items() if k != "count" and v is not None))
        if not args.exit_when_done:
            # Ctrl-C sets a flag rather than raising: a KeyboardInterrupt landing inside
            # Popen.poll() can leave its internal lock held, and the wait below would then hang
            stop: list[int] = []
            signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
            print(f"\nthe traffic is done; the service keeps serving until Ctrl-C:\n{urls}\n", flush=True)
            while not stop and proc.poll() is None:
                time.sleep(0.2)
            print("\nstopped" if stop else f"the service exited with {proc.returncode}; see {args.dir / 'service.log'}")
    except KeyboardInterrupt:
        print("\nstopped")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_service(proc)


if __name__ == "__main__":
    main()
