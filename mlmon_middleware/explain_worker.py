"""The explanation worker processes' side: load the explainer once, explain rows, and exit when
the serving process that started them is gone.

The serving process (:mod:`mlmon_middleware.explain`) never imports shap; these functions run in
spawned workers, where :func:`build_explainer` picks the method for the model.

>>> import numpy as np
>>> explain = build_explainer(lambda rows: rows * 0.5, None, None)
>>> base, contributions, method = explain(np.array([[2.0, 4.0]]))
>>> contributions.tolist(), method
([[1.0, 2.0]], 'callable')
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

_WORKER: dict[str, Any] = {}


WATCH_SECONDS = 1.0  # how often a worker checks that the serving process still lives


def worker_init(payload: bytes) -> None:
    spec = pickle.loads(payload)
    # Lowered once the first job is done: the start-up (shap's import, numba's compile on the
    # first explanation) runs level, so a busy host cannot stretch it past the warm-up limit.
    _WORKER["nice"] = spec["nice"]
    # the pid the serving process gave, not getppid() now: it may have died while this one started
    threading.Thread(target=_exit_with_parent, args=(spec["parent"],), name="mlmon-parent-watch", daemon=True).start()
    _WORKER["explain"] = build_explainer(spec["method"], spec["model"], spec["background"])


def _exit_with_parent(parent: int) -> None:
    """A worker outlives nothing: when the serving process dies without shutting the pool down
    (``kill -9``, or a server that exits without running ``atexit``), the worker is re-parented and
    exits within ``WATCH_SECONDS`` instead of holding its memory (hundreds of MB with shap) forever."""
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os._exit(0)


def worker_explain(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        base, contributions, name = _WORKER["explain"](rows)
    finally:
        if nice := _WORKER.pop("nice", 0):
            lower_priority(nice)
    return base, contributions, name


def lower_priority(increment: int) -> None:
    """Add ``increment`` to this process's nice value (POSIX), so that under CPU contention the
    serving process's requests go first. On Linux a nice value belongs to a thread, and threads
    started earlier (OpenBLAS's, the parent watch) keep theirs: each is lowered too. A system that
    refuses leaves the worker level: a priority is not worth losing explanations over."""
    if not hasattr(os, "nice"):
        return
    try:
        value = os.nice(increment)
    except OSError:
        return
    tasks = "/proc/self/task"
    for tid in os.listdir(tasks) if os.path.isdir(tasks) else ():
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), value)
        except OSError:  # a thread that ended meanwhile
            pass


def build_explainer(method: Any, model: Any, background: np.ndarray | None
                    ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, str]]:
    """A function ``rows -> (base values (n,), contributions (n × features), method name)``."""
    if callable(method) and not hasattr(method, "shap_values") and method != "auto":
        def call(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
            out = method(rows)
            base, contributions = out if isinstance(out, tuple) else (np.zeros(len(rows)), out)
            return np.broadcast_to(np.asarray(base, float), (len(rows),)).copy(), np.asarray(contributions, float), "callable"
        return call
    if method != "auto":  # a ready shap explainer
        return lambda rows: _from_shap(method(rows), "shap")
    native = native_contributions(model)
    if native == "xgboost":  # native, releases the GIL
        import xgboost

        booster = model.get_booster()

        def xgb(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
            out = booster.predict(xgboost.DMatrix(rows), pred_contribs=True)
            out = out if out.ndim == 2 else out[:, -1, :]  # multiclass: the last class
            return out[:, -1], out[:, :-1], "xgboost"
        return xgb
    if native == "lightgbm":
        def lgbm(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
            out = np.asarray(model.predict(rows, pred_contrib=True))
            return out[:, -1], out[:, :-1], "lightgbm"
        return lgbm
    import shap

    if _is_tree_model(model):
        explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
        return lambda rows: _from_shap(explainer(rows, check_additivity=False), "tree")
    if hasattr(model, "coef_") and hasattr(model, "intercept_"):
        explainer = shap.LinearExplainer(model, background)
        return lambda rows: _from_shap(explainer(rows), "linear")
    predict = model.predict_proba if hasattr(model, "predict_proba") else model.predict
    explainer = shap.explainers.Permutation(predict, background)
    return lambda rows: _from_shap(explainer(rows), "permutation")


def native_contributions(model: Any) -> str | None:
    """``"xgboost"`` or ``"lightgbm"`` when the model computes its own SHAP contributions (in C,
    called through ctypes, which lets go of the GIL), else None.

    >>> native_contributions(object()) is None
    True
    """
    if hasattr(model, "get_booster"):
        return "xgboost"
    if hasattr(model, "booster_") and "lightgbm" in type(model).__module__:
        return "lightgbm"
    return None


def _is_tree_model(model: Any) -> bool:
    return hasattr(model, "estimators_") or hasattr(model, "tree_") or type(model).__name__.endswith(("Forest", "Trees"))


def _from_shap(explanation: Any, name: str) -> tuple[np.ndarray, np.ndarray, str]:
    values = np.asarray(explanation.values, dtype=float)
    base = np.asarray(explanation.base_values, dtype=float)
    if values.ndim == 3:  # one column per class: the positive class of two, else the last
        values = values[:, :, -1]
        base = base[:, -1] if base.ndim == 2 else base[-1]
    return np.broadcast_to(base, (values.shape[0],)).copy(), values, name
