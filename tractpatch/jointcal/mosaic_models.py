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
            B, _, _ = chebyshev_basis_derivatives(fx[s] / self.scale, fy[s] / self.scale,
                                                  self.order)
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
        B, _, _ = chebyshev_basis_derivatives(fx.ravel() / self.scale,
                                              fy.ravel() / self.scale, self.order)
        base = visit_index * 2 * self.nt
        return ((B @ theta[base:base + self.nt]).reshape(fx.shape),
                (B @ theta[base + self.nt:base + 2 * self.nt]).reshape(fx.shape))

    def visit_coefficients(self, theta, visit_index: int) -> dict:
        """The visit's series coefficients (xi, eta) and pointing (constant terms)."""
        base = visit_index * 2 * self.nt
        cx, ce = theta[base:base + self.nt], theta[base + self.nt:base + 2 * self.nt]
        return {"xi": cx.copy(), "eta": ce.copy(), "pointing": np.array([cx[0], ce[0]])}

    # --- for the fitter -----------------------------------------------------------------
    def evaluate(self, theta, img, u, v):
        """Tangent-plane (xi, eta) arcsec of normalised CCD coordinates of images ``img``."""
        xi, eta, *_ = self.derivatives(theta, np.broadcast_to(img, np.shape(u)), u, v)
        return xi, eta

    def derivatives(self, theta, img, u, v):
        """xi, eta and their parameter columns/derivatives ``(ix, dx, ie, de)``."""
        img = np.asarray(img)
        vis, ccd = self.image_visit[img], self.image_ccd[img]
        fx, fy = self._focal(theta, ccd, u, v)
        B, dU, dV = chebyshev_basis_derivatives(fx / self.scale, fy / self.scale,
                                                self.order)
        pbase = vis[:, None] * 2 * self.nt + np.arange(self.nt)[None, :]
        px, pe = theta[pbase], theta[pbase + self.nt]
        xi, eta = (B * px).sum(axis=1), (B * pe).sum(axis=1)
        dxi_fx, dxi_fy = (dU * px).sum(axis=1) / self.scale, (dV * px).sum(axis=1) / self.scale
        de_fx, de_fy = (dU * pe).sum(axis=1) / self.scale, (dV * pe).sum(axis=1) / self.scale
        p = self.placement(theta)[ccd]
        # d f / d t: rotation about the CCD centre
        dfx_dt, dfy_dt = -(fy - p[:, 1]), fx - p[:, 0]
        dxa = np.column_stack([dxi_fx, dxi_fy, dxi_fx * dfx_dt + dxi_fy * dfy_dt])
        dea = np.column_stack([de_fx, de_fy, de_fx * dfx_dt + de_fy * dfy_dt])
        cbase = self.ccd_base + 3 * ccd[:, None] + np.arange(3)[None, :]
        return (xi, eta, np.concatenate([pbase, cbase], axis=1),
                np.concatenate([B, dxa], axis=1),
                np.concatenate([pbase + self.nt, cbase], axis=1),
                np.concatenate([B, dea], axis=1))
