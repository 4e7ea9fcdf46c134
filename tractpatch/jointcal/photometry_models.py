"""Photometric models: nJy per count at a CCD position.

- :class:`SimplePhotometryModel`: one constant per CCD per visit.
- :class:`ConstrainedPhotometryModel`: a per-CCD constant times a per-visit Chebyshev
  (total order ``order``) over the focal plane, ``calib = k_c * T_v(fx/s, fy/s)``; the
  global scale degeneracy is fixed by ``k = 1`` for the reference CCD. Because the
  CCD -> focal-plane map is affine, each CCD's calibration is exactly a 2-D polynomial
  of the same order in CCD pixels (:mod:`.outputs` converts it to a PhotoCalib).

``derivatives(theta, img, u, v)`` returns the calibration and its parameter columns and
derivatives as (n, m) arrays for :mod:`.fitter`.
"""
from __future__ import annotations

import numpy as np
from numpy.polynomial import chebyshev as C

from .astrometry_models import poly_terms


def chebyshev_basis(u, v, order: int) -> np.ndarray:
    """Basis ``T_i(u) T_j(v)``, ``i + j <= order``, shape (n, nt)."""
    terms = poly_terms(order)
    tu = C.chebvander(np.asarray(u, float), order)
    tv = C.chebvander(np.asarray(v, float), order)
    return tu[:, terms[:, 0]] * tv[:, terms[:, 1]]


class SimplePhotometryModel:
    """One calibration constant (nJy/count) per CCD image."""

    name = "simple"

    def __init__(self, n_images: int):
        self.n_params = n_images
        self.fixed = np.zeros(n_images, bool)

    def initialize(self, img, ratio) -> np.ndarray:
        """Start: the median reference/instrumental flux ratio (global where unknown)."""
        theta = np.full(self.n_params, np.nanmedian(ratio))
        for g in np.unique(img):
            r = ratio[img == g]
            r = r[np.isfinite(r)]
            if len(r):
                theta[g] = np.median(r)
        return theta

    def derivatives(self, theta, img, u, v):
        img = np.asarray(img)
        return theta[img], img[:, None], np.ones((len(img), 1))


class ConstrainedPhotometryModel:
    """Per-CCD constant × per-visit focal-plane Chebyshev.

    Layout: per visit ``nt`` Chebyshev coefficients, then one constant per CCD.
    ``focal(img, u, v)`` gives focal-plane coordinates (arcsec) and ``scale`` their
    normalisation (from the astrometric layout).
    """

    name = "constrained"

    def __init__(self, image_visit_idx, image_ccd_idx, n_visits, n_ccds, focal, scale,
                 order: int = 2, reference_ccd: int = 0):
        self.image_visit = np.asarray(image_visit_idx)
        self.image_ccd = np.asarray(image_ccd_idx)
        self.n_visits, self.n_ccds = n_visits, n_ccds
        self.order = order
        self.nt = len(poly_terms(order))
        self.ccd_base = n_visits * self.nt
        self.n_params = self.ccd_base + n_ccds
        self.focal = focal
        self.scale = scale
        self.fixed = np.zeros(self.n_params, bool)
        self.fixed[self.ccd_base + reference_ccd] = True

    def initialize(self, img, ratio) -> np.ndarray:
        theta = np.zeros(self.n_params)
        theta[self.ccd_base:] = 1.0
        vis = self.image_visit[np.asarray(img)]
        glob = np.nanmedian(ratio)
        for k in range(self.n_visits):
            r = ratio[vis == k]
            r = r[np.isfinite(r)]
            theta[k * self.nt] = np.median(r) if len(r) else glob
        return theta

    def derivatives(self, theta, img, u, v):
        img = np.asarray(img)
        vis = self.image_visit[img]
        ccd = self.image_ccd[img]
        fx, fy = self.focal(img, u, v)
        B = chebyshev_basis(fx / self.scale, fy / self.scale, self.order)
        pbase = vis[:, None] * self.nt + np.arange(self.nt)[None, :]
        T = (B * theta[pbase]).sum(axis=1)
        k = theta[self.ccd_base + ccd]
        idx = np.concatenate([pbase, (self.ccd_base + ccd)[:, None]], axis=1)
        val = np.concatenate([B * k[:, None], T[:, None]], axis=1)
        return k * T, idx, val
