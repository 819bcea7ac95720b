"""Running a study: encoders x regressors x splits, each result cached so that it resumes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..encoder import FitContext, fit_encoder
from ..errors import BadInputError, MatrepError
from .data import StudyData
from .methods import CONTROLS, MethodSpec
from .models import (BASELINE_METHOD, BASELINE_MODELS, SVC_GRID, SVR_GRID, baseline_predict,
                     fit_predict, inner_cv, model_label, parse_model_spec)
from .result import StudyResult
from .scoring import METRIC_NAMES, metrics
from .splits import Split, _safe_id, group_splits, random_splits

STUDY_DIR = ".study"


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Study:
    """Run encoders x regressors x splits on one :class:`StudyData`, resumably.

    Parameters
    ----------
    data : StudyData
    methods : list of MethodSpec
    out : report folder (caches go in it: ``features.h5``, ``features/``, ``.study/``)
    regressors : model specs (:func:`make_model`), default ``("linear", "svr")``
    split : ``"both"``, ``"random"`` or ``"grouped"``
    seeds : int — random splits with seeds 0..seeds-1
    test_size : float — random splits' held-out fraction
    folds, max_groups : see :func:`group_splits`
    inner_folds : int — folds of the inner CV for hyperparameters
    resume : bool — reuse finished results; ``False`` discards them first
    n_jobs : int — parallel jobs of the inner grid search
    controls : bool — add the controls of methods given as fitted models (:data:`CONTROLS`,
        e.g. :func:`texturevae_controls`); the baseline row is always computed
    share_backbone : bool or None — run VGG19 once per patch for all the encoders that
        declare a :class:`matrep.encoder.BackboneRequest` (a per-study
        :class:`matrep.backbone.BackboneFeatures`); ``None`` (default): on, unless the
        environment sets ``MATREP_SHARE_BACKBONE=0`` (how docs/compare.md measures the gain)
    log : callable(str); progress : callable(total=, desc=) → bar, optional
    """

    def __init__(self, data: StudyData, methods, out, *, regressors=("linear", "svr"),
                 split: str = "both", seeds: int = 5, test_size: float = 0.2,
                 folds: int | None = None, max_groups: int | None = None, inner_folds: int = 3,
                 resume: bool = True, n_jobs: int = 1, chunk: int = 256,
                 controls: bool = True, share_backbone: bool | None = None, log=None,
                 progress=None):
        if split not in ("both", "random", "grouped"):
            raise BadInputError(None, f"split must be both, random or grouped, got {split!r}")
        if not methods:
            raise BadInputError(None, "name at least one encoder (see `matrep encoders`)")
        labels = [m.key for m in methods]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise BadInputError(None, f"encoder(s) named twice: {', '.join(dup)}")
        if BASELINE_METHOD in labels:
            raise BadInputError(None, f"{BASELINE_METHOD!r} names the study's own baseline row; "
                                      "register the encoder under another name")
        for r in regressors:
            parse_model_spec(r)
        if inner_folds < 2:
            raise BadInputError(None, f"inner_folds must be >= 2, got {inner_folds}")
        self.data = data
        self.methods = list(methods)
        self.out = Path(out)
        self.regressors = list(dict.fromkeys(regressors))
        self.split = split
        self.seeds = seeds
        self.test_size = test_size
        self.folds = folds
        self.max_groups = max_groups
        self.inner_folds = inner_folds
        self.resume = resume
        self.n_jobs = n_jobs
        self.chunk = chunk
        self.log = log or (lambda msg: None)
        self.progress = progress
        self._prov_cache: dict = {}
        if share_backbone is None:
            share_backbone = os.environ.get("MATREP_SHARE_BACKBONE", "1").strip() != "0"
        self.share_backbone = bool(share_backbone)
        self._backbone_features = None  # set by run(): matrep.backbone.BackboneFeatures
        self._encoders: dict = {}  # spec key -> the encoder of its shared features
        self.control_notes: list[str] = []
        if controls:
            self.methods += self._controls()

    # -- splits ---------------------------------------------------------------------------
    def make_splits(self) -> list[Split]:
        d = self.data
        out = []
        if self.split in ("both", "random"):
            out += random_splits(len(d.y), seeds=self.seeds, test_size=self.test_size,
                                 stratify=d.y if d.task == "classification" else None)
        if self.split in ("both", "grouped"):
            out += group_splits(d.groups, folds=self.folds, max_groups=self.max_groups)
        return out

    def settings(self) -> dict:
        return {"split": self.split, "seeds": self.seeds, "test_size": self.test_size,
                "folds": self.folds, "max_groups": self.max_groups,
                "inner_folds": self.inner_folds, "regressors": self.regressors,
                "svr_grid": SVR_GRID if self.data.task == "regression" else SVC_GRID}

    # -- paths ----------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.out / STUDY_DIR

    def _result_path(self, digest: str) -> Path:
        return self.state_dir / "results" / f"{digest[:32]}.json"

    # -- encoders -------------------------------------------------------------------------
    def _controls(self) -> list[MethodSpec]:
        """Control specs for the methods given as fitted models (see :data:`CONTROLS`)."""
        from .. import registry

        out = []
        have = {m.key for m in self.methods}
        for spec in list(self.methods):
            make = CONTROLS.get(spec.name)
            if not spec.model or make is None:
                continue
            specs, notes = make(spec, self._new_encoder(spec))
            self.control_notes += notes
            for c in specs:
                if c.key in have:
                    continue
                try:
                    registry.encoder_class(c.name)
                except MatrepError as exc:
                    self.control_notes.append(f"control {c.key!r} not computed: {exc}")
                    continue
                have.add(c.key)
                out.append(c)
        return out

    def _new_encoder(self, spec: MethodSpec):
        from .. import registry

        if spec.model:
            enc = registry.load_model(spec.model)
            if enc.name != spec.name:
                raise BadInputError(spec.model, f"holds a {enc.name!r} model, but it was given "
                                                f"for {spec.name!r}")
            if spec.params:
                enc.set_params(**spec.params)
            return enc
        return registry.get_encoder(spec.name, **spec.params)

    def _per_split(self, spec: MethodSpec) -> bool:
        from .. import registry

        return bool(getattr(registry.encoder_class(spec.name), "trainable", False)) \
            and not spec.model and not spec.fit_all

    def _spec_provenance(self, spec: MethodSpec) -> dict:
        if spec.key not in self._prov_cache:
            self._prov_cache[spec.key] = self._compute_provenance(spec)
        return self._prov_cache[spec.key]

    def _compute_provenance(self, spec: MethodSpec) -> dict:
        enc = self._new_encoder(spec)
        try:
            prov = enc.provenance()
        except Exception as exc:  # noqa: BLE001 - an unfitted encoder may not know everything
            prov = {"encoder": spec.name, "params": enc.get_params(deep=False),
                    "provenance_error": f"{type(exc).__name__}: {exc}"}
        if spec.model:
            from ..store import state_digest

            # a model retrained in the same folder must not reuse the old results
            prov["model"] = str(spec.model)
            prov["model_state_sha256"] = state_digest(enc)
        return prov

    def _shared_features(self, spec: MethodSpec):
        """Features of all patches from an encoder that learns nothing from the study."""
        from ..pipeline import encode_patchset

        enc = self._encoders.pop(spec.key, None)
        if enc is None:  # not prepared by _share_backbone
            enc = self._new_encoder(spec)
        res = encode_patchset(enc, self.data.patchset, self.out / "features.h5", chunk=self.chunk,
                              resume=self.resume, progress=self.progress,
                              log=self.log, features=self._backbone_features)
        from ..store import FeatureStore

        X, attrs = FeatureStore(self.out / "features.h5").read(res.key)
        self.log(f"{spec.key}: {'reused' if res.reused else 'computed'} features "
                 f"{X.shape[0]} x {X.shape[1]} (features.h5:{res.key})")
        return X, {"store": "features.h5", "key": res.key,
                   "provenance": attrs.get("provenance", {}), "reused": res.reused}

    def _split_features(self, spec: MethodSpec, split: Split):
        """Features of all patches from an encoder fitted on this split's training patches."""
        from ..pipeline import encode_patchset
        from ..store import FeatureStore

        ps = self.data.patchset
        folder = self.out / "features" / _safe_id(spec.key)
        store = folder / f"{split.id}.h5"
        side = folder / f"{split.id}.json"
        fit_digest = _sha({"spec": spec.describe(), "prov": self._spec_provenance(spec),
                           "data": self.data.digest(), "split": split.digest()})
        if self.resume and side.exists() and store.exists():
            try:
                meta = json.loads(side.read_text())
                if meta.get("fit_digest") == fit_digest:
                    X, attrs = FeatureStore(store).read(meta["key"])
                    return X, {"store": str(store.relative_to(self.out)), "key": meta["key"],
                               "reused": True, "provenance": attrs.get("provenance", {})}
            except (OSError, json.JSONDecodeError, KeyError, MatrepError):
                pass
        enc = self._new_encoder(spec)
        train = ps.subset(split.train)
        context = FitContext.from_patchset(train, quiet=True)
        if getattr(enc, "checkpoints", False):  # the declared flag (matrep.encoder)
            context.run_dir = self.state_dir / "fit" / _safe_id(spec.key) / split.id
            # continue an interrupted fit; a fresh folder has no checkpoint to resume
            # (the run-folder layout of `matrep fit`)
            context.resume = (context.run_dir / "checkpoint").is_dir()
        self.log(f"{spec.key}: fitting on the {len(train)} training patches of {split.id}"
                 if split.kind != "all" else
                 f"{spec.key}: fitting once on all {len(train)} patches (no labels)")
        t0 = time.perf_counter()
        fit_encoder(enc, train.patches, context)
        fit_s = time.perf_counter() - t0
        res = encode_patchset(enc, ps, store, chunk=self.chunk, resume=self.resume,
                              progress=self.progress, log=self.log,
                              features=self._backbone_features if split.kind == "all" else None)
        X, attrs = FeatureStore(store).read(res.key)
        atomic_write_text(side, json.dumps({"fit_digest": fit_digest, "key": res.key,
                                            "fit_seconds": fit_s, "split": split.id}))
        return X, {"store": str(store.relative_to(self.out)), "key": res.key, "reused": False,
                   "provenance": attrs.get("provenance", {}), "fit_seconds": fit_s}

    # -- running --------------------------------------------------------------------------
    def run(self) -> StudyResult:
        """Run every (method, split, regressor) not already finished; return all results."""
        d = self.data
        if not self.resume and self.state_dir.exists():
            shutil.rmtree(self.state_dir)
            shutil.rmtree(self.out / "features", ignore_errors=True)
        self.out.mkdir(parents=True, exist_ok=True)
        splits = self.make_splits()
        self._share_backbone()
        data_digest = d.digest()
        records = []
        methods = {}
        total = len(self.methods) * len(splits) * len(self.regressors)
        bar = self.progress(total=total, desc="study") if self.progress else None
        done_new = done_old = 0
        for spec in self.methods:
            per_split = self._per_split(spec)
            prov = self._spec_provenance(spec)
            shared = None
            if spec.fit_all:
                shared = self._split_features(spec, self._all_split())
            elif not per_split:
                # computed (or found by digest) first: the results' keys then depend on the
                # features actually used (weights, fitted state), not only on the parameters
                shared = self._shared_features(spec)
            spec_digest = _sha({"spec": spec.describe(), "prov": prov, "per_split": per_split,
                                "features": shared[1]["key"] if shared else None})
            methods[spec.key] = {"spec": spec.describe(), "provenance": prov,
                                 "fitting": ("fitted inside each split on its training patches"
                                             if per_split else
                                             "fitted once on all the study's patches, without "
                                             "labels" if spec.fit_all else
                                             "given fitted model (trained outside the study)"
                                             if spec.model else "not trainable (nothing fitted)"),
                                 "role": spec.role, "features": []}
            if spec.role == "control":
                methods[spec.key].update(control_of=spec.control_of, note=spec.note)
            if shared is not None:
                methods[spec.key]["features"].append(shared[1])
            for split in splits:
                todo, have = [], {}
                for reg in self.regressors:
                    key = _sha({"data": data_digest, "method": spec_digest, "split": split.digest(),
                                "regressor": reg, "inner_folds": self.inner_folds,
                                "grid": self.settings()["svr_grid"]})
                    path = self._result_path(key)
                    rec = _load_record(path, key) if self.resume else None
                    if rec is not None:
                        have[reg] = rec
                    else:
                        todo.append((reg, key, path))
                if todo:
                    if per_split:
                        X, finfo = self._split_features(spec, split)
                        methods[spec.key]["features"].append({"split": split.id, **finfo})
                    else:
                        X, finfo = shared
                    if not np.isfinite(X).all():
                        raise MatrepError(f"encoder {spec.key!r} produced NaN or inf features "
                                          f"({finfo['store']}:{finfo['key']})")
                for reg in self.regressors:
                    if reg in have:
                        rec = have[reg]
                        done_old += 1
                    else:
                        _, key, path = next(t for t in todo if t[0] == reg)
                        rec = self._run_one(spec, split, reg, X, key)
                        atomic_write_text(path, json.dumps(rec))
                        done_new += 1
                    records.append(rec)
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        if done_old:
            self.log(f"resumed: {done_old} of {total} results were already computed")
        for spec in self.methods:
            if not methods[spec.key]["features"]:
                methods[spec.key]["features"] = [{"reused": True, "note": "all results resumed"}]
        # the baseline: once per split, whatever the encoders (cheap: never cached)
        records += [self._baseline_one(split) for split in splits]
        settings = self.settings()
        settings["resumed_results"] = done_old
        settings["computed_results"] = done_new
        if self.control_notes:
            settings["control_notes"] = list(self.control_notes)
        return StudyResult(d, methods, self.regressors, splits, records, settings, self.out,
                           baseline=self.baseline_info())

    def _share_backbone(self) -> None:
        """One VGG19 pass per patch for every encoder of the study that declares a
        :class:`matrep.encoder.BackboneRequest` and encodes all patches once (not the
        per-split fits): register their requests with one :class:`BackboneFeatures`."""
        self._backbone_features = None
        self._encoders = {}
        if not self.share_backbone:
            return
        shared = None
        for spec in self.methods:
            if self._per_split(spec) or spec.fit_all:
                continue  # a fit_all encoder registers when it is fitted (same statistics)
            enc = self._new_encoder(spec)
            if not callable(getattr(enc, "backbone_request", None)):
                continue
            if not enc.__sklearn_is_fitted__():
                if getattr(enc, "trainable", False):
                    continue  # fitted by encode_patchset; nothing to announce yet
                enc.fit(self.data.patchset.patches[:1])  # as encode_patchset does
            request = enc.backbone_request()
            if request is None:
                continue  # this configuration does not share (matrep.encoder.BackboneRequest)
            if shared is None:
                from ..backbone import BackboneFeatures

                shared = BackboneFeatures(self.data.patchset.patches)
            shared.register(request)
            self._encoders[spec.key] = enc
        self._backbone_features = shared

    def _all_split(self) -> Split:
        """Every patch as "training" data: how a ``fit_all`` control is fitted (no labels)."""
        n = len(self.data.y)
        return Split("all", "all", np.arange(n), np.arange(0))

    def baseline_info(self) -> dict:
        """What the baseline row is, for the report."""
        task = self.data.task
        model = BASELINE_MODELS[task]
        what = ("the mean of the training part's targets" if task == "regression" else
                "the most frequent class of the training part (ties: first in sorted order)")
        return {"method": BASELINE_METHOD, "regressor": model, "label": model_label(model),
                "description": f"predicts {what} for every test patch, using no features; "
                               "computed once per split and scored with the same metrics"}

    def _baseline_one(self, split: Split) -> dict:
        d = self.data
        tr, te = split.train, split.test
        pred = baseline_predict(d.task, d.y[tr], len(te))
        pred_list = pred.astype(float).tolist() if d.task == "regression" else \
            [str(p) for p in pred]
        true_list = d.y[te].astype(float).tolist() if d.task == "regression" else \
            [str(v) for v in d.y[te]]
        return {"key": None, "method": BASELINE_METHOD, "regressor": BASELINE_MODELS[d.task],
                "split": split.id, "kind": split.kind, "seed": split.seed,
                "held_out": split.held_out, "test": te.tolist(), "n_train": int(len(tr)),
                "true": true_list, "pred": pred_list, "groups": d.groups[te].tolist(),
                "metrics": metrics(d.task, true_list, pred_list), "inner_cv": "",
                "seconds": 0.0}

    def _run_one(self, spec: MethodSpec, split: Split, reg: str, X, key: str) -> dict:
        d = self.data
        tr, te = split.train, split.test
        cv, cv_note = inner_cv(split, d.groups[tr], d.task, d.y[tr], folds=self.inner_folds,
                               seed=split.seed or 0)
        t0 = time.perf_counter()
        pred, info = fit_predict(reg, d.task, X[tr], d.y[tr], X[te], cv=cv,
                                 seed=split.seed or 0, n_jobs=self.n_jobs)
        secs = time.perf_counter() - t0
        pred_list = pred.astype(float).tolist() if d.task == "regression" else \
            [str(p) for p in pred]
        true_list = d.y[te].astype(float).tolist() if d.task == "regression" else \
            [str(v) for v in d.y[te]]
        rec = {"key": key, "method": spec.key, "regressor": reg, "split": split.id,
               "kind": split.kind, "seed": split.seed, "held_out": split.held_out,
               "test": te.tolist(), "n_train": int(len(tr)), "true": true_list,
               "pred": pred_list, "groups": d.groups[te].tolist(),
               "metrics": metrics(d.task, true_list, pred_list), "inner_cv": cv_note,
               "seconds": secs, **info}
        m = rec["metrics"]
        self.log(f"{spec.key} / {model_label(reg)} / {split.id}: "
                 + ", ".join(f"{k}={m[k]:.3g}" for k in METRIC_NAMES[d.task]
                             if np.isfinite(m[k])))
        return rec


def _load_record(path: Path, key: str):
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if rec.get("key") == key else None


def run_study(data: StudyData, methods, out, **kw) -> StudyResult:
    """Shortcut: ``Study(data, methods, out, **kw).run()``."""
    return Study(data, methods, out, **kw).run()
