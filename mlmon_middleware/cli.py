"""The ``mlmon`` command.

    mlmon baseline build TRAIN.csv|TRAIN.parquet --model NAME --out baseline.json
                         [--target COL] [--prediction COL] [--categorical COL ...]
                         [--bins 10] [--sample-rows 200000] [--chunk-rows 100000]
    mlmon rules render [--config thresholds.yml] > mlmon-rules.yml
    mlmon dashboard grafana > dashboard.json

reads the file in chunks (pandas for CSV, pyarrow for Parquet: the ``[cli]`` extra), with a
progress bar on standard error, so memory stays near the reservoir sample plus one chunk
whatever the file's size. Every column but ``--target`` and ``--prediction`` is a feature;
numeric columns are numeric features unless named by ``--categorical``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mlmon_middleware.baseline import Baseline, BaselineError
from mlmon_middleware.profile import Profiler
from mlmon_middleware.schema import CATEGORICAL, NUMERIC, FeatureSchema
from mlmon_middleware.values import category_key


def _chunks(path: str, chunk_rows: int) -> Iterator[tuple[Any, float]]:
    """(DataFrame chunk, share of the file read so far) of a CSV or Parquet file."""
    if path.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        total, done = parquet.metadata.num_rows or 1, 0
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            done += batch.num_rows
            yield batch.to_pandas(), done / total
        return
    import pandas as pd

    size = os.path.getsize(path) or 1
    with open(path, "rb") as handle:
        for chunk in pd.read_csv(handle, chunksize=chunk_rows, low_memory=False):
            yield chunk, min(handle.tell() / size, 1.0)


def _category(value: object) -> str | None:
    """A file's categorical value as requests will name it (dates and other types by their text)."""
    try:
        return category_key(value)
    except (TypeError, ValueError):
        return str(value)


def _matrices(frame: Any, schema: FeatureSchema) -> tuple[np.ndarray, np.ndarray]:
    """The numeric (NaN for missing or unparseable) and categorical (None for missing) matrices
    of a DataFrame's columns in ``schema``."""
    import pandas as pd

    n = len(frame)
    numeric = np.empty((n, len(schema.numeric_names)))
    for j, name in enumerate(schema.numeric_names):
        numeric[:, j] = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    categorical = np.empty((n, len(schema.categorical_names)), dtype=object)
    for j, name in enumerate(schema.categorical_names):
        column = frame[name]
        categorical[:, j] = [None if missing else _category(v) for v, missing in zip(column.tolist(), column.isna().tolist())]
    return numeric, categorical


def _schema(frame: Any, columns: Sequence[str], categorical: Sequence[str]) -> FeatureSchema:
    import pandas as pd

    kinds = [CATEGORICAL if c in categorical or not pd.api.types.is_numeric_dtype(frame[c]) else NUMERIC
             for c in columns]
    return FeatureSchema(columns, kinds)


def build_baseline(path: str, model: str, *, target: str | None = None, prediction: str | None = None,
                   categorical: Sequence[str] = (), bins: int = 10, sample_rows: int = 200_000,
                   chunk_rows: int = 100_000, progress: bool = True) -> Baseline:
    """Stream ``path`` into a :class:`Baseline` (see the module docstring)."""
    from tqdm import tqdm

    if not os.path.exists(path):
        raise BaselineError(f"{path!r} does not exist")
    chunks = _chunks(path, chunk_rows)
    try:
        first, share = next(chunks)
    except StopIteration:
        raise BaselineError(f"{path!r} has no rows") from None
    named = [c for c in (target, prediction) if c is not None]
    missing = [c for c in [*named, *categorical] if c not in first.columns]
    if missing:
        raise BaselineError(f"{path!r} has no column {missing[0]!r}; columns: {list(first.columns)}")
    columns = [str(c) for c in first.columns if c not in named]
    first.columns = [str(c) for c in first.columns]
    # what to read from each chunk (a schema of the file's columns) -> what accumulates it
    sources = [(_schema(first, columns, categorical), Profiler(_schema(first, columns, categorical), sample_rows))]
    outputs: dict[str, Profiler] = {}
    for key, column, name in (("predictions", prediction, "prediction"), ("target", target, target)):
        if column is not None:
            read = _schema(first, [column], categorical)
            outputs[key] = Profiler(FeatureSchema([name or key], read.kinds), sample_rows, seed=len(sources))
            sources.append((read, outputs[key]))
    bar = tqdm(total=100, unit="%", desc=f"profiling {os.path.basename(path)}", disable=not progress,
               file=sys.stderr, bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]")
    chunk: Any = first
    while True:
        chunk.columns = [str(c) for c in chunk.columns]
        for read, profiler in sources:
            profiler.add(*_matrices(chunk, read))
        bar.update(share * 100 - bar.n)
        try:
            chunk, share = next(chunks)
        except StopIteration:
            break
    bar.close()
    baseline = Baseline.from_profilers(sources[0][1], outputs.get("predictions"), model=model, bins=bins)
    if "target" in outputs:  # the label's distribution, for label drift once labels arrive
        baseline.payload["target"] = outputs["target"].profiles(bins, 2000)
    return baseline


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlmon", description="mlmon-middleware tools")
    commands = parser.add_subparsers(dest="command", required=True)
    baseline = commands.add_parser("baseline", help="baselines").add_subparsers(dest="action", required=True)
    build = baseline.add_parser("build", help="profile a training file into a baseline")
    build.add_argument("path", help="a .csv or .parquet file")
    build.add_argument("--model", required=True)
    build.add_argument("--out", required=True)
    build.add_argument("--target")
    build.add_argument("--prediction")
    build.add_argument("--categorical", nargs="*", default=[])
    build.add_argument("--bins", type=int, default=10)
    build.add_argument("--sample-rows", type=int, default=200_000)
    build.add_argument("--chunk-rows", type=int, default=100_000)
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    rules = commands.add_parser("rules", help="Prometheus rules").add_subparsers(dest="action", required=True)
    render = rules.add_parser("render", help="print alerting and recording rules for mlmon's metrics")
    render.add_argument("--config", help="a YAML or JSON file of thresholds (see mlmon_middleware.rules.RuleConfig)")
    dashboard = commands.add_parser("dashboard", help="dashboards").add_subparsers(dest="action", required=True)
    dashboard.add_parser("grafana", help="print a Grafana dashboard (JSON) for mlmon's metrics")
    args = parser.parse_args(argv)
    if args.command == "dashboard":
        import orjson

        from mlmon_middleware.dashboards import grafana_dashboard

        print(orjson.dumps(grafana_dashboard(), option=orjson.OPT_INDENT_2).decode())
        return 0
    if args.command == "rules":
        from mlmon_middleware.config import ConfigError
        from mlmon_middleware.rules import RuleConfig
        from mlmon_middleware.rules import render as render_rules

        try:
            config = RuleConfig.from_text(open(args.config).read()) if args.config else RuleConfig()
        except (OSError, ConfigError, ValueError) as exc:
            print(f"mlmon: {exc}", file=sys.stderr)
            return 2
        print(render_rules(config), end="")
        return 0
    try:
        result = build_baseline(args.path, args.model, target=args.target, prediction=args.prediction,
                                categorical=args.categorical, bins=args.bins, sample_rows=args.sample_rows,
                                chunk_rows=args.chunk_rows, progress=not args.quiet)
    except BaselineError as exc:
        print(f"mlmon: {exc}", file=sys.stderr)
        return 2
    result.save(args.out)
    print(f"{args.out}: {result.row_count} rows, {len(result.features)} features "
          f"({', '.join(f'{n}:{k}' for n, k in zip(result.schema.names, result.schema.kinds))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
