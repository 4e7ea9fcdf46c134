"""Astrometric models: CCD pixels -> tangent-plane standard coordinates (arcsec).

CCD pixels enter as normalised coordinates ``u = (x - nx/2)/(nx/2)``, ``v = (y -
ny/2)/(ny/2)`` in [-1, 1], which keeps the normal matrix well conditioned.

- :class:`SimpleAstrometryModel`: an independent polynomial (total order ``order``) per
  CCD per visit.
- :class:`ConstrainedAstrometryModel`: a per-CCD affine map into the focal plane, shared
  by all visits, composed with a per-visit polynomial (order ``order``) from the focal
  plane to the sky. The global affine degeneracy between the two is fixed by holding the
  reference CCD's map at its header value. The focal-plane layout comes from the header
  WCSs (as SCAMP does), so any camera works without a description.

Parameters are one flat float64 vector; ``derivatives`` gives, per measurement, the
columns and derivatives of xi and eta as (n, m) arrays for :mod:`.fitter`.
"""
from __future__ import annotations

import numpy as np

from .threads import blas_single_threaded


def poly_terms(order: int) -> np.ndarray:
    """Exponents ``(i, j)`` of the monomials ``u^i v^j`` with ``i + j <= order``."""
    return np.array([(i, t - i) for t in range(order + 1) for i in range(t, -1, -1)])


def monomials(u, v, order: int, derivatives: bool = False):
    """Monomial basis (n, nt) at ``(u, v)``; with ``derivatives`` also d/du and d/dv.

    Built column by column from running powers (no fancy indexing of large arrays).
    """
    terms = poly_terms(order)
    u = np.asarray(u, float)
    v = np.asarray(v, float)
    pu = [np.ones_like(u)]
    pv = [np.ones_like(v)]
    for _ in range(order):
        pu.append(pu[-1] * u)
        pv.append(pv[-1] * v)
    n, nt = len(u), len(terms)
    B = np.empty((n, nt))
    for t, (i, j) in enumerate(terms):
        np.multiply(pu[i], pv[j], out=B[:, t])
    if not derivatives:
        return B
    du = np.zeros((n, nt))
    dv = np.zeros((n, nt))
    for t, (i, j) in enumerate(terms):
        if i > 0:
            np.multiply(pu[i - 1], pv[j], out=du[:, t])
            du[:, t] *= i
        if j > 0:
            np.multiply(pu[i], pv[j - 1], out=dv[:, t])
            dv[:, t] *= j
    return B, du, dv


def _lstsq_poly(u, v, z, order):
    B = monomials(u, v, order)
    return np.linalg.lstsq(B, z, rcond=None)[0]


class SimpleAstrometryModel:
    """One polynomial of total order ``order`` per CCD image (visit, ccd)."""

    name = "simple"

    def __init__(self, image_visit, image_ccd, order: int = 3):
        self.image_visit = np.asarray(image_visit)
        self.image_ccd = np.asarray(image_ccd)
        self.order = order
        self.nt = len(poly_terms(order))
        self.n_params = len(self.image_visit) * 2 * self.nt
        self.fixed = np.zeros(self.n_params, bool)

    @blas_single_threaded  # small least-squares fits: BLAS threads only contend
    def initialize(self, img, u, v, xi, eta) -> np.ndarray:
        """Parameters reproducing tangent-plane positions ``(xi, eta)`` at grid points."""
        theta = np.zeros(self.n_params)
        for g in np.unique(img):
            s = img == g
            c = _lstsq_poly(u[s], v[s], np.column_stack([xi[s], eta[s]]), self.order)
            base = g * 2 * self.nt
            theta[base:base + self.nt] = c[:, 0]
            theta[base + self.nt:base + 2 * self.nt] = c[:, 1]
        return theta

    def evaluate(self, theta, img, u, v):
        """Tangent-plane (xi, eta) arcsec of normalised CCD coordinates of images ``img``."""
        xi, eta, *_ = self.derivatives(theta, np.broadcast_to(img, np.shape(u)), u, v)
        return xi, eta

    def derivatives(self, theta, img, u, v):
        """xi, eta and their parameter columns/derivatives ``(ix, dx, ie, de)``."""
        B = monomials(u, v, self.order)
        base = np.asarray(img)[:, None] * 2 * self.nt + np.arange(self.nt)[None, :]
        xi = (B * theta[base]).sum(axis=1)
        eta = (B * theta[base + self.nt]).sum(axis=1)
        return xi, eta, base, B, base + self.nt, B


class ConstrainedAstrometryModel:
    """Per-CCD affine map to the focal plane ∘ per-visit polynomial to the sky.

    Parameter layout: per visit ``2 * nt`` polynomial coefficients (xi then eta), then
    per CCD 6 affine coefficients ``fx = a0 + a1 u + a2 v``, ``fy = a3 + a4 u + a5 v``
    (focal plane in arcsec; the polynomial variable is ``f / scale``).
    """

    name = "constrained"

    def __init__(self, image_visit_idx, image_ccd_idx, n_visits: int, n_ccds: int,
                 order: int = 5, reference_ccd: int = 0):
        self.image_visit = np.asarray(image_visit_idx)
        self.image_ccd = np.asarray(image_ccd_idx)
        self.n_visits, self.n_ccds = n_visits, n_ccds
        self.order = order
        self.nt = len(poly_terms(order))
        self.ccd_base = n_visits * 2 * self.nt
        self.n_params = self.ccd_base + 6 * n_ccds
        self.reference_ccd = reference_ccd
        self.fixed = np.zeros(self.n_params, bool)
        self.fixed[self.ccd_base + 6 * reference_ccd:self.ccd_base + 6 * reference_ccd + 6] \
            = True
        self.scale = 1.0

    # --- layout and start ---------------------------------------------------------
    @blas_single_threaded  # small least-squares fits: BLAS threads only contend
    def initialize(self, img, u, v, xi, eta) -> np.ndarray:
        """Layout from header positions, then per-visit polynomials reproducing them.

        The focal plane of a visit is its tangent-plane positions relative to the visit
        centre; each CCD's affine map is the median over visits of its fit there.
        """
        theta = np.zeros(self.n_params)
        vis = self.image_visit[img]
        ccd = self.image_ccd[img]
        cx = np.bincount(vis, xi, self.n_visits) / np.maximum(np.bincount(vis, None,
                                                                          self.n_visits), 1)
        cy = np.bincount(vis, eta, self.n_visits) / np.maximum(np.bincount(vis, None,
                                                                           self.n_visits), 1)
        A = np.column_stack([np.ones_like(u), u, v])
        # rotator angle of each visit: mean orientation of its CCDs' u axes on the sky
        # (cameras rotate between visits; the focal plane is the de-rotated frame)
        fits = {}
        for g in np.unique(img):
            s = img == g
            fits[g] = np.linalg.lstsq(A[s], np.column_stack([xi[s], eta[s]]), rcond=None)[0]
        ang = np.zeros(len(self.image_visit))
        for g, c in fits.items():
            ang[g] = np.arctan2(c[1, 1], c[1, 0])
        rot = np.zeros(self.n_visits)
        for k in range(self.n_visits):
            gs = [g for g in fits if self.image_visit[g] == k]
            if gs:
                rot[k] = np.angle(np.mean(np.exp(1j * ang[gs])))
        rot -= np.angle(np.mean(np.exp(1j * rot)))  # focal-plane frame: the mean orientation
        self.visit_rotation = rot
        cr, sr = np.cos(rot[vis]), np.sin(rot[vis])
        dx, dy = xi - cx[vis], eta - cy[vis]
        fx, fy = cr * dx + sr * dy, -sr * dx + cr * dy
        per_ccd: dict[int, list] = {}
        for g in np.unique(img):
            s = img == g
            c = np.linalg.lstsq(A[s], np.column_stack([fx[s], fy[s]]), rcond=None)[0]
            per_ccd.setdefault(int(self.image_ccd[g]), []).append(
                np.concatenate([c[:, 0], c[:, 1]]))
        for c, lst in per_ccd.items():
            theta[self.ccd_base + 6 * c:self.ccd_base + 6 * c + 6] = np.median(lst, axis=0)
        self.scale = float(np.max(np.abs(np.concatenate([fx, fy])))) or 1.0
        fxm, fym = self._focal(theta, ccd, u, v)
        for k in np.unique(vis):
            s = vis == k
            c = _lstsq_poly(fxm[s] / self.scale, fym[s] / self.scale,
                            np.column_stack([xi[s], eta[s]]), self.order)
            base = k * 2 * self.nt
            theta[base:base + self.nt] = c[:, 0]
            theta[base + self.nt:base + 2 * self.nt] = c[:, 1]
        return theta

    def _focal(self, theta, ccd, u, v):
        a = theta[self.ccd_base:].reshape(self.n_ccds, 6)[ccd]
        return (a[:, 0] + a[:, 1] * u + a[:, 2] * v, a[:, 3] + a[:, 4] * u + a[:, 5] * v)

    def focal_plane(self, theta, img, u, v):
        """Focal-plane coordinates (arcsec) of normalised CCD coordinates."""
        img = np.broadcast_to(img, np.shape(u))
        return self._focal(theta, self.image_ccd[img], np.asarray(u, float),
                           np.asarray(v, float))

    def sky_from_focal(self, theta, visit_index: int, fx, fy):
        """Tangent-plane (xi, eta) arcsec of focal-plane points (arcsec) in one visit."""
        fx, fy = np.asarray(fx, float), np.asarray(fy, float)
        B = monomials(fx.ravel() / self.scale, fy.ravel() / self.scale, self.order)
        base = visit_index * 2 * self.nt
        return ((B @ theta[base:base + self.nt]).reshape(fx.shape),
                (B @ theta[base + self.nt:base + 2 * self.nt]).reshape(fx.shape))

    def visit_coefficients(self, theta, visit_index: int) -> dict:
        """The visit's polynomial coefficients (xi, eta)."""
        base = visit_index * 2 * self.nt
        return {"xi": theta[base:base + self.nt].copy(),
                "eta": theta[base + self.nt:base + 2 * self.nt].copy()}

    # --- evaluation ---------------------------------------------------------------
    def evaluate(self, theta, img, u, v):
        """Tangent-plane (xi, eta) arcsec of normalised CCD coordinates of images ``img``."""
        img = np.broadcast_to(img, np.shape(u))
        fx, fy = self._focal(theta, self.image_ccd[img], np.asarray(u, float),
                             np.asarray(v, float))
        B = monomials(fx / self.scale, fy / self.scale, self.order)
        pbase = self.image_visit[img][:, None] * 2 * self.nt + np.arange(self.nt)[None, :]
        return (B * theta[pbase]).sum(axis=1), (B * theta[pbase + self.nt]).sum(axis=1)

    def derivatives(self, theta, img, u, v):
        """xi, eta and their parameter columns/derivatives ``(ix, dx, ie, de)``."""
        img = np.asarray(img)
        vis = self.image_visit[img]
        ccd = self.image_ccd[img]
        u = np.asarray(u, float)
        v = np.asarray(v, float)
        fx, fy = self._focal(theta, ccd, u, v)
        B, dU, dV = monomials(fx / self.scale, fy / self.scale, self.order, True)
        pbase = vis[:, None] * 2 * self.nt + np.arange(self.nt)[None, :]
        px, pe = theta[pbase], theta[pbase + self.nt]
        xi = (B * px).sum(axis=1)
        eta = (B * pe).sum(axis=1)
        dxi_dfx = (dU * px).sum(axis=1) / self.scale
        dxi_dfy = (dV * px).sum(axis=1) / self.scale
        deta_dfx = (dU * pe).sum(axis=1) / self.scale
        deta_dfy = (dV * pe).sum(axis=1) / self.scale
        one = np.ones_like(u)
        cbase = self.ccd_base + 6 * ccd[:, None] + np.arange(6)[None, :]
        basis = np.column_stack([one, u, v])
        dxa = np.column_stack([dxi_dfx[:, None] * basis, dxi_dfy[:, None] * basis])
        dea = np.column_stack([deta_dfx[:, None] * basis, deta_dfy[:, None] * basis])
        ix = np.concatenate([pbase, cbase], axis=1)
        ie = np.concatenate([pbase + self.nt, cbase], axis=1)
        return xi, eta, ix, np.concatenate([B, dxa], axis=1), ie, \
            np.concatenate([B, dea], axis=1)
