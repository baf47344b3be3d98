"""Concept drift on the error stream: Page-Hinkley, DDM and ADWIN, from river.

Same inputs, different right answers: input-drift checks cannot see it, the errors can. Each
check feeds the errors of the predictions labelled since the previous check, in the order they
were made, to three sequential detectors. They come from `river` (the ``[concept]`` extra), a
maintained implementation of the published algorithms, rather than our own copies:

* Page-Hinkley (Page, 1954): a cumulative sum of deviations from the running mean.
* DDM (Gama et al., 2004): the error rate and its standard deviation against their best so far;
  binary errors only (classification).
* ADWIN (Bifet and Gavaldà, 2007): an adaptive window cut where two sub-windows' means differ.

The errors are 0/1 (wrong prediction) for classification and the absolute error for regression.
Each detector alone false-alarms now and then on a long stationary stream (a sequential test
run forever); the performance tracker raises concept drift only when two agree.

>>> detectors = ErrorStreamDetectors(binary=True)
>>> import random
>>> random.seed(1)
>>> found = detectors.update([int(random.random() < (0.05 if i < 2000 else 0.6)) for i in range(4000)])
>>> sorted(found)  # each detector fired on this stream
['adwin', 'ddm', 'page_hinkley']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def river_available() -> bool:
    try:
        import river.drift  # noqa: F401
    except ImportError:
        return False
    return True


class ErrorStreamDetectors:
    """The three detectors of one model's error stream, with their detections."""

    def __init__(self, binary: bool) -> None:
        from river import drift

        self.binary = binary
        self._detectors: dict[str, Any] = {"page_hinkley": drift.PageHinkley(), "adwin": drift.ADWIN()}
        if binary:
            self._detectors["ddm"] = drift.binary.DDM()
        self.names = tuple(self._detectors)
        self.seen = 0
        self.detections: dict[str, list[int]] = {name: [] for name in self._detectors}

    def update(self, errors: Iterable[float]) -> dict[str, list[int]]:
        """Feed errors in order; return the positions (in the whole stream) where each detector
        fired during this call."""
        fired: dict[str, list[int]] = {}
        for error in errors:
            for name, detector in self._detectors.items():
                detector.update(error)
                if detector.drift_detected:
                    fired.setdefault(name, []).append(self.seen)
                    self.detections[name].append(self.seen)
            self.seen += 1
        return fired

    def summary(self) -> dict[str, Any]:
        return {"errors_seen": self.seen,
                **{name: {"detections": len(at), "last_at": at[-1] if at else None} for name, at in self.detections.items()}}
