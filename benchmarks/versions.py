"""The request path of two revisions side by side: did a change make monitoring dearer?

    python benchmarks/versions.py BEFORE [AFTER] [--pairs 5] [--rounds 7] [--requests 2000]

Checks out ``BEFORE`` (and ``AFTER``, default: the working tree) into temporary git worktrees
and runs ``overhead.py asgi`` of each revision's own tree (the library and the benchmark of
that revision, in this interpreter), alternating revisions pair by pair (``--pairs``), so both
see the same states of the machine. Each run measures bare FastAPI and the monitored variants
in one process; the µs a variant adds to bare is taken per run, and the table gives, per
variant, the median over the pairs of each revision and the per-pair ratio after / before
(median; min–max).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
ROW = re.compile(r"^\| (?P<variant>[^|]+?) \| (?P<us>[\d.]+) \| (?P<added>[+-]?[\d.]+) \|$")


@contextlib.contextmanager
def checkout(revision: str | None) -> Iterator[str]:
    """A folder holding ``revision`` (None: the working tree itself)."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, capture_output=True, text=True,
                          check=True).stdout.strip()
    if revision is None:
        yield root
        return
    folder = tempfile.mkdtemp(prefix="mlmon-version-")
    subprocess.run(["git", "worktree", "add", "--detach", folder, revision], cwd=root, check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", folder], cwd=root, check=False, capture_output=True)


def run(tree: str, rounds: int, requests: int) -> dict[str, float]:
    """variant -> µs added to bare, from one ``overhead.py asgi`` run of ``tree``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, os.path.join(tree, "adapters")])}
    out = subprocess.run([sys.executable, os.path.join(tree, "benchmarks", "overhead.py"), "asgi", "--rounds",
                          str(rounds), "--requests", str(requests)], env=env, capture_output=True, text=True,
                         check=True, cwd=tree).stdout
    added = {}
    for line in out.splitlines():
        match = ROW.match(line.strip())
        if match:
            added[match["variant"].strip()] = float(match["added"])
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default=None, help="default: the working tree")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; `python benchmarks/versions.py "
          f"{args.before} {args.after or ''} --pairs {args.pairs}`\n")
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with checkout(args.before) as before, checkout(args.after) as after:
        for pair in range(args.pairs):
            order = [("before", before), ("after", after)] if pair % 2 == 0 else [("after", after), ("before", before)]
            for name, tree in order:
                results[name].append(run(tree, args.rounds, args.requests))
            print(f"pair {pair + 1} done", file=sys.stderr)
    variants = [v for v in results["before"][0] if v in results["after"][0] and v != "bare FastAPI"]
    print("| variant | µs added, before (median) | µs added, after (median) | after / before, per pair (median; min–max) |")
    print("|---|---:|---:|---|")
    for variant in variants:
        old = [r[variant] for r in results["before"]]
        new = [r[variant] for r in results["after"]]
        ratios = [n / o for n, o in zip(new, old) if o > 0]
        span = f"{statistics.median(ratios):.2f}; {min(ratios):.2f}–{max(ratios):.2f}" if ratios else "—"
        print(f"| {variant} | {statistics.median(old):.1f} | {statistics.median(new):.1f} | {span} |")


if __name__ == "__main__":
    main()
