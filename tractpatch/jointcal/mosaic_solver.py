"""The meas_mosaic algorithm on in-memory inputs (``fit_mosaic``), sharing jointcal's start.

Selection, association, reference matching and the robust per-visit pointing search are
jointcal's (:func:`.solver.prepare_fit`); the models are meas_mosaic's
(:class:`.mosaic_models.MosaicAstrometryModel`: rigid CCDs shared by visits, a
``fittingOrder`` Chebyshev series per visit; flux: per-CCD scale × per-visit Chebyshev of
``fluxFitOrder`` whose constant term is the per-visit scale, absolute against the
reference fluxes); the least squares are Gauss-Newton with the star parameters
eliminated (Schur complement) and jointcal's staged fit and iterative outlier rejection.

Normal equations in per-image blocks
------------------------------------
Every measurement row depends on its visit's block of ``nt`` series coefficients (one
per coordinate: xi and eta have their own blocks, with the same basis values), on its
CCD's few parameters and on one star parameter. meas_mosaic built one dense matrix over
all of them; jointcal's generic fitter (:mod:`.fitter`) stores every row's ``nt + 3``
columns and forms the products in scipy.sparse, which at HSC scale (55 terms per row,
~2 M rows) spends minutes in sparse index bookkeeping. Here (:func:`normal_equations`)
the blocks are formed by dense BLAS over groups of rows:

- visit x visit (diagonal): one GEMM per visit, ``A_v^T A_v``, shared by xi and eta;
- visit x CCD and CCD x CCD: per image (a visit's rows on one CCD), through one sparse
  (image, CCD column) x rows indicator product;
- the stars, eliminated: ``S = H - H_ts D^-1 H_st`` with ``D`` diagonal (or, with
  fitted proper motions, 2 x 2 blocks of position and motion per coordinate, whitened
  as ``D^-1 = W^T W``). For chunks of stars, ``Q = W H_st`` restricted to the visit
  blocks is a dense (stars x visits*nt) matrix (each star is seen by most visits)
  filled by one sparse product, and ``Q^T Q`` is one symmetric rank-k update (BLAS
  ``syrk``); xi and eta share it.

The reduced system (visits x terms + CCDs, a few thousand parameters) is factored by
block Cholesky (the xi and eta visit blocks do not couple, :class:`Factor`), and the
stars follow by back-substitution. The astrometric factor is reused by the later steps
(chord steps, :func:`gauss_newton_blocks`). :func:`fit_mosaic` with
``assembly="sparse"`` runs the same models through jointcal's generic fitter instead
(for comparison; tests check both assemble the same normal matrix and fit alike).

Measured (benchmarks/bench_mosaic_scale.py, 2 shared cores, load 5-8, medians of 3):
105 k measurements fit in 14.5 s instead of 339 s wall (4.1 s instead of 74 s CPU,
0.45 instead of 1.13 GB); the HSC-size 940 k in 75 s wall, 33 s CPU, 1.8 GB.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.linalg.blas import dsyrk

from .fitter import (FitResult, SingularSystemError, line_search, no_descent,
                     take_step)
from .astrometry_models import ccd_layout
from .inputs import CcdImage, Detections, RefCatalog
from .mosaic_models import MosaicAstrometryModel, per_visit_product, supported_order
from .photometry_models import ConstrainedPhotometryModel, chebyshev_basis
from .problems import AstrometryProblem, PhotometryProblem
from .solver import JointcalResult, PreparedFit, fit_models, prepare_fit, reference_ccd
from .threads import single_blas_thread

log = logging.getLogger("mosaic")


def fit_mosaic(det: Detections, images: list[CcdImage], refcat: RefCatalog,
               config, assembly: str = "blocks") -> JointcalResult:
    """Calibrate ``images`` with meas_mosaic's models (``config``: a MosaicConfig).

    Returns the same result type as :func:`.solver.fit_jointcal`, so the outputs,
    metrics and diagnostics are shared. ``assembly``: ``"blocks"`` (the per-image dense
    blocks of this module) or ``"sparse"`` (jointcal's generic fitter, slow at scale).

    Raises
    ------
    UserError
        No reference stars, nothing left to fit.
    DataQualityError
        A singular or diverging fit.
    """
    prep = prepare_fit(det, images, refcat, config)
    gi, gu, gv, gxi, geta = prep.grid
    nv, nc = len(prep.visits), len(prep.ccds)
    # the layout start: jointcal's per-CCD affine in the de-rotated frame
    affine, layout_scale, _ = ccd_layout(gi, gu, gv, gxi, geta, prep.img_visit,
                                         prep.img_ccd, nv, nc)
    ref = reference_ccd(affine, prep.img_ccd, nc)
    # rigid CCDs keep the camera's nominal pixel scale (median over CCDs)
    half_x = np.hypot(affine[:, 1], affine[:, 4])
    half_y = np.hypot(affine[:, 2], affine[:, 5])
    nx = np.zeros(nc)
    ny = np.zeros(nc)
    for g, im in enumerate(prep.images):
        nx[prep.img_ccd[g]], ny[prep.img_ccd[g]] = im.nx, im.ny
    pix = float(np.median(np.concatenate([half_x / (nx / 2), half_y / (ny / 2)])))
    # pixels -> sky usually flips parity (east is left): a negative half height keeps the
    # rigid placement a proper rotation with the camera's handedness
    parity = np.sign(np.median(affine[:, 1] * affine[:, 5] - affine[:, 2] * affine[:, 4]))
    half = np.column_stack([pix * nx / 2, parity * pix * ny / 2])
    n_visit_meas = np.bincount(prep.img_visit[prep.meas.img], minlength=nv)
    # 2 equations (xi, eta) per measurement for 2 series per visit: same ratio as 1:1
    order = supported_order(config.fittingOrder, n_visit_meas, config.minStarsPerParameter,
                            "fittingOrder")
    amodel = MosaicAstrometryModel(prep.img_visit, prep.img_ccd, nv, nc, half, order, ref)
    theta = amodel.initialize(gi, gu, gv, gxi, geta, affine, layout_scale)

    def focal(g, u, v):
        return amodel.focal_plane(theta, g, u, v)

    pmodel = None
    if config.doPhotometry and config.doFluxFit:
        forder = config.fluxFitOrder
        if forder > 0:
            forder = supported_order(forder, n_visit_meas, config.minStarsPerParameter,
                                     "fluxFitOrder")
        pmodel = ConstrainedPhotometryModel(prep.img_visit, prep.img_ccd, nv, nc, focal,
                                            amodel.scale, forder, ref)
    log.info("mosaic: %d visits, %d CCDs, fittingOrder %d (%d parameters), fluxFitOrder "
             "%s", nv, nc, order, amodel.n_params,
             pmodel.order if pmodel is not None else "-")
    if assembly == "sparse":
        return fit_models(prep, amodel, theta, pmodel, config, focal)
    if assembly != "blocks":
        raise ValueError(f"assembly must be 'blocks' or 'sparse', not {assembly!r}")
    return fit_models_blocks(prep, amodel, theta, pmodel, config, focal)



# --- residual rows in per-image block form ------------------------------------------------
@dataclass
class Component:
    """One coordinate's rows (xi, eta, or flux) of a :class:`BlockRows`.

    ``visit_cols`` (n_visits, nt): the model column of every term of every visit's block
    for this coordinate; ``other_idx`` (n, p) and ``other_val`` (n, p): the per-image
    parameters (the CCD's) and their weighted derivatives, the same columns for all rows
    of an image; ``rho`` (n,) the weighted residuals (model - data) / sigma;
    ``star_offset``: star parameter = ``star_offset + star``; ``ref_rho`` the weighted
    residuals of the reference rows (star - reference) / sigma; with proper motions,
    ``motion_offset`` (the star's motion along this coordinate is parameter
    ``motion_offset + star``) and ``prior_rho`` (fitted - catalog motion) / sigma.
    """

    visit_cols: np.ndarray
    other_idx: np.ndarray
    other_val: np.ndarray
    rho: np.ndarray
    star_offset: int
    ref_rho: np.ndarray
    motion_offset: int = -1
    prior_rho: np.ndarray | None = None


@dataclass
class BlockRows:
    """Weighted residual rows of a mosaic fit, sorted by visit then image.

    Shared by the components: ``visit`` and ``image`` (n,), ``A`` (n, nt) the weighted
    derivatives with respect to the visit's block, ``star`` (n,) the star index and
    ``beta`` (n,) the weighted derivative with respect to the star parameter; the
    reference rows ``ref_star`` with derivative ``ref_w``. With proper motions,
    ``beta2`` (n,) the derivative with respect to the star's motion (0 where the star
    has none) and the motion prior rows ``prior_star`` with derivative ``prior_w``:
    every star is then a block of 2 parameters per coordinate.
    """

    visit: np.ndarray
    image: np.ndarray
    A: np.ndarray
    star: np.ndarray
    beta: np.ndarray
    ref_star: np.ndarray
    ref_w: np.ndarray
    comps: list[Component]
    n_visits: int
    n_stars: int
    beta2: np.ndarray | None = None
    prior_star: np.ndarray | None = None
    prior_w: np.ndarray | None = None

    @property
    def slots(self) -> int:
        return 1 if self.beta2 is None else 2

    @property
    def chi2(self) -> float:
        c = sum(c.rho @ c.rho + c.ref_rho @ c.ref_rho for c in self.comps)
        if self.slots == 2:
            c += sum(c.prior_rho @ c.prior_rho for c in self.comps)
        return float(c)

    @property
    def n_rows(self) -> int:
        n = len(self.star) + len(self.ref_star)
        if self.slots == 2:
            n += len(self.prior_star)
        return n * len(self.comps)


@dataclass
class NormalEquations:
    """``H d = -g`` over all model parameters, stars eliminated when ``stars`` is set."""

    H: np.ndarray
    g: np.ndarray
    stars: "StarTerms | None"


@dataclass
class StarTerms:
    """The star blocks of the normal equations, per star (``s`` = :attr:`BlockRows.slots`
    parameters per coordinate: position, and motion where fitted).

    ``W`` (n_stars, s, s): whitening, ``D^-1 = W^T W`` (zero rows for parameters no row
    depends on: stars without rows, motions not fitted); ``inv`` = ``D^-1``; ``gs`` per
    component the star gradients (n_stars, s).
    """

    W: np.ndarray
    inv: np.ndarray
    gs: list
    n_used: int = 0  # star parameters (over all components) that some row depends on


#: size (floats) of one chunk of the dense star x (visit, term) matrix Q
_Q_CHUNK = 4_000_000


def _groups(key):
    """Start of every run of equal values of a sorted key, and the run index per row."""
    n = len(key)
    first = np.r_[0, np.flatnonzero(key[1:] != key[:-1]) + 1] if n else np.zeros(0, int)
    run = np.zeros(n, np.int64)
    if n:
        run[first[1:]] = 1
        run = np.cumsum(run)
    return first, run


def _star_derivs(rows: BlockRows):
    """The rows' derivatives with respect to their star's parameters, (n, s)."""
    if rows.slots == 1:
        return rows.beta[:, None]
    return np.column_stack([rows.beta, rows.beta2])


def _star_terms(rows: BlockRows) -> StarTerms:
    """:class:`StarTerms` of the rows: ``D = sum b b^T`` per star (+ reference and prior
    rows), its whitening (closed-form Cholesky), the star gradients."""
    ns, S = rows.n_stars, rows.slots
    b = _star_derivs(rows)
    D = np.zeros((ns, S, S))
    for i in range(S):
        for j in range(i, S):
            D[:, i, j] = D[:, j, i] = np.bincount(rows.star, b[:, i] * b[:, j], ns)
    D[rows.ref_star, 0, 0] += rows.ref_w ** 2
    if S == 2:
        D[rows.prior_star, 1, 1] += rows.prior_w ** 2
    # Cholesky D = L L^T and W = L^-1, in closed form per star. Parameters no row
    # depends on (stars without rows, motions not fitted) and motions the rows cannot
    # separate from the position (all at one epoch) get no weight: they do not move.
    W = np.zeros((ns, S, S))
    d0 = D[:, 0, 0]
    ok0 = d0 > 0
    l11 = np.sqrt(np.where(ok0, d0, 1.0))
    W[:, 0, 0] = np.where(ok0, 1.0 / l11, 0.0)
    if S == 2:
        l21 = np.where(ok0, D[:, 1, 0] / l11, 0.0)
        l22sq = D[:, 1, 1] - l21 ** 2
        ok1 = l22sq > 1e-12 * np.maximum(D[:, 1, 1], 1e-300)
        l22 = np.sqrt(np.where(ok1, l22sq, 1.0))
        W[:, 1, 1] = np.where(ok1, 1.0 / l22, 0.0)
        W[:, 1, 0] = np.where(ok1 & ok0, -l21 / (l11 * l22), 0.0)
    inv = np.einsum("kji,kjl->kil", W, W)
    n_used = int(np.count_nonzero(np.diagonal(D, axis1=1, axis2=2) > 0)) * len(rows.comps)
    gs = []
    for c in rows.comps:
        g = np.stack([np.bincount(rows.star, b[:, i] * c.rho, ns) for i in range(S)], 1)
        g[rows.ref_star, 0] += rows.ref_w * c.ref_rho
        if S == 2:
            g[rows.prior_star, 1] += rows.prior_w * c.prior_rho
        gs.append(g)
    return StarTerms(W, inv, gs, n_used)


def _visit_bounds(rows: BlockRows):
    vfirst, _ = _groups(rows.visit)
    return zip(np.r_[vfirst], np.r_[vfirst[1:], len(rows.visit)])


def _indicator(rows: BlockRows, c: Component):
    """Sparse (image, per-image column) x rows matrix of ``c.other_val``, the images'
    first rows and their run index: sums over an image's rows become one product."""
    n = len(rows.visit)
    ifirst, run = _groups(rows.image)
    p = c.other_idx.shape[1]
    Z = sp.csr_matrix((c.other_val.ravel(), ((run[:, None] * p + np.arange(p)).ravel(),
                                              np.repeat(np.arange(n), p))),
                      shape=(len(ifirst) * p, n))
    return Z, ifirst


def gradient(rows: BlockRows, n_params: int, fit_stars: bool):
    """``(g, st)``: the model gradient ``J_t^T r`` over all model parameters, with the
    stars eliminated (``g_t - H_ts D^-1 g_s``) when ``fit_stars``; ``st`` their
    :class:`StarTerms` (None without ``fit_stars``)."""
    g = np.zeros(n_params)
    st = None
    rho = [c.rho for c in rows.comps]
    if fit_stars:
        st = _star_terms(rows)
        b = _star_derivs(rows)
        # g - H_ts D^-1 g_s, row by row: the star's gradient folded into the residual
        rho = [c.rho - np.einsum("ns,ns->n", b, np.einsum("kst,kt->ks", st.inv, gs)[rows.star])
               for c, gs in zip(rows.comps, st.gs)]
    for a, b in _visit_bounds(rows):
        Av = rows.A[a:b]
        for c, r in zip(rows.comps, rho):
            g[c.visit_cols[rows.visit[a]]] += Av.T @ r[a:b]
    for c, r in zip(rows.comps, rho):
        Z, ifirst = _indicator(rows, c)
        np.add.at(g, c.other_idx[ifirst].ravel(), np.asarray(Z @ r))
    return g, st


def normal_matrix(rows: BlockRows, n_params: int, fit_stars: bool) -> np.ndarray:
    """The normal matrix ``J_t^T J_t`` over all model parameters, with the stars
    eliminated (``H_tt - H_ts D^-1 H_st``) when ``fit_stars``; assembled in blocks."""
    A = rows.A
    nt = A.shape[1]
    H = np.zeros((n_params, n_params))
    # visit x visit: one GEMM per visit (rows sorted by visit), shared by the components
    for a, b in _visit_bounds(rows):
        Av = A[a:b]
        G = Av.T @ Av
        for c in rows.comps:
            cols = c.visit_cols[rows.visit[a]]
            H[np.ix_(cols, cols)] += G
    # visit x CCD and CCD x CCD per image: an (image, column) x rows indicator product
    for c in rows.comps:
        Z, ifirst = _indicator(rows, c)
        n_img, p = len(ifirst), c.other_idx.shape[1]
        cols_o = c.other_idx[ifirst]                              # (n_img, p)
        cols_v = c.visit_cols[rows.visit[ifirst]]                 # (n_img, nt)
        X = np.asarray(Z @ A).reshape(n_img, p, nt)               # sum_rows other x A
        np.add.at(H, (cols_o[:, :, None], cols_v[:, None, :]), X)
        np.add.at(H, (cols_v[:, :, None], cols_o[:, None, :]), X.transpose(0, 2, 1))
        Y = np.asarray(Z @ c.other_val).reshape(n_img, p, p)
        np.add.at(H, (cols_o[:, :, None], cols_o[:, None, :]), Y)
    if fit_stars:
        _subtract_star_blocks(rows, H, _star_terms(rows).W)
    return H


def normal_equations(rows: BlockRows, n_params: int, fit_stars: bool) -> NormalEquations:
    """The normal matrix and gradient over all model parameters, assembled in blocks.

    With ``fit_stars`` the star parameters are eliminated (Schur complement, see the
    module docstring); without, the stars are held fixed.
    """
    g, st = gradient(rows, n_params, fit_stars)
    return NormalEquations(normal_matrix(rows, n_params, fit_stars), g, st)


def _subtract_star_blocks(rows: BlockRows, H: np.ndarray, W: np.ndarray) -> None:
    """``H -= H_ts D^-1 H_st = (W H_st)^T (W H_st)`` (in place), by chunks of stars.

    Every star contributes one row of ``Q = W H_st`` per parameter slot it has (its
    position; its motion where fitted), a sum of its measurements' weighted derivatives.
    """
    A, nv, ns, S = rows.A, rows.n_visits, rows.n_stars, rows.slots
    n, nt = A.shape
    b = _star_derivs(rows)
    # (slot row of Q, measurement, weight): slot j of star k is Q row S * k + j
    qrow, qmeas, qw = [], [], []
    for j in range(S):
        w = np.einsum("ns,ns->n", W[rows.star, j, :], b)
        on = np.nonzero(w)[0] if j else np.arange(n)
        qrow.append(S * rows.star[on] + j)
        qmeas.append(on)
        qw.append(w[on])
    qrow, qmeas, qw = map(np.concatenate, (qrow, qmeas, qw))
    order = np.argsort(qrow, kind="stable")
    qrow, qmeas, qw = qrow[order], qmeas[order], qw[order]
    nq = S * ns
    qstart = np.searchsorted(qrow, np.arange(nq + 1))
    # the per-image columns (CCDs) in a compact numbering, per component
    others = []
    for c in rows.comps:
        used, inv = np.unique(c.other_idx, return_inverse=True)
        p = c.other_idx.shape[1]
        inv = inv.reshape(c.other_idx.shape)
        Qo = sp.csr_matrix(((c.other_val[qmeas] * qw[:, None]).ravel(),
                            (np.repeat(qrow, p), inv[qmeas].ravel())), shape=(nq, len(used)))
        others.append((used, Qo, np.zeros((len(used), nv * nt))))
    VV = np.zeros((nv * nt, nv * nt), order="F")       # Q^T Q (upper triangle)
    chunk = max(64, _Q_CHUNK // (nv * nt))
    for k0 in range(0, nq, chunk):
        k1 = min(nq, k0 + chunk)
        a, e = qstart[k0], qstart[k1]
        if a == e:
            continue
        r = qmeas[a:e]
        P = sp.csr_matrix((qw[a:e], ((qrow[a:e] - k0) * nv + rows.visit[r],
                                     np.arange(e - a))), shape=((k1 - k0) * nv, e - a))
        Q = np.asarray(P @ A[r]).reshape(k1 - k0, nv * nt)
        # BLAS syrk: VV += Q^T Q, half the flops of a GEMM (Q.T is a Fortran view)
        VV = dsyrk(1.0, Q.T, beta=1.0, c=VV, trans=0, lower=0, overwrite_c=1)
        for used, Qo, cross in others:
            cross += Qo[k0:k1].T @ Q
    VV = np.triu(VV) + np.triu(VV, 1).T
    for c, (used, Qo, cross) in zip(rows.comps, others):
        vc = c.visit_cols.ravel()
        H[np.ix_(vc, vc)] -= VV
        H[np.ix_(used, vc)] -= cross
        H[np.ix_(vc, used)] -= cross.T
        H[np.ix_(used, used)] -= (Qo.T @ Qo).toarray()


def solve_blocks(rows: BlockRows, n_params: int, free: np.ndarray, fit_stars: bool,
                 factor: "Factor | None" = None):
    """One Gauss-Newton step ``(d_theta over all parameters, d_stars, factor)``.

    ``factor``: a factorisation of the (reduced) normal matrix to reuse (see
    :func:`gauss_newton_blocks`); None: assemble and factor this step's. The gradient is
    always this step's, so a reused factor changes the path, not the solution. The star
    steps are laid out as the components' ``star_offset`` (and ``motion_offset``) say.
    """
    ns, S = rows.n_stars, rows.slots
    n_star = ns * S * len(rows.comps) if fit_stars else 0
    dt = np.zeros(n_params)
    if free.any():
        g, st = gradient(rows, n_params, fit_stars)
        if factor is None:
            factor = Factor(normal_matrix(rows, n_params, fit_stars), free,
                            [c.visit_cols for c in rows.comps])
        dt = factor.solve(g)
    elif fit_stars:
        st = _star_terms(rows)
    ds = np.zeros(n_star)
    if fit_stars:
        b = _star_derivs(rows)
        for c, gs in zip(rows.comps, st.gs):
            # J_t dt per row: the visit block by visit slices, the CCD columns directly
            jd = np.zeros(len(rows.star))
            if free.any():
                jd = (c.other_val * dt[c.other_idx]).sum(axis=1)
                for a, e in _visit_bounds(rows):
                    jd[a:e] += rows.A[a:e] @ dt[c.visit_cols[rows.visit[a]]]
            hsd = np.stack([np.bincount(rows.star, b[:, i] * jd, ns) for i in range(S)], 1)
            d = -np.einsum("kst,kt->ks", st.inv, gs + hsd)
            ds[c.star_offset:c.star_offset + ns] = d[:, 0]
            if S == 2:
                ds[c.motion_offset:c.motion_offset + ns] = d[:, 1]
    return dt, ds, factor


class Factor:
    """Cholesky factorisation of the normal matrix ``H`` on the ``free`` parameters, by
    block elimination; :meth:`solve` gives ``d`` (0 where not free) with ``H d = -g``.

    ``blocks``: arrays of parameter indices (the components' visit blocks) that couple
    only with themselves and the remaining parameters (the CCDs), as the visit blocks
    of different coordinates do: each is factored on its own (a few 1000 x 1000 Cholesky
    factorisations instead of one of their total size), then the small remaining block.
    Jacobi scaling first: the parameters have very different units.

    Raises
    ------
    SingularSystemError
        An unconstrained parameter or a degeneracy.
    """

    def __init__(self, H, free, blocks):
        fi = np.nonzero(free)[0]
        diag = np.diag(H)[fi]
        if np.any(~(diag > 0)) or not np.all(np.isfinite(diag)):
            raise SingularSystemError(
                f"singular normal matrix: {int(np.sum(~(diag > 0)))} model parameters are "
                "not constrained by any measurement (e.g. a CCD or visit without stars); "
                "lower the model order or drop those data")
        self.n = len(H)
        self.sc = np.zeros(self.n)
        self.sc[fi] = sc = 1.0 / np.sqrt(diag)
        in_block = np.zeros(self.n, bool)
        parts = []
        for b in blocks:
            b = np.asarray(b).ravel()
            b = b[free[b]]
            in_block[b] = True
            parts.append(b)
        self.rest = rest = fi[~in_block[fi]]
        sc = self.sc
        try:
            R = H[np.ix_(rest, rest)] * np.outer(sc[rest], sc[rest])
            self.facs = []
            for b in parts:
                L = np.linalg.cholesky(H[np.ix_(b, b)] * np.outer(sc[b], sc[b]))
                X = scipy.linalg.solve_triangular(
                    L, H[np.ix_(b, rest)] * np.outer(sc[b], sc[rest]), lower=True,
                    check_finite=False)
                R -= X.T @ X
                self.facs.append((b, L, X))
            self.Lr = np.linalg.cholesky(R) if len(rest) else None
        except np.linalg.LinAlgError:
            raise SingularSystemError(
                "singular normal matrix (the model has a degeneracy the data do not fix, "
                "e.g. too few stars for the polynomial order); lower the model order or "
                "select more stars") from None

    def solve(self, g) -> np.ndarray:
        sc, rest = self.sc, self.rest
        d = np.zeros(self.n)
        r = g[rest] * sc[rest]
        ys = []
        for b, L, X in self.facs:
            y = scipy.linalg.solve_triangular(L, g[b] * sc[b], lower=True,
                                              check_finite=False)
            r -= X.T @ y
            ys.append(y)
        dr = np.zeros(0)
        if len(rest):
            dr = scipy.linalg.cho_solve((self.Lr, True), -r, check_finite=False)
            d[rest] = dr * sc[rest]
        for (b, L, X), y in zip(self.facs, ys):
            d[b] = scipy.linalg.solve_triangular(L.T, -y - X @ dr, lower=False,
                                                 check_finite=False) * sc[b]
        if not np.all(np.isfinite(d)):
            raise SingularSystemError("singular normal matrix (non-finite step); lower "
                                      "the model order or select more stars")
        return d


# --- the two problems in block form -------------------------------------------------------
class BlockProblem:
    """A problem of :mod:`.problems` (``self.problem``: its residuals, active set, chi2,
    set_sigma, ... through attribute delegation) fitted with :class:`BlockRows`: the
    subclasses give ``block_rows``, and :func:`.fitter.gauss_newton` hands its fits to
    :meth:`gauss_newton` (:func:`gauss_newton_blocks`)."""

    def __init__(self, problem):
        self.problem = problem
        model, m = problem.model, problem.meas
        self.model, self.meas = model, m
        self.n_params = model.n_params
        self.n_star = problem.n_star
        #: measurements by visit, then image: the row order of :class:`BlockRows`
        self.order = np.lexsort((m.img, model.image_visit[m.img]))

    def __getattr__(self, name):  # active, chi2, measurement_chi2, ...: the problem's
        return getattr(self.problem, name)

    def gauss_newton(self, theta, stars, free_theta, fit_stars: bool, max_iter: int = 20,
                     tol: float = 1e-4) -> FitResult:
        """:func:`gauss_newton_blocks` on this problem."""
        return gauss_newton_blocks(self, theta, stars, free_theta, fit_stars, max_iter, tol)


def block_problem(problem):
    """The block form of an :class:`.problems.AstrometryProblem` (of a
    :class:`.mosaic_models.MosaicAstrometryModel`) or a :class:`.problems.PhotometryProblem`
    (of a :class:`.photometry_models.ConstrainedPhotometryModel`): the ``wrap_problem``
    of :func:`.solver.fit_models`."""
    if isinstance(problem, AstrometryProblem):
        return AstrometryBlocks(problem)
    return PhotometryBlocks(problem)


class AstrometryBlocks(BlockProblem):
    """:class:`.problems.AstrometryProblem` (its residuals, active set and chi2) with
    :class:`BlockRows` of a :class:`.mosaic_models.MosaicAstrometryModel`."""

    #: reuse the factorised Schur complement between steps (:func:`gauss_newton_blocks`)
    reuse_factor = True

    def __init__(self, problem: AstrometryProblem):
        super().__init__(problem)
        model = problem.model
        nt = model.nt
        self.cols_xi = np.arange(model.n_visits)[:, None] * 2 * nt + np.arange(nt)
        self.ref_w = 1.0 / problem.ref_sigma

    def block_rows(self, theta, stars, derivatives: bool = True) -> BlockRows:
        """The active rows at ``(theta, stars)``; without ``derivatives`` only what the
        star parameters need (the model held fixed)."""
        p, m, model = self.problem, self.meas, self.model
        o = self.order[p.active[self.order]]
        img = m.img[o]
        if derivatives:
            xi, eta, B, dxa, dea = model.block_derivatives(theta, img, m.u[o], m.v[o])
        else:
            xi, eta = model.evaluate(theta, img, m.u[o], m.v[o])
            B, dxa, dea = np.zeros((len(o), 0)), np.zeros((len(o), 0)), np.zeros((len(o), 0))
        k = m.star[o]
        w = 1.0 / m.sigma[o]
        ns = p.n_stars
        pmx, pmy = p.star_motion(stars)  # fitted, from the catalog, or 0
        rx = (xi - stars[k] - pmx[k] * m.dt[o]) * w
        ry = (eta - stars[ns + k] - pmy[k] * m.dt[o]) * w
        B *= w[:, None]
        ccd = model.ccd_base + 3 * model.image_ccd[img][:, None] + np.arange(dxa.shape[1])
        s = p.ref_star
        comps = [Component(self.cols_xi, ccd, dxa * w[:, None], rx, 0,
                           (stars[s] - p.ref_xi) * self.ref_w),
                 Component(self.cols_xi + model.nt, ccd, dea * w[:, None], ry, ns,
                           (stars[ns + s] - p.ref_eta) * self.ref_w)]
        rows = BlockRows(model.image_visit[img], img, B, k, -w, s, self.ref_w, comps,
                         model.n_visits, ns)
        if p.pm_fit is not None:
            # star blocks (position, motion) per coordinate: parameters [xi, eta, mu_xi,
            # mu_eta] x K; a row depends on its star's motion where that is fitted
            rows.beta2 = np.where(p.pm_fit[k], -w * m.dt[o], 0.0)
            q = p.pm_prior
            rows.prior_star, rows.prior_w = q, np.full(len(q), 1.0 / p.pm_sigma)
            for c, off, cat in zip(comps, (2 * ns, 3 * ns), (p.pm_xi, p.pm_eta)):
                c.motion_offset = off
                c.prior_rho = (stars[off + q] - cat[q]) * rows.prior_w
        return rows


class PhotometryBlocks(BlockProblem):
    """:class:`.problems.PhotometryProblem` with :class:`BlockRows` of a
    :class:`.photometry_models.ConstrainedPhotometryModel` (``calib = k_ccd * T_visit(f)``:
    per visit ``nt`` Chebyshev terms, then one scale per CCD).

    The focal-plane positions are the astrometric fit's and do not change during the
    photometric fit, so the Chebyshev basis of every measurement is computed once; the
    calibration and the chi^2 of a trial step are then one matrix-vector product per visit.
    """

    #: always assemble the step's own matrix: the photometric Jacobian moves with the
    #: fluxes and calibrations, and chord steps stopped early along the weakly
    #: constrained absolute-calibration direction (measured: 0.97 instead of 0.80 mmag)
    reuse_factor = False

    def __init__(self, problem: PhotometryProblem):
        super().__init__(problem)
        model, m = problem.model, problem.meas
        self.cols = np.arange(model.n_visits)[:, None] * model.nt + np.arange(model.nt)
        self.ref_w = 1.0 / problem.ref_err
        img = m.img[self.order]
        fx, fy = model.focal(img, m.u[self.order], m.v[self.order])
        self.B = chebyshev_basis(fx / model.scale, fy / model.scale, model.order)
        self.img, self.vis = img, model.image_visit[img]
        self.ccd_col = model.ccd_base + model.image_ccd[img]
        self.unsort = np.empty_like(self.order)
        self.unsort[self.order] = np.arange(len(self.order))

    def _calib(self, theta, sel=slice(None)):
        """(calib, T, k) of the measurements in visit order (``sel`` of them)."""
        model = self.model
        coef = theta[:model.ccd_base].reshape(model.n_visits, model.nt, 1)
        T = per_visit_product(self.B[sel], coef, self.vis[sel])[:, 0]
        k = theta[self.ccd_col[sel]]
        return k * T, T, k

    def measurement_chi2(self, theta, stars):
        """:meth:`.problems.PhotometryProblem.measurement_chi2` from the cached basis."""
        m = self.meas
        calib = self._calib(theta)[0][self.unsort]
        return ((m.flux - stars[m.star] / calib) / self.problem.sigma) ** 2

    def chi2(self, theta, stars) -> float:
        """:meth:`.problems.PhotometryProblem.chi2` from the cached basis."""
        p = self.problem
        c = self.measurement_chi2(theta, stars)[p.active].sum()
        c += (((stars[p.ref_star] - p.ref_flux) / p.ref_err) ** 2).sum()
        return float(c)

    def block_rows(self, theta, stars, derivatives: bool = True) -> BlockRows:
        """The active rows at ``(theta, stars)``; without ``derivatives`` only what the
        star parameters need (the model held fixed)."""
        p, m, model = self.problem, self.meas, self.model
        sel = np.nonzero(p.active[self.order])[0]
        o = self.order[sel]
        calib, T, kc = self._calib(theta, sel)
        w = 1.0 / p.sigma[o]
        k = m.star[o]
        pred = stars[k] / calib
        scale = pred / calib * w              # d(flux - pred) / d calib, weighted
        if derivatives:
            A = self.B[sel]
            A *= (kc * scale)[:, None]
            ccd, dccd = self.ccd_col[sel][:, None], (T * scale)[:, None]
        else:
            A, ccd, dccd = (np.zeros((len(sel), 0)), np.zeros((len(sel), 0), int),
                            np.zeros((len(sel), 0)))
        s = p.ref_star
        comp = Component(self.cols, ccd, dccd,
                         (m.flux[o] - pred) * w, 0, (stars[s] - p.ref_flux) * self.ref_w)
        return BlockRows(self.vis[sel], self.img[sel], A, k, -w / calib, s, self.ref_w,
                         [comp], model.n_visits, p.n_star)


# --- Gauss-Newton on the block assembly (the staged fit is jointcal's) ------------------
def gauss_newton_blocks(bp, theta, stars, free_theta, fit_stars: bool, max_iter: int = 20,
                        tol: float = 1e-4) -> FitResult:
    """:func:`.fitter.gauss_newton` (same step control and convergence) with
    :func:`solve_blocks` steps; ``bp``: an :class:`AstrometryBlocks` or
    :class:`PhotometryBlocks`. Updates ``theta`` and ``stars`` in place.

    Where ``bp.reuse_factor`` (astrometry), the factorised normal matrix with the
    stars eliminated is kept on ``bp`` and reused by later iterations and later fits of
    the same parameters (the outlier-rejection rounds), with each step's own gradient:
    a chord (simplified Newton) method. That matrix changes little between them (the
    basis moves with the CCD placements by ~1e-6, rejection removes ~1 % of the rows),
    so the steps converge to the same minimum while assembling the Schur complement
    costs most of a step. A step that the line search must shorten refreshes it.
    """
    with single_blas_thread():
        free = np.asarray(free_theta, bool)
        n_free = int(free.sum())
        n_star = bp.n_star if fit_stars else 0
        key = (fit_stars, free.tobytes())
        cache = bp.__dict__.setdefault("factors", {})
        if not (fit_stars and bp.reuse_factor):
            cache.pop(key, None)
        rows = bp.block_rows(theta, stars, n_free > 0)
        chi2, n_rows = rows.chi2, rows.n_rows
        # degrees of freedom: star parameters that some row depends on (as the fitter)
        n_star_used = _star_terms(rows).n_used if n_star else 0
        converged = False
        it = 0
        while it < max_iter:
            it += 1
            stale = key in cache
            dt, ds, cache[key] = solve_blocks(rows, bp.n_params, free, fit_stars,
                                              cache.get(key))
            t_new, s_new, new_chi2, step = line_search(
                bp, stars, lambda step, dt=dt: theta + step * dt, ds, n_star, chi2)
            if step is None:
                if stale and n_free:  # first a step with this iteration's own matrix
                    del cache[key]
                    it -= 1
                    continue
                converged = no_descent(chi2, new_chi2, tol)
                break
            if step < 1.0 or not (fit_stars and bp.reuse_factor):
                cache.pop(key, None)
            done = take_step(theta, stars, t_new, s_new, n_star, chi2, new_chi2, tol)
            chi2 = new_chi2
            if done:
                converged = True
                break
            if it < max_iter:
                rows = bp.block_rows(theta, stars, n_free > 0)
    return FitResult(chi2, int(n_rows - n_free - n_star_used), it, converged)


def fit_models_blocks(prep: PreparedFit, amodel, theta, pmodel, config,
                      focal) -> JointcalResult:
    """:func:`.solver.fit_models` (same problems, start, proper motions, staging and
    rejection) with the normal equations assembled in per-image blocks."""
    return fit_models(prep, amodel, theta, pmodel, config, focal,
                      wrap_problem=block_problem)
