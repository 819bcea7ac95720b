"""The regressors and classifiers of a study, their inner cross-validation, and the baseline."""

from __future__ import annotations

import importlib
import json
import warnings

import numpy as np

from ..errors import BadInputError
from .splits import Split

#: Built-in model names. Regression: ``linear`` = StandardScaler + LinearRegression,
#: ``svr`` = StandardScaler + SVR(RBF) with C, gamma, epsilon by inner CV (target
#: standardised). Classification: ``linear`` = StandardScaler + LogisticRegression,
#: ``svr`` = StandardScaler + SVC(RBF) with C, gamma by inner CV.
BUILTIN_MODELS = ("linear", "svr")
_ALIASES = {"linreg": "linear", "logistic": "linear", "logreg": "linear", "svm": "svr",
            "svc": "svr", "svr-rbf": "svr"}
#: Inner-CV grids. gamma is a multiple of 1/n_features (sklearn's "scale" for standardised
#: inputs); epsilon is in units of the (standardised) target's standard deviation.
SVR_GRID = {"C": [1.0, 10.0, 100.0], "gamma_scale": [0.1, 1.0, 10.0], "epsilon": [0.05, 0.2]}
SVC_GRID = {"C": [1.0, 10.0, 100.0], "gamma_scale": [0.1, 1.0, 10.0]}
#: The baseline row: its method name and its "model" per task.
BASELINE_METHOD = "baseline"
BASELINE_MODELS = {"regression": "mean", "classification": "majority"}
BASELINE_LABELS = {"mean": "training mean", "majority": "training majority class"}


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """``"svr"`` or ``"sklearn.ensemble.RandomForestRegressor:n_estimators=200,max_depth=8"``.

    >>> parse_model_spec("sklearn.linear_model.Ridge:alpha=0.5")
    ('sklearn.linear_model.Ridge', {'alpha': 0.5})
    """
    name, _, rest = str(spec).partition(":")
    name = _ALIASES.get(name.strip().lower(), name.strip()) if "." not in name else name.strip()
    params = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        if "=" not in part:
            raise BadInputError(None, f"regressor parameter must be KEY=VALUE, got {part!r} "
                                      f"in {spec!r}")
        k, v = part.split("=", 1)
        try:
            params[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            params[k.strip()] = v
    if "." not in name and name not in BUILTIN_MODELS:
        raise BadInputError(None, f"unknown regressor {spec!r}: use one of "
                                  f"{', '.join(BUILTIN_MODELS)} or a dotted scikit-learn class "
                                  "path such as sklearn.ensemble.RandomForestRegressor")
    return name, params


def model_label(spec: str) -> str:
    """Short name of a model spec for tables: ``linear``, ``svr``, ``RandomForestRegressor``
    (the baseline's ``mean`` and ``majority``: what it predicts)."""
    if spec in BASELINE_LABELS:
        return BASELINE_LABELS[spec]
    name, params = parse_model_spec(spec)
    base = name.rsplit(".", 1)[-1]
    return base + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")


def import_estimator(path: str):
    """The class named by a dotted path, checked to be a scikit-learn style estimator."""
    mod, _, cls = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(mod), cls)
    except (ImportError, AttributeError, ValueError) as exc:
        raise BadInputError(None, f"cannot import regressor {path!r} ({type(exc).__name__}: "
                                  f"{exc}); name a class such as "
                                  "sklearn.ensemble.RandomForestRegressor") from None
    if not isinstance(obj, type) or not all(callable(getattr(obj, m, None))
                                            for m in ("fit", "predict", "get_params")):
        raise BadInputError(None, f"{path!r} is not a scikit-learn estimator class (needs fit, "
                                  "predict and get_params)")
    return obj


def make_model(spec: str, task: str, *, n_features: int, cv=None, seed: int = 0,
               n_jobs: int = 1):
    """An unfitted scikit-learn model for ``spec`` (see :data:`BUILTIN_MODELS`).

    Every model standardises its inputs inside a Pipeline, so the scaler is fitted on the
    training rows only; hyperparameter searches use ``cv`` (inner cross-validation on the
    training rows, with groups passed to ``fit``).
    """
    from sklearn.base import is_classifier, is_regressor
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, SVR

    name, params = parse_model_spec(spec)
    nf = max(int(n_features), 1)
    if name == "linear":
        if task == "regression":
            return Pipeline([("scale", StandardScaler()), ("model", LinearRegression(**params))])
        kw = {"max_iter": 5000, **params}
        return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(**kw))])
    if name == "svr":
        if task == "regression":
            pipe = TransformedTargetRegressor(
                regressor=Pipeline([("scale", StandardScaler()), ("model", SVR(kernel="rbf"))]),
                transformer=StandardScaler())
            grid = {"regressor__model__C": SVR_GRID["C"],
                    "regressor__model__gamma": [g / nf for g in SVR_GRID["gamma_scale"]],
                    "regressor__model__epsilon": SVR_GRID["epsilon"]}
            scoring = "neg_mean_squared_error"
        else:
            pipe = Pipeline([("scale", StandardScaler()), ("model", SVC(kernel="rbf"))])
            grid = {"model__C": SVC_GRID["C"],
                    "model__gamma": [g / nf for g in SVC_GRID["gamma_scale"]]}
            scoring = "accuracy"
        grid = {k: v for k, v in grid.items() if k.rsplit("__", 1)[-1] not in params}
        for k, v in params.items():
            pipe.set_params(**{("regressor__model__" if task == "regression" else "model__") + k: v})
        return GridSearchCV(pipe, grid, cv=cv, scoring=scoring, n_jobs=n_jobs, refit=True,
                            error_score="raise")
    cls = import_estimator(name)
    est = cls(**params)
    if "random_state" in est.get_params() and "random_state" not in params:
        est.set_params(random_state=seed)
    if task == "regression" and is_classifier(est):
        raise BadInputError(None, f"{name} is a classifier, but the target is numeric "
                                  "(regression); name a regressor or pass --task classification")
    if task == "classification" and is_regressor(est):
        raise BadInputError(None, f"{name} is a regressor, but the target is categorical "
                                  "(classification); name a classifier, e.g. "
                                  "sklearn.ensemble.RandomForestClassifier")
    return Pipeline([("scale", StandardScaler()), ("model", est)])


def inner_cv(split: Split, groups_train, task: str, y_train, *, folds: int = 3, seed: int = 0):
    """The inner cross-validation of a split, as a list of (train, test) index pairs, and a note.

    Grouped splits: ``GroupKFold`` over the training groups (``StratifiedGroupKFold`` for
    classes), so hyperparameters are chosen for unseen groups too; with fewer than 2
    training groups, ``KFold`` over patches. Random splits: ``KFold`` (``StratifiedKFold``
    for classes) over the training patches. For classes, inner folds whose training part
    holds a single class are dropped (a classifier cannot be fitted on them); if fewer than
    two folds remain, stratified folds over patches are used instead.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    y_train = np.asarray(y_train)
    groups_train = np.asarray(groups_train)
    n = len(y_train)
    dummy = np.zeros(n)
    n_groups = len(set(groups_train.tolist()))
    pairs, note = None, ""
    if split.kind == "grouped" and n_groups >= 2:
        k = min(folds, n_groups)
        if task == "classification":
            cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            note = f"StratifiedGroupKFold({k}) on training groups"
        else:
            cv = GroupKFold(n_splits=k)
            note = f"GroupKFold({k}) on training groups"
        pairs = list(cv.split(dummy, y_train, groups_train))
        if task == "classification":
            pairs = [(a, b) for a, b in pairs if len(set(y_train[a].tolist())) >= 2]
            if len(pairs) < 2:
                pairs = None
    if pairs is None:
        k = max(2, min(folds, n))
        cv = KFold(k, shuffle=True, random_state=seed)
        note = f"KFold({k}) on training patches"
        if task == "classification":
            _, counts = np.unique(y_train, return_counts=True)
            kk = min(k, int(counts.max()))
            if counts.min() >= kk >= 2:
                cv, note = StratifiedKFold(kk, shuffle=True, random_state=seed), \
                    f"StratifiedKFold({kk}) on training patches"
        if split.kind == "grouped":
            note += " (too few training groups for grouped folds)"
        pairs = list(cv.split(dummy, y_train))
        if task == "classification":
            pairs = [(a, b) for a, b in pairs if len(set(y_train[a].tolist())) >= 2]
    return pairs, note


def fit_predict(spec: str, task: str, X_train, y_train, X_test, *, cv=None, seed: int = 0,
                n_jobs: int = 1):
    """Fit the model ``spec`` on the training rows and predict the test rows.

    Returns
    -------
    pred : ndarray of shape (n_test,)
    info : dict — ``best_params`` (hyperparameters picked by the inner CV, if any)
    """
    from sklearn.model_selection import GridSearchCV

    if task == "classification" and len(set(np.asarray(y_train).tolist())) < 2:
        only = np.asarray(y_train)[0]
        return np.full(len(X_test), only), {
            "note": f"the training part holds one class ({only!r}); it is predicted for all"}
    model = make_model(spec, task, n_features=X_train.shape[1], cv=cv, seed=seed, n_jobs=n_jobs)
    kw = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        warnings.filterwarnings("ignore", message=".*(converge|least populated).*")
        model.fit(X_train, y_train, **kw)
        pred = model.predict(X_test)
    info = {}
    if isinstance(model, GridSearchCV):
        info["best_params"] = {k.rsplit("__", 1)[-1]: _plain(v)
                               for k, v in model.best_params_.items()}
    return np.asarray(pred), info


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def baseline_predict(task: str, y_train, n_test: int) -> np.ndarray:
    """The baseline's prediction for ``n_test`` rows, from the training targets only.

    Regression: the mean of ``y_train`` (scikit-learn's ``DummyRegressor(strategy="mean")``).
    Classification: the most frequent class of ``y_train``, ties to the first in sorted order
    (``DummyClassifier(strategy="most_frequent")``).

    >>> baseline_predict("regression", [1.0, 2.0, 6.0], 2).tolist()
    [3.0, 3.0]
    >>> baseline_predict("classification", ["b", "a", "b", "a"], 1).tolist()
    ['a']
    """
    y_train = np.asarray(y_train)
    if len(y_train) == 0:
        raise BadInputError(None, "the baseline needs at least one training row, got none")
    if task == "regression":
        return np.full(int(n_test), float(np.mean(y_train.astype(float))))
    vals, counts = np.unique(y_train.astype(str), return_counts=True)
    return np.full(int(n_test), vals[counts.argmax()], dtype=object).astype(str)
