"""The batch-scoring example (examples/batch_scoring/score.py) runs and labels every prediction."""

import importlib.util
import sqlite3

from conftest import ROOT


def test_the_batch_job_labels_every_prediction_it_scored(tmp_path):
    spec = importlib.util.spec_from_file_location("batch_score", ROOT / "examples" / "batch_scoring" / "score.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.run(str(tmp_path), customers=50) == {"scored": 50, "labelled": 50}
    with sqlite3.connect(tmp_path / "predictions.sqlite") as db:
        rows = db.execute("SELECT COUNT(*), COUNT(label), COUNT(DISTINCT prediction_id) FROM predictions").fetchone()
    assert rows == (50, 50, 50)
