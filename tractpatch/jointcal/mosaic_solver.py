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
- the stars, eliminated: ``S = H - H_ts D^-1 H_st`` with ``D`` diagonal. For chunks of
  stars, ``Q = D^-1/2 H_st`` restricted to the visit blocks is a dense (stars x visits*nt)
  matrix (each star is seen by most visits) filled by one sparse product, and
  ``Q^T Q`` is one symmetric rank-k update (BLAS ``syrk``); xi and eta share it.

The reduced system (visits x terms + CCDs, a few thousand parameters) is factored by
Cholesky, and the stars follow by back-substitution. :func:`fit_mosaic` with
``assembly="sparse"`` runs the same models through jointcal's generic fitter instead
(for comparison; tests check both assemble the same normal matrix).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.linalg.blas import dsyrk

from ..errors import DataQualityError, UserError
from .astrometry_models import ConstrainedAstrometryModel
from .fitter import FitResult, SingularSystemError
from .inputs import CcdImage, Detections, RefCatalog
from .mosaic_models import MosaicAstrometryModel, per_visit_product, supported_order
from .photometry_models import ConstrainedPhotometryModel, chebyshev_basis
from .problems import AstrometryProblem, PhotometryProblem
from .solver import (_CHI2_MEDIAN, JointcalResult, PreparedFit, _worst_per_star,
                     fit_models, prepare_fit, reference_ccd)
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
    layout = ConstrainedAstrometryModel(prep.img_visit, prep.img_ccd, nv, nc, 1)
    affine = layout.initialize(gi, gu, gv, gxi, geta)[layout.ccd_base:].reshape(nc, 6)
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
    theta = amodel.initialize(gi, gu, gv, gxi, geta, affine, layout.scale)

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
    residuals of the reference rows (star - reference) / sigma.
    """

    visit_cols: np.ndarray
    other_idx: np.ndarray
    other_val: np.ndarray
    rho: np.ndarray
    star_offset: int
    ref_rho: np.ndarray


@dataclass
class BlockRows:
    """Weighted residual rows of a mosaic fit, sorted by visit then image.

    Shared by the components: ``visit`` and ``image`` (n,), ``A`` (n, nt) the weighted
    derivatives with respect to the visit's block, ``star`` (n,) the star index and
    ``beta`` (n,) the weighted derivative with respect to the star parameter; the
    reference rows ``ref_star`` with derivative ``ref_w``.
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

    @property
    def chi2(self) -> float:
        return float(sum(c.rho @ c.rho + c.ref_rho @ c.ref_rho for c in self.comps))

    @property
    def n_rows(self) -> int:
        return (len(self.star) + len(self.ref_star)) * len(self.comps)


@dataclass
class NormalEquations:
    """``H d = -g`` over all model parameters, stars eliminated when ``dinv`` is set;
    ``gs`` (per component) the star gradients for the back-substitution."""

    H: np.ndarray
    g: np.ndarray
    dinv: np.ndarray | None
    gs: list | None


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


def normal_equations(rows: BlockRows, n_params: int, fit_stars: bool) -> NormalEquations:
    """The normal matrix and gradient over all model parameters, assembled in blocks.

    With ``fit_stars`` the star parameters are eliminated (Schur complement, see the
    module docstring); without, the stars are held fixed.
    """
    A, nv = rows.A, rows.n_visits
    n, nt = A.shape
    H = np.zeros((n_params, n_params))
    g = np.zeros(n_params)
    dinv = gs = None
    rho_eff = [c.rho for c in rows.comps]
    if fit_stars:
        D = np.bincount(rows.star, rows.beta ** 2, rows.n_stars)
        D[rows.ref_star] += rows.ref_w ** 2
        dinv = np.where(D > 0, 1.0 / np.where(D > 0, D, 1.0), 0.0)
        gs = []
        for c in rows.comps:
            s = np.bincount(rows.star, rows.beta * c.rho, rows.n_stars)
            s[rows.ref_star] += rows.ref_w * c.ref_rho
            gs.append(s)
        # g - H_ts D^-1 g_s, row by row: the star's gradient folded into the residual
        rho_eff = [c.rho - rows.beta * (s * dinv)[rows.star] for c, s in zip(rows.comps, gs)]
    # visit x visit: one GEMM per visit (rows sorted by visit), shared by the components
    vfirst, _ = _groups(rows.visit)
    vbound = np.r_[vfirst, n]
    for a, b in zip(vbound[:-1], vbound[1:]):
        v = rows.visit[a]
        Av = A[a:b]
        G = Av.T @ Av
        for c, r in zip(rows.comps, rho_eff):
            cols = c.visit_cols[v]
            H[np.ix_(cols, cols)] += G
            g[cols] += Av.T @ r[a:b]
    # visit x CCD and CCD x CCD per image: an (image, column) x rows indicator product
    ifirst, run = _groups(rows.image)
    n_img = len(ifirst)
    img_visit = rows.visit[ifirst]
    for c, r in zip(rows.comps, rho_eff):
        p = c.other_idx.shape[1]
        Z = sp.csr_matrix((c.other_val.ravel(), ((run[:, None] * p + np.arange(p)).ravel(),
                                                  np.repeat(np.arange(n), p))),
                          shape=(n_img * p, n))
        cols_o = c.other_idx[ifirst]                              # (n_img, p)
        cols_v = c.visit_cols[img_visit]                          # (n_img, nt)
        X = np.asarray(Z @ A).reshape(n_img, p, nt)               # sum_rows other x A
        np.add.at(H, (cols_o[:, :, None], cols_v[:, None, :]), X)
        np.add.at(H, (cols_v[:, :, None], cols_o[:, None, :]), X.transpose(0, 2, 1))
        Y = np.asarray(Z @ c.other_val).reshape(n_img, p, p)
        np.add.at(H, (cols_o[:, :, None], cols_o[:, None, :]), Y)
        np.add.at(g, cols_o.ravel(), np.asarray(Z @ r))
    if fit_stars:
        _subtract_star_blocks(rows, H, dinv)
    return NormalEquations(H, g, dinv, gs)


def _subtract_star_blocks(rows: BlockRows, H: np.ndarray, dinv: np.ndarray) -> None:
    """``H -= H_ts D^-1 H_st`` (in place), by chunks of stars."""
    A, nv, ns = rows.A, rows.n_visits, rows.n_stars
    n, nt = A.shape
    sq = np.sqrt(dinv)
    wrow = rows.beta * sq[rows.star]                    # row weight in D^-1/2 H_st
    order = np.argsort(rows.star, kind="stable")
    sstart = np.searchsorted(rows.star[order], np.arange(ns + 1))
    # the per-image columns (CCDs) in a compact numbering, per component
    others = []
    for c in rows.comps:
        used, inv = np.unique(c.other_idx, return_inverse=True)
        Qo = sp.csr_matrix(((c.other_val * wrow[:, None]).ravel(),
                            (np.repeat(rows.star, c.other_idx.shape[1]), inv.ravel())),
                           shape=(ns, len(used)))
        others.append((used, Qo, np.zeros((len(used), nv * nt))))
    VV = np.zeros((nv * nt, nv * nt), order="F")       # Q^T Q (upper triangle)
    chunk = max(64, _Q_CHUNK // (nv * nt))
    for k0 in range(0, ns, chunk):
        k1 = min(ns, k0 + chunk)
        r = order[sstart[k0]:sstart[k1]]
        if len(r) == 0:
            continue
        P = sp.csr_matrix((wrow[r], ((rows.star[r] - k0) * nv + rows.visit[r],
                                     np.arange(len(r)))), shape=((k1 - k0) * nv, len(r)))
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


def solve_blocks(rows: BlockRows, n_params: int, free: np.ndarray, fit_stars: bool):
    """One Gauss-Newton step ``(d_theta over all parameters, d_stars)``."""
    ns = rows.n_stars
    n_star = ns * len(rows.comps) if fit_stars else 0
    dt = np.zeros(n_params)
    if free.any():
        ne = normal_equations(rows, n_params, fit_stars)
        dt[:] = solve_normal(ne.H, ne.g, free, [c.visit_cols for c in rows.comps])
        dinv, gs = ne.dinv, ne.gs
    elif fit_stars:
        D = np.bincount(rows.star, rows.beta ** 2, ns)
        D[rows.ref_star] += rows.ref_w ** 2
        dinv = np.where(D > 0, 1.0 / np.where(D > 0, D, 1.0), 0.0)
        gs = []
        for c in rows.comps:
            s = np.bincount(rows.star, rows.beta * c.rho, ns)
            s[rows.ref_star] += rows.ref_w * c.ref_rho
            gs.append(s)
    ds = np.zeros(n_star)
    if fit_stars:
        vfirst, _ = _groups(rows.visit)
        vbound = np.r_[vfirst, len(rows.visit)]
        for c, s in zip(rows.comps, gs):
            # J_t dt per row: the visit block by visit slices, the CCD columns directly
            jd = (c.other_val * dt[c.other_idx]).sum(axis=1)
            for a, b in zip(vbound[:-1], vbound[1:]):
                jd[a:b] += rows.A[a:b] @ dt[c.visit_cols[rows.visit[a]]]
            hsd = np.bincount(rows.star, rows.beta * jd, ns)
            ds[c.star_offset:c.star_offset + ns] = -dinv * (s + hsd)
    return dt, ds


def solve_normal(H, g, free, blocks) -> np.ndarray:
    """``d`` (over all parameters, 0 where not ``free``) solving ``H d = -g`` on the free
    parameters, by block elimination.

    ``blocks``: arrays of parameter indices (the components' visit blocks) that couple
    only with themselves and the remaining parameters (the CCDs), as the visit blocks
    of different coordinates do: each is factored on its own (a few 1000 x 1000 Cholesky
    factorisations instead of one of their total size), then the small remaining block.
    Jacobi scaling first: the parameters have very different units.
    """
    fi = np.nonzero(free)[0]
    d = np.zeros(len(g))
    diag = np.diag(H)[fi]
    if np.any(~(diag > 0)) or not np.all(np.isfinite(diag)):
        raise SingularSystemError(
            f"singular normal matrix: {int(np.sum(~(diag > 0)))} model parameters are not "
            "constrained by any measurement (e.g. a CCD or visit without stars); lower the "
            "model order or drop those data")
    sc = np.zeros(len(g))
    sc[fi] = 1.0 / np.sqrt(diag)
    in_block = np.zeros(len(g), bool)
    parts = []
    for b in blocks:
        b = np.asarray(b).ravel()
        b = b[free[b]]
        in_block[b] = True
        parts.append(b)
    rest = fi[~in_block[fi]]
    try:
        R = H[np.ix_(rest, rest)] * np.outer(sc[rest], sc[rest])
        r = g[rest] * sc[rest]
        facs = []
        for b in parts:
            L = np.linalg.cholesky(H[np.ix_(b, b)] * np.outer(sc[b], sc[b]))
            X = scipy.linalg.solve_triangular(L, H[np.ix_(b, rest)] *
                                              np.outer(sc[b], sc[rest]), lower=True,
                                              check_finite=False)
            y = scipy.linalg.solve_triangular(L, g[b] * sc[b], lower=True,
                                              check_finite=False)
            R -= X.T @ X
            r -= X.T @ y
            facs.append((b, L, X, y))
        dr = np.zeros(0)
        if len(rest):
            Lr = np.linalg.cholesky(R)
            dr = scipy.linalg.cho_solve((Lr, True), -r, check_finite=False)
            d[rest] = dr * sc[rest]
        for b, L, X, y in facs:
            d[b] = scipy.linalg.solve_triangular(L.T, -y - X @ dr, lower=False,
                                                 check_finite=False) * sc[b]
    except np.linalg.LinAlgError:
        raise SingularSystemError(
            "singular normal matrix (the model has a degeneracy the data do not fix, "
            "e.g. too few stars for the polynomial order); lower the model order or "
            "select more stars") from None
    if not np.all(np.isfinite(d)):
        raise SingularSystemError("singular normal matrix (non-finite step); lower the "
                                  "model order or select more stars")
    return d


# --- the two problems in block form -------------------------------------------------------
class AstrometryBlocks:
    """:class:`.problems.AstrometryProblem` (its residuals, active set and chi2) with
    :class:`BlockRows` of a :class:`.mosaic_models.MosaicAstrometryModel`."""

    def __init__(self, problem: AstrometryProblem):
        self.problem = problem
        model, m = problem.model, problem.meas
        self.model, self.meas = model, m
        self.n_params = model.n_params
        self.n_star = problem.n_star
        self.order = np.lexsort((m.img, model.image_visit[m.img]))
        nt = model.nt
        self.cols_xi = np.arange(model.n_visits)[:, None] * 2 * nt + np.arange(nt)
        self.ref_w = 1.0 / problem.ref_sigma

    def __getattr__(self, name):  # active, chi2, measurement_chi2, ...: the problem's
        return getattr(self.problem, name)

    def block_rows(self, theta, stars) -> BlockRows:
        p, m, model = self.problem, self.meas, self.model
        o = self.order[p.active[self.order]]
        img = m.img[o]
        xi, eta, B, dxa, dea = model.block_derivatives(theta, img, m.u[o], m.v[o])
        k = m.star[o]
        w = 1.0 / m.sigma[o]
        ns = p.n_stars
        rx = (xi - stars[k] - p.pm_xi[k] * m.dt[o]) * w
        ry = (eta - stars[ns + k] - p.pm_eta[k] * m.dt[o]) * w
        B *= w[:, None]
        ccd = model.ccd_base + 3 * model.image_ccd[img][:, None] + np.arange(3)
        s = p.ref_star
        comps = [Component(self.cols_xi, ccd, dxa * w[:, None], rx, 0,
                           (stars[s] - p.ref_xi) * self.ref_w),
                 Component(self.cols_xi + model.nt, ccd, dea * w[:, None], ry, ns,
                           (stars[ns + s] - p.ref_eta) * self.ref_w)]
        return BlockRows(model.image_visit[img], img, B, k, -w, s, self.ref_w, comps,
                         model.n_visits, ns)


class PhotometryBlocks:
    """:class:`.problems.PhotometryProblem` with :class:`BlockRows` of a
    :class:`.photometry_models.ConstrainedPhotometryModel` (``calib = k_ccd * T_visit(f)``:
    per visit ``nt`` Chebyshev terms, then one scale per CCD).

    The focal-plane positions are the astrometric fit's and do not change during the
    photometric fit, so the Chebyshev basis of every measurement is computed once; the
    calibration and the chi^2 of a trial step are then one matrix-vector product per visit.
    """

    def __init__(self, problem: PhotometryProblem):
        self.problem = problem
        model, m = problem.model, problem.meas
        self.model, self.meas = model, m
        self.n_params = model.n_params
        self.n_star = problem.n_star
        self.order = np.lexsort((m.img, model.image_visit[m.img]))
        self.cols = np.arange(model.n_visits)[:, None] * model.nt + np.arange(model.nt)
        self.ref_w = 1.0 / problem.ref_err
        img = m.img[self.order]
        fx, fy = model.focal(img, m.u[self.order], m.v[self.order])
        self.B = chebyshev_basis(fx / model.scale, fy / model.scale, model.order)
        self.img, self.vis = img, model.image_visit[img]
        self.ccd_col = model.ccd_base + model.image_ccd[img]
        self.unsort = np.empty_like(self.order)
        self.unsort[self.order] = np.arange(len(self.order))

    def __getattr__(self, name):
        return getattr(self.problem, name)

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

    def block_rows(self, theta, stars) -> BlockRows:
        p, m, model = self.problem, self.meas, self.model
        sel = np.nonzero(p.active[self.order])[0]
        o = self.order[sel]
        calib, T, kc = self._calib(theta, sel)
        w = 1.0 / p.sigma[o]
        k = m.star[o]
        pred = stars[k] / calib
        scale = pred / calib * w              # d(flux - pred) / d calib, weighted
        A = self.B[sel]
        A *= (kc * scale)[:, None]
        s = p.ref_star
        comp = Component(self.cols, self.ccd_col[sel][:, None], (T * scale)[:, None],
                         (m.flux[o] - pred) * w, 0, (stars[s] - p.ref_flux) * self.ref_w)
        return BlockRows(self.vis[sel], self.img[sel], A, k, -w / calib, s, self.ref_w,
                         [comp], model.n_visits, p.n_star)


# --- Gauss-Newton and the staged fit (jointcal's, on the block assembly) -----------------
def gauss_newton_blocks(bp, theta, stars, free_theta, fit_stars: bool, max_iter: int = 20,
                        tol: float = 1e-4) -> FitResult:
    """:func:`.fitter.gauss_newton` (same step control and convergence) with
    :func:`solve_blocks` steps; ``bp``: an :class:`AstrometryBlocks` or
    :class:`PhotometryBlocks`. Updates ``theta`` and ``stars`` in place."""
    with single_blas_thread():
        free = np.asarray(free_theta, bool)
        n_free = int(free.sum())
        n_star = bp.n_star if fit_stars else 0
        rows = bp.block_rows(theta, stars)
        chi2, n_rows = rows.chi2, rows.n_rows
        converged = False
        it = 0
        for it in range(1, max_iter + 1):
            dt, ds = solve_blocks(rows, bp.n_params, free, fit_stars)
            rows = None  # free the Jacobian while trial steps are evaluated
            step = 1.0
            for _ in range(7):
                t_new = theta + step * dt
                s_new = stars + step * ds if n_star else stars
                new_chi2 = bp.chi2(t_new, s_new)
                if np.isfinite(new_chi2) and new_chi2 <= chi2 * (1 + 1e-12):
                    break
                step *= 0.5
            else:
                if chi2 - new_chi2 > -1e-9 * chi2 or abs(new_chi2 - chi2) <= tol * chi2:
                    converged = True
                    break
                raise DataQualityError(
                    f"fit diverged: chi2 {chi2:.6g} rises to {new_chi2:.6g} along the "
                    "Gauss-Newton step; check the input WCSs and the model order")
            theta[:] = t_new
            if n_star:
                stars[:] = s_new
            rel = (chi2 - new_chi2) / max(new_chi2, 1e-300)
            chi2 = new_chi2
            if rel < tol:
                converged = True
                break
            if it < max_iter:
                rows = bp.block_rows(theta, stars)
    return FitResult(chi2, int(n_rows - n_free - n_star), it, converged)


def _staged_fit_blocks(bp, theta, stars, fixed, config, what, dof):
    """:func:`.solver._staged_fit` on the block assembly: model with stars fixed, stars
    with the model fixed, then everything with robust outlier rejection."""
    free = ~fixed
    kw = dict(max_iter=config.maxIterations, tol=config.convergenceTolerance)
    start = dict(kw, max_iter=min(2, config.maxIterations))  # a start, not a solution
    gauss_newton_blocks(bp, theta, stars, free, False, **start)
    gauss_newton_blocks(bp, theta, stars, np.zeros_like(free), True, **start)
    fit = gauss_newton_blocks(bp, theta, stars, free, True, **kw)
    for rnd in range(config.maxOutlierRounds):
        chi2 = bp.measurement_chi2(theta, stars)
        s2 = max(1.0, float(np.median(chi2[bp.active])) / _CHI2_MEDIAN[dof])
        bad = _worst_per_star(bp.meas.star,
                              bp.active & (chi2 > config.outlierRejectSigma ** 2 * s2), chi2)
        if not bad.any():
            break
        bp.problem.active &= ~bad
        log.info("%s: rejected %d outliers (round %d)", what, int(bad.sum()), rnd + 1)
        if hasattr(bp.problem, "set_sigma"):
            bp.problem.set_sigma(theta)
        fit = gauss_newton_blocks(bp, theta, stars, free, True, **kw)
    log.info("%s: chi2/ndof = %.6g / %d = %.3f after %d iterations%s", what, fit.chi2,
             fit.ndof, fit.chi2 / max(fit.ndof, 1), fit.n_iter,
             "" if fit.converged else " (not converged)")
    return fit


def fit_models_blocks(prep: PreparedFit, amodel, theta, pmodel, config,
                      focal) -> JointcalResult:
    """:func:`.solver.fit_models` (same problems, start, staging and rejection) with the
    normal equations assembled in per-image blocks."""
    meas, n_stars, ref_index, refcat = prep.meas, prep.n_stars, prep.ref_index, prep.refcat
    rsig = np.hypot(refcat.ra_err, refcat.dec_err) / np.sqrt(2) / 1000.0
    rsig = np.where(np.isfinite(rsig) & (rsig > 0), rsig, 0.01)
    aprob = AstrometryProblem(amodel, meas, n_stars, ref_index, prep.ref_xi, prep.ref_eta,
                              rsig, prep.pm_xi, prep.pm_eta)
    stars = np.concatenate([prep.star_xi, prep.star_eta])
    m = ref_index >= 0
    stars[:n_stars][m] = prep.ref_xi[ref_index[m]]
    stars[n_stars:][m] = prep.ref_eta[ref_index[m]]
    afit = None
    if config.doAstrometry:
        afit = _staged_fit_blocks(AstrometryBlocks(aprob), theta, stars, amodel.fixed,
                                  config, "astrometry", 2)
    ptheta = fluxes = pfit = pactive = None
    if pmodel is not None:
        star_of, img = meas.star, meas.img
        cnt = prep.star_count
        rf = np.where(ref_index >= 0, refcat.flux[np.maximum(ref_index, 0)], np.nan)
        ptheta = pmodel.initialize(img, rf[star_of] / meas.flux)
        snr = meas.flux / meas.flux_err
        o = np.lexsort((snr, star_of))
        first = np.searchsorted(star_of[o], np.arange(n_stars))
        med_snr = snr[o][first + (cnt - 1) // 2]
        pprob = PhotometryProblem(pmodel, meas, n_stars, ref_index, refcat.flux,
                                  refcat.flux_err, config.photometryErrorPedestal,
                                  med_snr >= config.photometryRefMinSnr)
        if len(pprob.ref_star) == 0:
            raise UserError("no fitted star has a reference flux in this filter; check "
                            "photometryRefCat and its colour terms for the filter")
        calib0, _, _ = pmodel.derivatives(ptheta, img, meas.u, meas.v)
        fluxes = np.bincount(star_of, meas.flux * calib0, n_stars) / cnt
        fluxes[pprob.ref_star] = pprob.ref_flux
        pprob.set_sigma(ptheta)
        pfit = _staged_fit_blocks(PhotometryBlocks(pprob), ptheta, fluxes, pmodel.fixed,
                                  config, "photometry", 1)
        pactive = pprob.active
    return JointcalResult(prep.images, prep.tangent, amodel, theta, pmodel, ptheta, meas,
                          stars, fluxes, aprob.active, pactive, ref_index, refcat,
                          prep.ref_xi, prep.ref_eta, afit, pfit, prep.offsets, prep.counts,
                          prep.dropped, focal)
