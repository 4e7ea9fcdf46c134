"""meas_mosaic's astrometric model: rigid CCDs on a focal plane, a polynomial per visit.

Each CCD sits on the focal plane at an offset ``(x0, y0)`` with a rotation ``t``, shared
by all visits (meas_mosaic's ``ccdSet``); pixels keep the camera's nominal scale, so
the focal plane is in sky-scale arcsec and

    fx = x0 + cos t * U - sin t * V,   fy = y0 + sin t * U + cos t * V,
    U = u * hx,  V = v * hy          (u, v normalised CCD coordinates, hx, hy half sizes)

Each visit maps the focal plane to the tract's tangent plane by a 2-D Chebyshev series
of total order ``order`` (meas_mosaic's ``fittingOrder``, 9 for HSC) in ``f / scale``
(``scale`` makes the focal plane span [-1, 1], which keeps a 9th-order fit well
conditioned). The series' constant term is the visit's pointing; its linear terms the
rotator angle and plate scale. The reference CCD's placement is held fixed (it fixes the
global translation and rotation the visit polynomials would otherwise share with the
CCDs; a rigid CCD has no scale, so no scale degeneracy remains).

Layout of the parameter vector: per visit ``2 * nt`` coefficients (xi then eta), then
per CCD ``x0, y0, t`` (arcsec, arcsec, rad).
"""
from __future__ import annotations

import logging

import numpy as np
from numpy.polynomial import chebyshev as C

from .astrometry_models import poly_terms

log = logging.getLogger("mosaic")


def chebyshev_basis_derivatives(u, v, order: int):
    """``T_i(u) T_j(v)`` (i + j <= order) and its d/du, d/dv, each of shape (n, nt)."""
    u = np.asarray(u, float)
    v = np.asarray(v, float)
    terms = poly_terms(order)
    tu, tv = C.chebvander(u, order), C.chebvander(v, order)
    du, dv = _cheb_derivatives(u, tu), _cheb_derivatives(v, tv)
    i, j = terms[:, 0], terms[:, 1]
    return tu[:, i] * tv[:, j], du[:, i] * tv[:, j], tu[:, i] * dv[:, j]


def _chebyshev_basis(u, v, order: int):
    """``T_i(u) T_j(v)`` (i + j <= order), shape (n, nt)."""
    terms = poly_terms(order)
    tu = C.chebvander(np.asarray(u, float), order)
    tv = C.chebvander(np.asarray(v, float), order)
    return tu[:, terms[:, 0]] * tv[:, terms[:, 1]]


def per_visit_product(B, coef, vis):
    """Row-wise ``B[i] @ coef[vis[i]]`` ((n, nt) x (n_visits, nt, k) -> (n, k)): one GEMM
    per run of equal visits (rows sorted by visit), else a gathered row-wise product."""
    n = len(vis)
    cut = np.flatnonzero(vis[1:] != vis[:-1]) + 1 if n else np.zeros(0, int)
    if len(cut) > 8 + n // 512:
        return np.einsum("nt,ntk->nk", B, coef[vis])
    bounds = np.r_[0, cut, n]
    out = np.empty((n, coef.shape[2]))
    for a, b in zip(bounds[:-1], bounds[1:]):
        out[a:b] = B[a:b] @ coef[vis[a]]
    return out


#: from this many rows on, the series and their derivatives are evaluated by a numba
#: kernel (one pass per row, no (rows x terms) temporaries besides the basis itself);
#: below, numpy (no numba start-up, ~1 s, for small fits)
NUMBA_ROWS = 20_000
_kernel = None


def _series_kernel():
    """The numba kernel of :func:`series`, compiled (or loaded from cache) on first use."""
    global _kernel
    if _kernel is None:
        from numba import njit

        @njit(cache=True)
        def kernel(u, v, vis, coef, ti, tj, order, B, xe, d):
            n, nt = u.shape[0], ti.shape[0]
            want_b, want_d = B.shape[0] > 0, d.shape[0] > 0
            tu = np.empty(order + 1)
            tv = np.empty(order + 1)
            du = np.zeros(order + 1)
            dv = np.zeros(order + 1)
            for i in range(n):
                tu[0], tv[0] = 1.0, 1.0
                if order > 0:
                    tu[1], tv[1] = u[i], v[i]
                    du[1], dv[1] = 1.0, 1.0
                for k in range(1, order):
                    tu[k + 1] = 2 * u[i] * tu[k] - tu[k - 1]
                    tv[k + 1] = 2 * v[i] * tv[k] - tv[k - 1]
                    du[k + 1] = 2 * tu[k] + 2 * u[i] * du[k] - du[k - 1]
                    dv[k + 1] = 2 * tv[k] + 2 * v[i] * dv[k] - dv[k - 1]
                c = coef[vis[i]]
                sx = se = 0.0
                ux = ue = vx = ve = 0.0
                for t in range(nt):
                    b = tu[ti[t]] * tv[tj[t]]
                    if want_b:
                        B[i, t] = b
                    sx += b * c[t, 0]
                    se += b * c[t, 1]
                    if want_d:
                        bu = du[ti[t]] * tv[tj[t]]
                        bv = tu[ti[t]] * dv[tj[t]]
                        ux += bu * c[t, 0]
                        ue += bu * c[t, 1]
                        vx += bv * c[t, 0]
                        ve += bv * c[t, 1]
                xe[i, 0], xe[i, 1] = sx, se
                if want_d:
                    d[i, 0], d[i, 1], d[i, 2], d[i, 3] = ux, ue, vx, ve

        _kernel = kernel
    return _kernel


def series(u, v, vis, coef, order: int, basis: bool = False, derivatives: bool = False,
           use_numba: bool | None = None):
    """Per-visit Chebyshev series (xi, eta) at scaled focal-plane points.

    Parameters
    ----------
    u, v : ndarray (n,)
        Focal-plane coordinates over the series' scale.
    vis : ndarray of int (n,)
        Visit of every point.
    coef : ndarray (n_visits, nt, 2)
        Series coefficients of every visit (xi, eta columns).
    basis, derivatives : bool
        Also return the basis ``T_i(u) T_j(v)`` (n, nt), and the derivatives
        ``d(xi, eta)/du`` and ``d(xi, eta)/dv`` (each (n, 2)).
    use_numba : bool, optional
        Force the numba kernel or numpy; default: numba from ``NUMBA_ROWS`` rows on.

    Returns
    -------
    xe : (n, 2); B : (n, nt) or None; du, dv : (n, 2) or None
    """
    u, v = np.ascontiguousarray(u, float), np.ascontiguousarray(v, float)
    n = len(u)
    if use_numba is None:
        use_numba = n >= NUMBA_ROWS
    if not use_numba:
        if derivatives:
            B, dU, dV = chebyshev_basis_derivatives(u, v, order)
            du, dv = per_visit_product(dU, coef, vis), per_visit_product(dV, coef, vis)
        else:
            B, du, dv = _chebyshev_basis(u, v, order), None, None
        return per_visit_product(B, coef, vis), (B if basis else None), du, dv
    terms = poly_terms(order)
    B = np.empty((n if basis else 0, len(terms)))
    xe = np.empty((n, 2))
    d = np.empty((n if derivatives else 0, 4))
    _series_kernel()(u, v, np.ascontiguousarray(vis, np.int64), np.ascontiguousarray(coef),
                     np.ascontiguousarray(terms[:, 0]), np.ascontiguousarray(terms[:, 1]),
                     order, B, xe, d)
    return (xe, B if basis else None, d[:, :2] if derivatives else None,
            d[:, 2:] if derivatives else None)


def _cheb_derivatives(x, t):
    """d T_n / dx from the recurrence T'_{n+1} = 2 T_n + 2 x T'_n - T'_{n-1}."""
    d = np.zeros_like(t)
    if t.shape[1] > 1:
        d[:, 1] = 1.0
    for n in range(1, t.shape[1] - 1):
        d[:, n + 1] = 2 * t[:, n] + 2 * x * d[:, n] - d[:, n - 1]
    return d


def supported_order(order: int, n_per_visit, min_per_parameter: float, what: str,
                    params_per_term: int = 1) -> int:
    """Highest order <= ``order`` whose per-visit terms the data can constrain.

    Every visit needs at least ``min_per_parameter`` measurements per polynomial term
    (``n_per_visit``: measurements of each visit). A lower order than asked is logged as
    a warning: a 9th-order polynomial fitted to a few hundred stars follows their noise
    between the stars.
    """
    n_min = int(np.min(n_per_visit)) if len(n_per_visit) else 0
    chosen = order
    while chosen > 1 and n_min < min_per_parameter * len(poly_terms(chosen)):
        chosen -= 1
    if chosen < order:
        log.warning("%s: order %d needs %d measurements per visit (%.3g per term), the "
                    "poorest visit has %d; fitting order %d instead", what, order,
                    int(np.ceil(min_per_parameter * len(poly_terms(order)))),
                    min_per_parameter, n_min, chosen)
    return chosen


class MosaicAstrometryModel:
    """Rigid per-CCD placement shared by visits ∘ per-visit focal-plane Chebyshev series.

    Parameters
    ----------
    image_visit_idx, image_ccd_idx : ndarray of int
        Visit and CCD index of every CCD image.
    n_visits, n_ccds : int
    half_size : ndarray, shape (n_ccds, 2)
        Half width and height of each CCD on the focal plane (arcsec): ``hx``, ``hy``;
        ``hy < 0`` when the pixel grid is mirrored on the sky (the usual parity).
    order : int
        Total order of the per-visit series.
    reference_ccd : int
        CCD index whose placement is held fixed.
    """

    name = "mosaic"

    def __init__(self, image_visit_idx, image_ccd_idx, n_visits: int, n_ccds: int,
                 half_size, order: int = 9, reference_ccd: int = 0):
        self.image_visit = np.asarray(image_visit_idx)
        self.image_ccd = np.asarray(image_ccd_idx)
        self.n_visits, self.n_ccds = n_visits, n_ccds
        self.half_size = np.asarray(half_size, float).reshape(n_ccds, 2)
        self.order = order
        self.nt = len(poly_terms(order))
        self.ccd_base = n_visits * 2 * self.nt
        self.n_params = self.ccd_base + 3 * n_ccds
        self.reference_ccd = reference_ccd
        self.fixed = np.zeros(self.n_params, bool)
        r = self.ccd_base + 3 * reference_ccd
        self.fixed[r:r + 3] = True
        self.scale = 1.0

    def initialize(self, img, u, v, xi, eta, affine, scale: float) -> np.ndarray:
        """Start from a per-CCD affine layout (``ConstrainedAstrometryModel``'s ``a0..a5``
        of each CCD, focal plane in arcsec) and header positions on a grid.

        Each CCD's placement is the affine map's centre and the direction of its u axis;
        the visit series are then fitted to the grid by linear least squares.
        """
        a = np.asarray(affine, float).reshape(self.n_ccds, 6)
        theta = np.zeros(self.n_params)
        cb = theta[self.ccd_base:].reshape(self.n_ccds, 3)
        cb[:, 0], cb[:, 1] = a[:, 0], a[:, 3]
        cb[:, 2] = np.arctan2(a[:, 4], a[:, 1])
        self.scale = float(scale)
        fx, fy = self._focal(theta, self.image_ccd[img], u, v)
        vis = self.image_visit[img]
        for k in np.unique(vis):
            s = vis == k
            B = _chebyshev_basis(fx[s] / self.scale, fy[s] / self.scale, self.order)
            c = np.linalg.lstsq(B, np.column_stack([xi[s], eta[s]]), rcond=None)[0]
            base = k * 2 * self.nt
            theta[base:base + self.nt] = c[:, 0]
            theta[base + self.nt:base + 2 * self.nt] = c[:, 1]
        return theta

    # --- the two maps -----------------------------------------------------------------
    def placement(self, theta):
        """Per-CCD ``(x0, y0, t)``: centre (arcsec) and rotation (rad), shape (n_ccds, 3)."""
        return theta[self.ccd_base:].reshape(self.n_ccds, 3)

    def _focal(self, theta, ccd, u, v):
        p = self.placement(theta)[ccd]
        U = np.asarray(u, float) * self.half_size[ccd, 0]
        V = np.asarray(v, float) * self.half_size[ccd, 1]
        c, s = np.cos(p[:, 2]), np.sin(p[:, 2])
        return p[:, 0] + c * U - s * V, p[:, 1] + s * U + c * V

    def focal_plane(self, theta, img, u, v):
        """Focal-plane coordinates (arcsec) of normalised CCD coordinates of images."""
        img = np.broadcast_to(img, np.shape(u))
        return self._focal(theta, self.image_ccd[img], u, v)

    def sky_from_focal(self, theta, visit_index: int, fx, fy):
        """Tangent-plane (xi, eta) arcsec of focal-plane points (arcsec) in one visit."""
        fx, fy = np.asarray(fx, float), np.asarray(fy, float)
        B = _chebyshev_basis(fx.ravel() / self.scale, fy.ravel() / self.scale, self.order)
        base = visit_index * 2 * self.nt
        return ((B @ theta[base:base + self.nt]).reshape(fx.shape),
                (B @ theta[base + self.nt:base + 2 * self.nt]).reshape(fx.shape))

    def visit_coefficients(self, theta, visit_index: int) -> dict:
        """The visit's series coefficients (xi, eta) and pointing (constant terms)."""
        base = visit_index * 2 * self.nt
        cx, ce = theta[base:base + self.nt], theta[base + self.nt:base + 2 * self.nt]
        return {"xi": cx.copy(), "eta": ce.copy(), "pointing": np.array([cx[0], ce[0]])}

    # --- for the fitter -----------------------------------------------------------------
    #: rows per chunk of the evaluations: bounds the (rows x terms) temporaries
    CHUNK = 1 << 16

    def evaluate(self, theta, img, u, v):
        """Tangent-plane (xi, eta) arcsec of normalised CCD coordinates of images ``img``."""
        u = np.asarray(u, float)
        img = np.broadcast_to(img, u.shape).ravel()
        uf, vf = u.ravel(), np.broadcast_to(np.asarray(v, float), u.shape).ravel()
        out = np.empty((uf.size, 2))
        coef = self._coefficients(theta)
        numba = uf.size >= NUMBA_ROWS
        for a in range(0, uf.size, self.CHUNK):
            s = slice(a, a + self.CHUNK)
            fx, fy = self._focal(theta, self.image_ccd[img[s]], uf[s], vf[s])
            out[s] = series(fx / self.scale, fy / self.scale, self.image_visit[img[s]], coef,
                            self.order, use_numba=numba)[0]
        return out[:, 0].reshape(u.shape), out[:, 1].reshape(u.shape)

    def _coefficients(self, theta):
        """Per-visit series as (n_visits, nt, 2) matrices (xi, eta columns)."""
        return np.ascontiguousarray(
            theta[:self.ccd_base].reshape(self.n_visits, 2, self.nt).transpose(0, 2, 1))

    def block_derivatives(self, theta, img, u, v):
        """Values and derivatives in the per-image block form of :mod:`.mosaic_solver`.

        Returns ``xi, eta`` (n,), ``B`` (n, nt): the derivative of xi (of eta) with
        respect to the visit's xi (eta) coefficients, the same basis for both, and
        ``dxa, dea`` (n, 3): the derivatives of xi and eta with respect to the CCD's
        ``x0, y0, t``. The columns are the visit's ``2 * nt`` block
        (``visit * 2 * nt``, xi then eta) and ``ccd_base + 3 * ccd``. Rows sorted by
        visit are fastest (one matrix-vector product per visit).
        """
        img = np.asarray(img)
        n = img.size
        vis, ccd = self.image_visit[img], self.image_ccd[img]
        coef = self._coefficients(theta)
        xe = np.empty((n, 2))
        B = np.empty((n, self.nt))
        dxa, dea = np.empty((n, 3)), np.empty((n, 3))
        place = self.placement(theta)
        numba = n >= NUMBA_ROWS
        for a in range(0, n, self.CHUNK):
            s = slice(a, a + self.CHUNK)
            fx, fy = self._focal(theta, ccd[s], u[s], v[s])
            xe[s], B[s], du, dv = series(fx / self.scale, fy / self.scale, vis[s], coef,
                                         self.order, True, True, numba)
            du /= self.scale  # d(xi, eta)/d fx
            dv /= self.scale  # d(xi, eta)/d fy
            p = place[ccd[s]]
            # d f / d t: rotation about the CCD centre
            dfx_dt, dfy_dt = -(fy - p[:, 1]), fx - p[:, 0]
            dxa[s] = np.column_stack([du[:, 0], dv[:, 0],
                                      du[:, 0] * dfx_dt + dv[:, 0] * dfy_dt])
            dea[s] = np.column_stack([du[:, 1], dv[:, 1],
                                      du[:, 1] * dfx_dt + dv[:, 1] * dfy_dt])
        return xe[:, 0].copy(), xe[:, 1].copy(), B, dxa, dea

    def derivatives(self, theta, img, u, v):
        """xi, eta and their parameter columns/derivatives ``(ix, dx, ie, de)`` as
        (n, nt + 3) arrays (the generic row form of :mod:`.fitter`)."""
        img = np.asarray(img)
        vis, ccd = self.image_visit[img], self.image_ccd[img]
        xi, eta, B, dxa, dea = self.block_derivatives(theta, img, np.asarray(u, float),
                                                      np.asarray(v, float))
        pbase = vis[:, None] * 2 * self.nt + np.arange(self.nt)[None, :]
        cbase = self.ccd_base + 3 * ccd[:, None] + np.arange(3)[None, :]
        return (xi, eta, np.concatenate([pbase, cbase], axis=1),
                np.concatenate([B, dxa], axis=1),
                np.concatenate([pbase + self.nt, cbase], axis=1),
                np.concatenate([B, dea], axis=1))
