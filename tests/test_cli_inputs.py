"""Bad inputs to the ``mlmon`` command: one line on standard error naming the file and what is
wrong, exit status 2, no traceback; no baseline of zero rows, from the CLI or the API; a missing
library of the ``[cli]`` extra named with the command that installs it (tqdm: no bar, same baseline)."""

import errno
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mlmon_middleware import Baseline, cli, training_file
from mlmon_middleware.baseline import BaselineError
from mlmon_middleware.profile import Profiler
from mlmon_middleware.schema import FeatureSchema
from mlmon_middleware.training_file import build_baseline

INSTALL = "pip install 'mlmon-middleware[cli]'"


def fails(capsys, *argv):
    """The one error line of ``mlmon argv``, which must exit with 2."""
    assert cli.main(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlmon: error: "), captured.err
    assert captured.out == ""
    return lines[0]


def build(capsys, path, out, *extra):
    return fails(capsys, "baseline", "build", str(path), "--model", "m", "--out", str(out), "--quiet", *extra)


@pytest.fixture()
def files(tmp_path):
    frame = pd.DataFrame({"x": np.arange(50, dtype=float), "c": ["a", "b"] * 25, "y": [0, 1] * 25})
    frame.to_csv(tmp_path / "ok.csv", index=False)
    frame.to_parquet(tmp_path / "ok.parquet")
    return tmp_path


def test_a_header_only_csv_is_refused_and_writes_nothing(files, capsys):
    (files / "header.csv").write_text("x,c,y\n")
    line = build(capsys, files / "header.csv", files / "out.json")
    assert "header.csv" in line and "no data rows" in line
    assert not (files / "out.json").exists()
    pd.DataFrame({"x": pd.Series([], dtype=float)}).to_parquet(files / "zero.parquet")
    assert "no data rows" in build(capsys, files / "zero.parquet", files / "out.json")


def test_no_api_builds_a_baseline_of_zero_rows(files):
    (files / "header.csv").write_text("x,c,y\n")
    with pytest.raises(BaselineError, match="no data rows"):
        build_baseline(str(files / "header.csv"), "m", progress=False)
    with pytest.raises(BaselineError, match="no rows to profile"):
        Baseline.from_profilers(Profiler(FeatureSchema(["x", "c"], ["numeric", "categorical"])))
    for empty in ([], pd.DataFrame({"x": []}), np.empty((0, 3))):
        with pytest.raises(BaselineError, match="no rows to profile"):
            Baseline.from_data(empty)


def test_missing_empty_and_unreadable_training_files(files, capsys, monkeypatch):
    (files / "empty.csv").write_bytes(b"")
    (files / "folder.csv").mkdir()
    out = files / "out.json"
    assert "'" + str(files / "nope.csv") + "' does not exist" in build(capsys, files / "nope.csv", out)
    assert "empty.csv' is empty (0 bytes)" in build(capsys, files / "empty.csv", out)
    assert "folder.csv' is a directory, not a file" in build(capsys, files / "folder.csv", out)

    def denied(path, *args, **kwargs):  # chmod cannot keep root out: refuse the open instead
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(training_file, "open", denied, raising=False)
    assert "ok.csv' cannot be read: Permission denied" in build(capsys, files / "ok.csv", out)


def test_files_that_are_not_what_their_name_says(files, capsys):
    out = files / "out.json"
    (files / "garbage.parquet").write_bytes(b"not parquet at all")
    whole = (files / "ok.parquet").read_bytes()
    (files / "truncated.parquet").write_bytes(whole[: len(whole) // 2])
    (files / "parquet.csv").write_bytes(whole)
    (files / "gzip.csv").write_bytes(b"\x1f\x8b\x08\x00\xff\xfe\x00\x00")
    (files / "ragged.csv").write_text("x,y\n" + "1,2\n" * 300 + "1,2,3\n")  # bad far into the file
    for name in ("garbage.parquet", "truncated.parquet"):
        assert f"{name}' cannot be read as Parquet: Parquet magic bytes not found" in build(capsys, files / name, out)
    assert "parquet.csv' is a Parquet file: name it .parquet" in build(capsys, files / "parquet.csv", out)
    assert "gzip.csv' cannot be read as CSV: 'utf-8' codec can't decode" in build(capsys, files / "gzip.csv", out)
    line = build(capsys, files / "ragged.csv", out, "--chunk-rows", "100")
    assert "ragged.csv' cannot be read as CSV: Error tokenizing data. C error: Expected 2 fields in line 302, saw 3" in line
    assert not out.exists()


def test_a_file_with_no_feature_column(files, capsys):
    pd.DataFrame({"t": [0, 1], "p": [0.2, 0.9]}).to_csv(files / "labels.csv", index=False)
    line = build(capsys, files / "labels.csv", files / "out.json", "--target", "t", "--prediction", "p")
    assert "labels.csv' has no feature column" in line


def test_an_out_that_cannot_be_written(files, capsys, monkeypatch):
    ok = files / "ok.csv"
    assert f"'{files / 'no' / 'b.json'}': '{files / 'no'}' is not an existing folder" in build(capsys, ok, files / "no" / "b.json")
    assert "is not an existing folder" in build(capsys, ok, ok / "b.json")  # its "folder" is a file
    assert f"--out '{files}' is a directory" in build(capsys, ok, files)

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    line = build(capsys, ok, files / "b.json")
    assert line == f"mlmon: error: --out '{files / 'b.json'}' cannot be written: No space left on device"
    assert sorted(p.name for p in files.iterdir()) == ["ok.csv", "ok.parquet"]  # no partial or temporary file


def test_options_out_of_range_are_refused_before_reading(files, capsys):
    for option, value in (("--bins", "1"), ("--chunk-rows", "0"), ("--sample-rows", "many")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["baseline", "build", str(files / "ok.csv"), "--model", "m", "--out", "b.json", option, value])
        assert exit_.value.code == 2
        assert f"argument {option}: must be an integer >= " in capsys.readouterr().err


def test_without_tqdm_the_same_baseline_without_a_bar(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert cli.main(["baseline", "build", str(files / "ok.csv"), "--model", "m", "--out", str(files / "b.json")]) == 0
    assert capsys.readouterr().err == f"mlmon: note: no progress bar without tqdm ({INSTALL})\n"
    assert Baseline.load(files / "b.json").row_count == 50


@pytest.mark.parametrize(("module", "name", "needs"), [("pandas", "ok.csv", "reading a training file needs pandas"),
                                                        ("pyarrow.parquet", "ok.parquet", "reading a Parquet file needs pyarrow")])
def test_a_missing_reader_names_the_extra(files, capsys, monkeypatch, module, name, needs):
    monkeypatch.setitem(sys.modules, module, None)
    assert build(capsys, files / name, files / "b.json") == f"mlmon: error: {needs}: {INSTALL}"


def test_config_files(tmp_path, capsys, monkeypatch):
    yml, js = tmp_path / "t.yml", tmp_path / "t.json"
    yml.write_text("psi_critical: 0.3\n")
    js.write_text('{"psi_critical": 0.3}')
    assert cli.main(["rules", "render", "--config", str(yml)]) == 0 and ">= 0.3" in capsys.readouterr().out
    (tmp_path / "bad.yml").write_text("psi_critical: [0.3\n")
    line = fails(capsys, "rules", "render", "--config", str(tmp_path / "bad.yml"))
    assert "bad.yml': rule settings are not valid YAML: expected ',' or ']'" in line and "(line 2, column 1)" in line
    (tmp_path / "binary.yml").write_bytes(b"\xff\xfe\x00")
    line = fails(capsys, "rules", "render", "--config", str(tmp_path / "binary.yml"))
    assert "binary.yml' is not text (not UTF-8 at byte 0)" in line
    assert "nope.yml' does not exist" in fails(capsys, "rules", "render", "--config", str(tmp_path / "nope.yml"))
    assert "is a directory, not a file" in fails(capsys, "rules", "render", "--config", str(tmp_path))

    monkeypatch.setitem(sys.modules, "yaml", None)  # without PyYAML: JSON works, YAML names what to install
    assert cli.main(["rules", "render", "--config", str(js)]) == 0 and ">= 0.3" in capsys.readouterr().out
    line = fails(capsys, "rules", "render", "--config", str(yml))
    assert line.startswith(f"mlmon: error: config file '{yml}': rule settings are not JSON (")
    assert line.endswith(f"reading YAML needs PyYAML: {INSTALL} (or pyyaml)")


def test_the_installed_command_prints_one_line_and_exits_2(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 and then nothing")
    for name, reason in (("empty.csv", "is empty (0 bytes)"), ("bad.parquet", "cannot be read as Parquet")):
        done = subprocess.run([sys.executable, "-m", "mlmon_middleware.cli", "baseline", "build", name, "--model", "m",
                               "--out", "b.json"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith(f"mlmon: error: training file '{name}' {reason}")
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
