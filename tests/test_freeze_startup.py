"""The start-up's objects out of the garbage collector's way (``freeze_startup``).

Each case runs in a process of its own: a freeze is for the life of a process, and this test
process is not the one to study.
"""

import os
import subprocess
import sys
import textwrap

import pytest

LIFESPAN = textwrap.dedent('''
    import asyncio, gc, json, sys
    from fastapi import FastAPI
    from mlmon_fastapi import instrument_app
    from mlmon_middleware import Monitor, MonitorConfig, monitor

    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    app = FastAPI()
    loaded = []

    @app.on_event("startup")
    def load_model():  # the app's own start-up makes objects: the model it loads
        loaded.append([{"tree": i} for i in range(10_000)])

    @app.post("/predict")
    @monitor(model="m", registry=mon)
    async def predict(row: dict) -> dict:
        return {"prediction": 1}

    instrument_app(app, registry=mon)
    seen = {}

    async def lifespan():
        incoming = asyncio.Queue()
        for kind in ("lifespan.startup", "lifespan.shutdown"):
            incoming.put_nowait({"type": kind})
        sent = []

        async def send(message):
            sent.append(message["type"])
            if message["type"] == "lifespan.startup.complete":
                seen["frozen"] = gc.get_freeze_count()
                # the collector's generations list every object it tracks but the frozen ones
                seen["model frozen"] = id(loaded[0]) not in {id(o) for o in gc.get_objects()}

        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, incoming.get, send)
        seen["sent"] = sent

    before = gc.get_freeze_count()
    asyncio.run(lifespan())
    print(json.dumps({"before": before, **seen}))
''')


def run(code: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_the_servers_start_freezes_what_the_start_up_made():
    import json

    got = json.loads(run(LIFESPAN))
    assert got["sent"] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert got["before"] == 0
    # everything alive at start-up, the app's loaded model included, is frozen
    assert got["frozen"] > 10_000 and got["model frozen"]


@pytest.mark.parametrize("off", ["off", "false", "0"])
def test_freeze_startup_off_leaves_the_collector_alone(off):
    import json

    got = json.loads(run(LIFESPAN, MLMON_FREEZE_STARTUP=off))
    assert got["sent"] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert got["frozen"] == 0 and not got["model frozen"]


def test_freeze_startup_runs_once_per_process_and_again_in_a_forked_child():
    code = textwrap.dedent('''
        import gc, os, weakref
        from mlmon_middleware.memory import freeze_startup

        class Node:
            pass

        garbage = Node()
        garbage.me = garbage  # a cycle nothing refers to: collected first, never frozen
        gone = weakref.ref(garbage)
        del garbage
        first, again = freeze_startup(), freeze_startup()
        assert gone() is None
        frozen = gc.get_freeze_count()
        made_after = [[i] for i in range(1000)]  # made after the freeze: not frozen (the count below stays)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, str(int(freeze_startup())).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        child = os.read(read, 10).decode()
        print(first, again, frozen > 0, gc.get_freeze_count() == frozen, child)
    ''')
    assert run(code) == "True False True True 1"
