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


def _affine_fits(img, u, v, tx, ty, n_images):
    """Least-squares ``t = c0 + c1 u + c2 v`` of every image at once: (n_images, 3, 2)
    for (tx, ty), from the per-image normal equations (bincounts), NaN where an image
    has no points."""
    basis = (np.ones_like(u), u, v)
    M = np.empty((n_images, 3, 3))
    R = np.empty((n_images, 3, 2))
    for a in range(3):
        for b in range(a, 3):
            M[:, a, b] = M[:, b, a] = np.bincount(img, basis[a] * basis[b], n_images)
        R[:, a, 0] = np.bincount(img, basis[a] * tx, n_images)
        R[:, a, 1] = np.bincount(img, basis[a] * ty, n_images)
    out = np.full((n_images, 3, 2), np.nan)
    ok = np.bincount(img, minlength=n_images) >= 3
    out[ok] = np.linalg.solve(M[ok], R[ok])
    return out


def ccd_layout(img, u, v, xi, eta, image_visit, image_ccd, n_visits: int, n_ccds: int):
    """The focal-plane layout from header positions ``(xi, eta)`` (arcsec) at normalised
    CCD coordinates ``(u, v)`` on a grid of every image ``img``: per-CCD affine
    ``a0..a5`` (n_ccds, 6), arcsec, the focal-plane scale, and the rotation of every
    visit (rad); the start of :class:`ConstrainedAstrometryModel` and of mosaic's model.

    The focal plane of a visit is its tangent-plane positions relative to the visit
    centre, de-rotated by the visit's mean CCD orientation; each CCD's affine map is the
    median over visits of its fit there. The per-image fits are done at once (one
    bincount per normal-matrix element): fitted image by image with a mask over the whole
    grid each, the 3120 images of 30 HSC visits took ~10 s.
    """
    n_images = len(image_visit)
    vis = image_visit[img]
    nvis = np.maximum(np.bincount(vis, None, n_visits), 1)
    cx, cy = np.bincount(vis, xi, n_visits) / nvis, np.bincount(vis, eta, n_visits) / nvis
    c = _affine_fits(img, u, v, xi, eta, n_images)
    has = np.isfinite(c[:, 0, 0])
    ang = np.arctan2(c[has, 1, 1], c[has, 1, 0])
    iv = image_visit[has]
    # rotator angle of each visit: the mean orientation of its CCDs' u axes on the sky
    # (cameras rotate between visits; the focal plane is the de-rotated frame)
    rot = np.arctan2(np.bincount(iv, np.sin(ang), n_visits),
                     np.bincount(iv, np.cos(ang), n_visits))
    rot -= np.arctan2(np.mean(np.sin(rot)), np.mean(np.cos(rot)))  # frame: the mean
    cr, sr = np.cos(rot[vis]), np.sin(rot[vis])
    dx, dy = xi - cx[vis], eta - cy[vis]
    fx, fy = cr * dx + sr * dy, -sr * dx + cr * dy
    f = _affine_fits(img, u, v, fx, fy, n_images)
    per_image = np.concatenate([f[:, :, 0], f[:, :, 1]], axis=1)   # (n_images, 6)
    affine = np.zeros((n_ccds, 6))
    for k in range(n_ccds):  # median over the visits of each CCD
        rows = per_image[has & (image_ccd == k)]
        if len(rows):
            affine[k] = np.median(rows, axis=0)
    return affine, float(np.max(np.abs(np.concatenate([fx, fy])))) or 1.0, rot



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
        """Layout from header positions (:func:`ccd_layout`), then per-visit polynomials
        reproducing them.

        The focal plane of a visit is its tangent-plane positions relative to the visit
        centre, de-rotated; each CCD's affine map is the median over visits of its fit
        there.
        """
        theta = np.zeros(self.n_params)
        vis = self.image_visit[img]
        ccd = self.image_ccd[img]
        affine, self.scale, self.visit_rotation = ccd_layout(
            img, u, v, xi, eta, self.image_visit, self.image_ccd, self.n_visits,
            self.n_ccds)
        theta[self.ccd_base:] = affine.ravel()
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
