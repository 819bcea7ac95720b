"""Inverse design: from target properties to latents, decoded, checked by physics.

The loop, per target (all of it in :class:`Designer`):

1. **Surrogate.** One :class:`~matrep.design.surrogate.LatentGP` per property on the training
   latents (the dimensions the encoder uses) -> patch-level values, wrapped in a
   :class:`~matrep.design.surrogate.CorrectedSurrogate` that learns, from every physics check,
   what decoding and segmentation change.
2. **Search.** :func:`~matrep.design.search.propose`: several starts, gradient search of the
   expected squared error inside a ball of the search coordinates
   (:class:`~matrep.design.search.SearchSpace`: the training latents whitened, so the ball
   is the high-density ellipsoid of their Gaussian; ``region="prior"``: the prior's ball), a
   batch of candidates kept apart.
3. **Physics.** The batch is decoded, segmented and solved; the values go into the
   correction GP; repeat until ``budget`` solver calls for this target are spent. While fewer
   than ``n`` checked candidates are within ``tolerance`` and the best sits on the rim of the
   search ball, the ball widens one step a round (mass 0.999, 0.9999:
   ``max_quantile``). The last ``refine`` calls (one target property) are secant steps
   between checked candidates on both sides of the target
   (:func:`~matrep.design.search.secant_steps`).
4. **Designs.** Of the checked candidates, the ``n`` with the smallest physics error that are
   distinct (pairwise style distance at least the median distance between two patches of one
   micrograph; :mod:`matrep.design.distinct`), a design more than 2.5 tolerances off never
   taken for being distinct unless nothing is closer; each reported with the surrogate's
   prediction made *before* its check (mean +- std), its physics value, error and solver
   residual.
5. **Large designs.** Each design made ``size x size`` and checked by physics too: decoded
   whole when the model's decoder is stationary (``decodes_any_size``: one seamless, periodic
   image from the design's latent and seed), otherwise tiled with blended seams
   (:mod:`matrep.design.tiling`).
6. **Other draws.** A latent is a texture and a design patch one draw of it (the decoder's
   noise seed places the particles). Each design's latent is decoded again with ``draws``
   other seeds at the patch size and each draw checked by physics (outside the budget): the
   mean and spread of the latent's property from one patch to the next, which the chosen
   draw, picked for being on target, does not show.

The baseline (:meth:`Designer.baseline`) spends the same solver budget on random draws from the
prior N(0, I) and keeps the best distinct ``n`` by physics error: what the loop must beat.

Without a solver for the target properties the designs are the surrogate's best distinct
candidates, reported with predictions only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from matrep.seeds import array_seed, next_seeds

from .errors import DesignError

#: a proposal screened for novelty (:meth:`Designer._screen_novel`) must have a surrogate mean
#: within this many tolerances of every target (the mean only: the surrogate's uncertainty,
#: about 3 % of the modulus on the built-in data, is alike for all proposals and larger than
#: the tolerance itself)
NOVEL_MAX_OFFSET = 1.5

#: a checked design more than this many tolerances off its targets is never taken for being
#: distinct (unless nothing is closer); ``--distinct``'s help states the number, literally: the
#: CLI imports matrep.design only when the command runs
DISTINCT_MAX_ERROR = 2.5


def relative_error(value, target):
    """``(value - target) / |target|``; the plain difference for a target of 0."""
    return (value - target) / abs(target) if target else value - target


def draw_seeds(latent, k: int) -> list:
    """The noise seeds of a design's ``k`` other draws: its own seed (``array_seed`` of the
    latent) plus 1 .. k."""
    return next_seeds(array_seed(latent), k)


@dataclass
class DesignSettings:
    """Settings of the design loop.

    Attributes
    ----------
    n : int, default 8 — designs per target
    budget : int, default 48 — solver calls per target (physics in the loop)
    batch : int, default 6 — candidates checked per round
    refine : int, default 6 — solver calls at the end of the budget spent on secant steps
        between checked candidates on both sides of the target (one target property only;
        :func:`~matrep.design.search.secant_steps`); 0: search rounds only
    tolerance : float, default 0.02 — relative error that scales the search objective
    region : "data" or "prior", default "data" — the search ball's Gaussian
        (:class:`~matrep.design.search.SearchSpace`): ``"data"`` fitted to the training
        latents (where the decoder met real patches), ``"prior"`` N(0, I)
    quantile : float, default 0.99 — mass of the search ball under that Gaussian
    max_quantile : float, default 0.9999 — the ball widens, one step a round (mass
        0.999, then 0.9999, up to this), while fewer than ``n`` checked candidates are within
        ``tolerance`` of the targets and the best of them sits on the ball's rim: a target
        the decoder cannot reach from typical latents is sought in less typical ones. Equal
        to ``quantile``: never widen.
    n_starts : int, default 8 — search starts per round
    min_latent_distance : float, default 1.0 — candidates of one target kept this far apart
    threshold : "otsu" or float — segmentation of designed images
    size : int, default 512 — side of the large designs (0: none)
    overlap : int or None — blended seam width of the large designs (default patch // 4)
    tile_jitter : float, default 0.25 — latent spread of the tiles of a large design
    allow_extrapolation : bool, default False — accept targets outside the data's range
    distinct : bool, default True — require designs to be style-distinct
    draws : int, default 8 — other noise draws of each design's latent decoded at the patch
        size and checked by physics after the choice, outside ``budget`` (0: none)
    seed : int, default 0
    """

    n: int = 8
    budget: int = 48
    batch: int = 6
    refine: int = 6
    tolerance: float = 0.02
    region: str = "data"
    quantile: float = 0.99
    max_quantile: float = 0.9999
    n_starts: int = 8
    min_latent_distance: float = 1.0
    threshold: object = "otsu"
    size: int = 512
    overlap: int | None = None
    tile_jitter: float = 0.25
    allow_extrapolation: bool = False
    distinct: bool = True
    draws: int = 8
    seed: int = 0

    def check(self, physics: bool) -> None:
        if self.n < 1:
            raise DesignError(f"-n: expected at least 1 design, got {self.n}")
        if physics and self.budget < self.n:
            raise DesignError(f"--budget {self.budget} solver calls cannot check {self.n} designs; "
                              f"give --budget >= {self.n} (or fewer -n)")
        if self.region not in ("data", "prior"):
            raise DesignError(f"--region: expected 'data' or 'prior', got {self.region!r}")
        if not 0 < self.quantile < 1:
            raise DesignError(f"--quantile: expected a probability mass in (0, 1), got {self.quantile}")
        if not self.quantile <= self.max_quantile < 1:
            raise DesignError(f"--max-quantile: expected a probability mass in [--quantile, 1), got "
                              f"{self.max_quantile} (--quantile {self.quantile})")
        if self.tolerance <= 0:
            raise DesignError(f"--tolerance: expected a positive relative error, got {self.tolerance}")
        if self.draws < 0:
            raise DesignError(f"--draws: expected 0 or more noise draws, got {self.draws}")


@dataclass
class Candidate:
    """One decoded latent: prediction, and physics when checked."""

    latent: np.ndarray                       # full latent vector
    predicted: dict                          # property -> (mean, std), made before the check
    image: np.ndarray
    physics: object = None                   # PhysicsResult or None
    round: int = 0
    source: str = "search"
    grams: list = field(default=None, repr=False)   # style Gram matrices, once computed
    draws: list | None = None                # PhysicsResults of other noise draws (designs)

    def errors(self, targets) -> dict:
        if self.physics is None:
            return {}
        return {p: relative_error(self.physics.values[p], t)
                for p, t in targets.items()}

    def worst_error(self, targets) -> float:
        e = self.errors(targets)
        return max(abs(v) for v in e.values()) if e else np.nan

    @property
    def draw_seeds(self) -> list:
        """The noise seeds of :attr:`draws` (:func:`draw_seeds`)."""
        return draw_seeds(self.latent, len(self.draws or []))

    def draw_values(self, prop: str) -> np.ndarray:
        """Physics values of ``prop`` over the other draws (empty when none were made)."""
        return np.array([r.values[prop] for r in self.draws or []], dtype=np.float64)


@dataclass
class TargetResult:
    """Designs for one target (and their large versions), with everything checked on the way."""

    targets: dict
    extrapolation: dict
    method: str                              # "designed" or "random prior (baseline)"
    designs: list                            # chosen Candidates
    distinct: np.ndarray                     # per design: met the distinctness rule
    candidates: list                         # every checked (or proposed) Candidate
    solver_calls: int
    budget: int
    seconds: float
    style_distances: np.ndarray | None = None   # pairwise, of the designs
    search_quantile: float | None = None        # mass of the search ball at the end
    large: list = field(default_factory=list)   # per design: dict(image, mask, physics) or None

    def design_errors(self, prop: str) -> np.ndarray:
        return np.array([c.errors(self.targets).get(prop, np.nan) for c in self.designs])


class Designer:
    """Holds the model, the surrogates and the solver; designs for any number of targets.

    Parameters
    ----------
    model : a trained decoding encoder (``decode``, ``latent_dim``)
    data : matrep.design.training.TrainingData
    properties : list of str — the properties that get surrogates
    solver : matrep.design.physics.Solver or None — physics check (None: predictions only)
    settings : DesignSettings
    style : matrep.design.distinct.StyleDistance or None — None: no style distances
    log : callable, optional
    """

    def __init__(self, model, data, properties, *, solver=None, settings=None, style=None,
                 log=None):
        from .search import SearchSpace, prior_radius
        from .surrogate import CorrectedSurrogate, LatentGP

        self.model = model
        self.data = data
        self.properties = list(properties)
        self.solver = solver
        self.settings = settings or DesignSettings()
        self.settings.check(physics=solver is not None)
        self.style = style
        self.log = log or (lambda s: None)
        self.rng = np.random.default_rng(self.settings.seed)
        self.active = data.active_dims()
        self.latent_dim = int(data.latents.shape[1])
        self.radius = prior_radius(len(self.active), self.settings.quantile)
        t0 = time.perf_counter()
        Za = data.latents[:, self.active]
        try:
            self.space = (SearchSpace.fit(Za) if self.settings.region == "data"
                          else SearchSpace.prior(len(self.active)))
        except ValueError as exc:  # too few training patches for the data's Gaussian
            raise DesignError(f"--region data: {exc}; give more images or a smaller --stride, "
                              "or search the prior's ball with --region prior") from None
        self.surrogates = {}
        for p in self.properties:
            gp = LatentGP(seed=self.settings.seed).fit(Za, data.values[p])
            self.surrogates[p] = CorrectedSurrogate(gp, seed=self.settings.seed)
        self.fit_seconds = time.perf_counter() - t0
        self.log(f"surrogates fitted on {len(Za)} patches x {len(self.active)} active latent "
                 f"dims in {self.fit_seconds:.1f} s")
        self.reference_distance = None
        if style is not None and self.settings.distinct:
            from .distinct import within_micrograph_distances

            d = within_micrograph_distances(style, data.patchset.patches,
                                            data.patchset.micrograph_ids, seed=self.settings.seed)
            self.within_micrograph = d
            self.reference_distance = float(np.median(d)) if len(d) else None

    # ------------------------------------------------------------------------- helpers
    def full(self, Za) -> np.ndarray:
        """Full latent vectors: the active dimensions given, the others at the prior mean 0."""
        Za = np.atleast_2d(Za)
        Z = np.zeros((len(Za), self.latent_dim), dtype=np.float32)
        Z[:, self.active] = Za
        return Z

    def predict(self, Z) -> dict:
        """property -> (mean, std) arrays for full latents ``Z``."""
        Za = np.atleast_2d(Z)[:, self.active]
        return {p: s.predict(Za, return_std=True) for p, s in self.surrogates.items()}

    def check_targets(self, targets: dict) -> dict:
        """Validate targets against the data's patch-level range; return extrapolation flags."""
        flags = {}
        for p, t in targets.items():
            if p not in self.surrogates:
                raise DesignError(f"target {p!r} has no surrogate (properties: "
                                  f"{', '.join(self.surrogates)})")
            lo, hi = self.data.range(p)
            out = not (lo <= t <= hi)
            if out and not self.settings.allow_extrapolation:
                raise DesignError(f"target {p}={t:g} lies outside the data's patch-level range "
                                  f"[{lo:.4g}, {hi:.4g}]; choose a target inside it, or pass "
                                  "--allow-extrapolation to design anyway (flagged in the output)")
            flags[p] = bool(out)
        return flags

    def _scales(self, targets):
        out = {}
        for p, t in targets.items():
            s = self.settings.tolerance * abs(t)
            out[p] = s if s > 0 else self.settings.tolerance * float(np.std(self.data.values[p]) or 1.0)
        return out

    def _check(self, Z, predicted, rnd, source, screened=None) -> list:
        """Decode, segment and solve ``Z``; ``source`` is one label or one per row;
        ``screened``: per row, ``None`` or the ``(latent, image, grams)`` the novelty screen
        already made for it (:meth:`_screen_novel`), reused instead of decoding again."""
        from .physics import check_designs

        Z = np.asarray(Z, np.float32)
        screened = screened or [None] * len(Z)
        imgs = [None if s is None else s[1] for s in screened]
        todo = [i for i, s in enumerate(screened) if s is None]
        if todo:
            # each candidate's noise seed comes from its latent: a decoder with noise places
            # its particles anew for every candidate (designs differ by layout too),
            # reproducibly
            dec = np.asarray(self.model.decode(Z[todo], seeds=[array_seed(z) for z in Z[todo]]),
                             dtype=np.float32)
            for j, i in enumerate(todo):
                imgs[i] = dec[j]
        imgs = np.stack(imgs)
        res = [None] * len(Z)
        if self.solver is not None:
            res, _ = check_designs(imgs, self.solver, threshold=self.settings.threshold)
        return [Candidate(latent=np.asarray(Z[i], np.float32),
                          predicted={p: (float(m[i]), float(s[i])) for p, (m, s) in predicted.items()},
                          image=imgs[i], physics=res[i], round=rnd,
                          source=source if isinstance(source, str) else source[i],
                          grams=None if screened[i] is None else screened[i][2])
                for i in range(len(Z))]

    def _choose(self, cands, targets, n):
        if self.solver is not None:
            err = np.array([c.worst_error(targets) for c in cands])
        else:  # no physics: the surrogate's expected error ranks them
            err = np.array([sum((c.predicted[p][0] - t) ** 2 + c.predicted[p][1] ** 2
                                for p, t in targets.items()) for c in cands])
        D = None
        if self.style is not None:
            D = self.style.square(self._grams(cands))
        if D is not None and self.reference_distance is not None:
            from .distinct import select_distinct

            # physics errors are bounded (DISTINCT_MAX_ERROR); surrogate scores are not
            bound = (DISTINCT_MAX_ERROR * self.settings.tolerance if self.solver is not None
                     else None)
            idx, flags = select_distinct(err, D, n, self.reference_distance, max_error=bound)
        else:
            idx = np.argsort(np.where(np.isfinite(err), err, np.inf), kind="stable")[:n]
            flags = np.ones(len(idx), dtype=bool) if D is None else np.zeros(len(idx), bool)
        sd = D[np.ix_(idx, idx)] if D is not None else None
        return [cands[i] for i in idx], flags, sd

    def _grams(self, cands) -> list:
        """Style Gram matrices of candidates, one array per layer (each computed once)."""
        todo = [c for c in cands if c.grams is None]
        if todo:
            g = self.style.grams(np.stack([c.image for c in todo]))
            for i, c in enumerate(todo):
                c.grams = [x[i:i + 1] for x in g]
        return [np.concatenate([c.grams[j] for c in cands]) for j in range(len(cands[0].grams))]

    @staticmethod
    def _drop_grams(cands):
        """Free the candidates' Gram matrices (about 1.4 MB each with the paper's layers) once
        a target's designs are chosen."""
        for c in cands:
            c.grams = None

    def _distinct_so_far(self, cands, targets, n):
        """The checked candidates within ``tolerance`` that are pairwise apart (the largest such
        set, at most ``n``), or ``None`` when ``n`` of them already are, when none is within
        ``tolerance`` yet, or when designs need not be distinct."""
        if self.style is None or self.reference_distance is None or not self.settings.distinct:
            return None
        good = [c for c in cands if c.worst_error(targets) <= self.settings.tolerance]
        if not good:
            return None
        from .distinct import select_distinct

        err = np.array([c.worst_error(targets) for c in good])
        idx, flags = select_distinct(err, self.style.square(self._grams(good)), n,
                                     self.reference_distance)
        chosen = [good[i] for i, f in zip(idx, flags) if f]
        return None if len(chosen) >= n else chosen

    def _search_batch(self, sur, targets, scales, pool, radius, k, done, cands, n):
        """``k`` latents (search coordinates) from the surrogate search, their sources, and per
        row ``None`` or what the novelty screen made of it (for :meth:`_check`).

        When candidates are on target but too few of them apart, three times as many are
        proposed, the training latents expected on target join them, and their decoded images
        are screened for new looks (:meth:`_screen_novel`)."""
        from .search import propose

        S = self.settings
        apart = self._distinct_so_far(cands, targets, n)
        more = 1 if apart is None else 3
        U, sc = propose(sur, targets, scales, pool=pool, radius=radius, n=more * k,
                        n_starts=more * S.n_starts, min_distance=S.min_latent_distance,
                        exclude=done, rng=self.rng)
        if apart is None:
            return U, ["search"] * len(U), [None] * len(U)
        Up, sp = self._pool_on_target(pool, sur, targets, scales, done)
        Uc = np.concatenate([U, Up])
        U, n_novel, screened = self._screen_novel(
            Uc, np.concatenate([sc, sp]),
            self._offsets(sur, targets, scales, Uc) <= NOVEL_MAX_OFFSET, k, apart)
        self.log(f"  {len(apart)} of {n} designs on target and apart so far: {n_novel} of the "
                 f"next {len(U)} picked for new looks")
        return U, ["novel"] * n_novel + ["search"] * (len(U) - n_novel), screened

    @staticmethod
    def _offsets(sur, targets, scales, U) -> np.ndarray:
        """Per row of ``U``: the largest |surrogate mean - target| / scale over the targets."""
        return np.max([np.abs(sur[p].predict(U) - t) / scales[p] for p, t in targets.items()],
                      axis=0)

    def _pool_on_target(self, pool, sur, targets, scales, done, limit: int = 64):
        """Up to ``limit`` training latents (search coordinates) whose surrogate mean is within
        :data:`NOVEL_MAX_OFFSET` tolerances of the targets, best score first, none within
        ``min_latent_distance`` of a checked one: real patches near the target differ in look
        more than the search's minima, which gather in a few basins. Returns them and their
        scores."""
        from .search import score

        sp = score(sur, targets, scales, pool)
        keep = np.flatnonzero(self._offsets(sur, targets, scales, pool) <= NOVEL_MAX_OFFSET)
        if done is not None and len(keep):
            dist = np.linalg.norm(pool[keep][:, None] - np.asarray(done)[None], axis=2)
            keep = keep[dist.min(1) >= self.settings.min_latent_distance]
        keep = keep[np.argsort(sp[keep], kind="stable")][:limit]
        return pool[keep], sp[keep]

    def _screen_novel(self, U, scores, eligible, k, apart_from):
        """``k`` of the proposals ``U`` (search coordinates), screened by their decoded images
        before any solver call: first the ``eligible`` ones (surrogate mean near the targets)
        whose images are at least the reference style distance from every candidate of
        ``apart_from`` and from each other, best score first; then the best remaining by
        score. Returns them, how many were picked for new looks, and per pick its
        ``(latent, image, grams)``, which :meth:`_check` uses instead of decoding again."""
        Z = self.full(self.space.to_latent(U))
        imgs = np.asarray(self.model.decode(Z, seeds=[array_seed(z) for z in Z]),
                          dtype=np.float32)
        g = self.style.grams(imgs)
        far_s = (self.style.between(g, self._grams(apart_from)) >= self.reference_distance).all(1)
        far = self.style.square(g) >= self.reference_distance
        order = np.argsort(scores, kind="stable")
        take = []
        for i in order:
            if len(take) < k and eligible[i] and far_s[i] \
                    and all(far[i, j] for j in take):
                take.append(int(i))
        n_novel = len(take)
        take += [int(i) for i in order if int(i) not in take][:k - len(take)]
        return U[take], n_novel, [(Z[i], imgs[i], [x[i:i + 1] for x in g]) for i in take]

    def _large(self, designs, rnd_seed):
        from .physics import segment, solve_mask
        from .tiling import large_design

        out = []
        S = self.settings
        if not S.size:
            return out
        whole = bool(getattr(self.model, "decodes_any_size", False))
        for k, c in enumerate(designs):
            if whole:  # a stationary decoder: one seamless image of the design's latent
                img = np.asarray(self.model.decode(c.latent[None], seeds=[array_seed(c.latent)],
                                                   size=S.size), dtype=np.float32)[0]
            else:
                img = large_design(self.model, c.latent, S.size, overlap=S.overlap,
                                   jitter=S.tile_jitter, active=self.active, seed=rnd_seed + k)
            rec = {"image": img, "physics": None,
                   "method": "decoded whole (stationary decoder)" if whole else "blended tiles"}
            if self.solver is not None:
                mask = segment(img, threshold=S.threshold, dark_phase=self.solver.dark_phase)
                rec["physics"] = solve_mask(self.solver, mask)
            out.append(rec)
        return out

    def _other_draws(self, designs) -> None:
        """Decode each design's latent with ``draws`` other noise seeds (:func:`draw_seeds`)
        at the patch size and check every draw by physics (``Candidate.draws``)."""
        from .physics import check_designs

        k = int(self.settings.draws)
        if self.solver is None or not k or not designs:
            return
        for c in designs:
            imgs = np.asarray(self.model.decode(np.repeat(c.latent[None], k, axis=0),
                                                seeds=draw_seeds(c.latent, k)), dtype=np.float32)
            c.draws, _ = check_designs(imgs, self.solver, threshold=self.settings.threshold)

    # ------------------------------------------------------------------------- designing
    def design(self, targets: dict, *, n=None) -> TargetResult:
        """Designs for ``targets`` (property -> value): the loop of the module docstring."""
        from .search import propose, secant_steps

        S = self.settings
        n = S.n if n is None else int(n)
        flags = self.check_targets(targets)
        targets = {p: float(t) for p, t in targets.items()}
        # the search runs in the search space's coordinates (SearchSpace); latents are decoded
        sur = {p: self.space.wrap(self.surrogates[p]) for p in targets}
        scales = self._scales(targets)
        pool = self.space.to_search(self.data.latents[:, self.active])
        t0 = time.perf_counter()
        cands, calls, rnd = [], 0, 0
        quantile, radius = S.quantile, self.radius
        if self.solver is not None:
            while calls < S.budget:
                k = min(S.batch, S.budget - calls)
                done = self._coords(cands) if cands else None
                U = np.zeros((0, len(self.active)))
                if len(targets) == 1 and calls >= S.budget - S.refine and cands:
                    (p0, t0_), = targets.items()
                    err = np.array([c.physics.values[p0] - t0_ for c in cands])
                    U = secant_steps(done, err, k, radius, min_distance=S.min_latent_distance)
                how = ["secant"] * len(U)
                screened = [None] * len(U)
                if len(U) < k:
                    Us, src, pre = self._search_batch(sur, targets, scales, pool, radius,
                                                      k - len(U), done, cands, n)
                    U = np.concatenate([U, Us])
                    how += src
                    screened += pre
                if len(U) == 0:
                    break
                Z = self.full(self.space.to_latent(U))
                for i, s in enumerate(screened):
                    if s is not None:  # the very latent the screen decoded
                        Z[i] = s[0]
                new = self._check(Z, self.predict(Z), rnd, how, screened)
                calls += len(new)
                for p in sur:
                    sur[p].add(U, [c.physics.values[p] for c in new])
                cands += new
                best = min(c.worst_error(targets) for c in cands)
                self.log(f"  round {rnd}: {calls}/{S.budget} solver calls, best error so far "
                         f"{100 * best:.2f} %")
                rnd += 1
                good = sum(c.worst_error(targets) <= S.tolerance for c in cands)
                if good < n and quantile < S.max_quantile and self._at_rim(cands, targets,
                                                                          radius):
                    quantile, radius = self._widen(quantile)
                    self.log(f"  {good} of {n} designs within {100 * S.tolerance:g} %: the "
                             f"search ball widens to mass {quantile:g}")
        else:
            U, _ = propose(sur, targets, scales, pool=pool, radius=self.radius, n=3 * n,
                           n_starts=max(S.n_starts, 3 * n), min_distance=S.min_latent_distance,
                           rng=self.rng)
            Z = self.full(self.space.to_latent(U))
            cands = self._check(Z, self.predict(Z), 0, "search")
        designs, distinct, sd = self._choose(cands, targets, n)
        self._drop_grams(cands)
        large = self._large(designs, S.seed * 1000 + 17)
        self._other_draws(designs)
        return TargetResult(targets=targets, extrapolation=flags, method="designed",
                            designs=designs, distinct=distinct, candidates=cands,
                            solver_calls=calls, budget=S.budget if self.solver else 0,
                            seconds=time.perf_counter() - t0, style_distances=sd, large=large,
                            search_quantile=quantile)

    def _coords(self, cands) -> np.ndarray:
        """Search coordinates of candidates' latents."""
        return self.space.to_search(np.array([c.latent[self.active] for c in cands]))

    def _at_rim(self, cands, targets, radius):
        """Whether the best checked candidate sits on the rim of the search ball (its search
        coordinates at least 0.95 radius long): the search is pressing outwards."""
        best = min(cands, key=lambda c: c.worst_error(targets))
        return float(np.linalg.norm(self._coords([best])[0])) >= 0.95 * radius

    def _widen(self, quantile):
        """The next search ball: one more 9 in the mass (0.99 -> 0.999 -> ...), at most
        ``max_quantile``; returns (quantile, radius)."""
        from .search import prior_radius

        q = min(self.settings.max_quantile, 1.0 - (1.0 - quantile) / 10.0)
        return q, prior_radius(len(self.active), q)

    def baseline(self, targets: dict, *, n=None, large: bool = False) -> TargetResult:
        """Best ``n`` distinct of ``budget`` random prior draws, by physics error."""
        if self.solver is None:
            raise DesignError("the random-sampling baseline needs a physics solver to rank its "
                              "samples; run with --no-baseline")
        S = self.settings
        n = S.n if n is None else int(n)
        flags = self.check_targets(targets)
        targets = {p: float(t) for p, t in targets.items()}
        t0 = time.perf_counter()
        # its own generator, from the seed and the targets: the baseline's draws do not depend
        # on how much of the search's generator the design loop used before it
        key = np.array([targets[p] for p in sorted(targets)], dtype=np.float64)
        rng = np.random.default_rng([int(S.seed), 2, array_seed(key)])
        Z = rng.standard_normal((S.budget, self.latent_dim)).astype(np.float32)
        cands = self._check(Z, self.predict(Z), 0, "prior")
        designs, distinct, sd = self._choose(cands, targets, n)
        self._drop_grams(cands)
        big = self._large(designs, S.seed * 1000 + 29) if large else []
        self._other_draws(designs)
        return TargetResult(targets=targets, extrapolation=flags, method="random prior (baseline)",
                            designs=designs, distinct=distinct, candidates=cands,
                            solver_calls=len(cands), budget=S.budget,
                            seconds=time.perf_counter() - t0, style_distances=sd, large=big)


@dataclass
class DesignResult:
    """Everything one ``design`` call produced (one or more targets)."""

    results: list                 # TargetResult per target (designed)
    baselines: list               # TargetResult per target (random prior) or empty
    settings: DesignSettings
    properties: list
    sources: dict                 # property -> how the training values were obtained
    notes: list
    info: dict                    # model, data, timings, reference distance ...


def make_designer(model, images, labels, properties, *, material="castiron", physics=None,
                  settings=None, masks=None, file_column="file", stride=128, crop=None,
                  crop_bottom=0, max_patches=None, n_jobs=1, cache=True, style_weights=None,
                  log=None, progress=None, scale=None):
    """Load the model, build the training data and the surrogates: a ready :class:`Designer`.

    Parameters
    ----------
    model : run folder or a loaded encoder (through :func:`matrep.load_model`)
    images, labels : the training micrographs and their labels CSV
    properties : list of str — label columns to design for
    material : str, default "castiron" — the registered physics solver to use
    physics : bool or None
        ``None`` (default): check by physics when the material's solver computes every
        property; ``True``: require it (a clear error otherwise); ``False``: never.
    settings : DesignSettings
    style_weights : VGG19 weights for the style distances (default: the model's own, else
        "auto"); ``False``: no style distances
    other parameters : see :func:`matrep.design.training.load_training_data`
    """
    from ..registry import load_model
    from .distinct import StyleDistance
    from .physics import get_solver
    from .training import load_training_data

    log = log or (lambda s: None)
    settings = settings or DesignSettings()
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load_model(model)
    generative = getattr(model, "generative", getattr(model, "can_decode", False))  # old alias
    if not generative or not callable(getattr(model, "decode", None)):
        raise DesignError(f"encoder {getattr(model, 'name', type(model).__name__)!r} cannot decode "
                          "latents into images; design needs a generative model such as a "
                          "trained texturevae run")
    solver = None
    if physics is not False:
        solver = get_solver(material)
        if physics:
            solver.check(properties)
        elif any(p not in solver.properties for p in properties):
            missing = [p for p in properties if p not in solver.properties]
            log(f"no physics check: material {material!r} has no solver for "
                f"{', '.join(missing)}; designs get surrogate predictions only")
            solver = None
    settings.check(physics=solver is not None)
    data = load_training_data(model, images, labels, properties, solver=solver, masks=masks,
                              file_column=file_column, stride=stride, crop=crop,
                              crop_bottom=crop_bottom, max_patches=max_patches,
                              seed=settings.seed, n_jobs=n_jobs, cache=cache, log=log,
                              progress=progress, scale=scale)
    style = None
    if style_weights is not False and settings.distinct:
        w = style_weights or getattr(model, "weights", None)
        style = StyleDistance(weights=w if isinstance(w, str) else "auto")
    return Designer(model, data, properties, solver=solver, settings=settings, style=style,
                    log=log)


def design(model, images, labels, targets: dict, *, baseline: bool = True, designer=None,
           **kwargs) -> DesignResult:
    """Designs for each target set in ``targets``; the library call behind ``matrep design``.

    Parameters
    ----------
    model, images, labels : see :func:`make_designer`
    targets : dict of property -> value, or a list of such dicts (one design run each)
    baseline : bool, default True — also run the random-prior baseline at the same budget
    designer : Designer, optional — reuse one (skips loading and fitting)
    **kwargs : passed to :func:`make_designer`

    Returns
    -------
    DesignResult
    """
    t0 = time.perf_counter()
    tlist = [targets] if isinstance(targets, dict) else list(targets)
    if not tlist or not all(tlist):
        raise DesignError("no target given: pass --target COLUMN=VALUE")
    props = list(dict.fromkeys(p for t in tlist for p in t))
    des = designer or make_designer(model, images, labels, props, **kwargs)
    for t in tlist:  # refuse bad targets before any work
        des.check_targets(t)
    t_setup = time.perf_counter() - t0
    results, bases = [], []
    for t in tlist:
        des.log("designing for " + ", ".join(f"{p}={v:g}" for p, v in t.items()))
        results.append(des.design(t))
        if baseline and des.solver is not None:
            bases.append(des.baseline(t))
    info = {"model": str(model) if not hasattr(model, "decode") else getattr(model, "name", "model"),
            "images": str(images), "labels": str(labels),
            "latent_dim": des.latent_dim, "active_dims": [int(i) for i in des.active],
            "search_region": des.settings.region, "search_radius": des.radius,
            "n_training_patches": len(des.data.latents),
            "training_ranges": {p: des.data.range(p) for p in props},
            "solver": None if des.solver is None else {"material": des.solver.material,
                                                        "description": des.solver.description},
            "reference_style_distance": des.reference_distance,
            "seconds": {"setup": t_setup, "surrogate_fit": des.fit_seconds,
                        "total": time.perf_counter() - t0}}
    return DesignResult(results=results, baselines=bases, settings=des.settings,
                        properties=props, sources=des.data.sources, notes=list(des.data.notes),
                        info=info)
