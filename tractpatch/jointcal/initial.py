"""Robust start from the header WCSs: per-visit pointing offset and rotation.

Real headers can be off by ~10 arcsec in pointing and ~0.1 deg in rotation, far more than
the association radius. As SCAMP's pattern matching does, each visit's offset is found
before the fine fit: for a small grid of trial rotations about the visit centre, every
detection–reference pair within the search radius votes for its offset in a 2-D
histogram; the rotation whose histogram has the sharpest peak wins, and the shift and
rotation are then refined by least squares on the pairs near the peak.
A header without the optical distortion is still off by its full amount far from the
axis (HSC: ~10 arcsec at 0.75 deg): a per-visit polynomial grown outwards from the centre
(:func:`fit_visit_distortion`) takes it out before the per-CCD affine touch-up
(:func:`refine_image`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..errors import DataQualityError
from .tangent import project
from .threads import blas_single_threaded

log = logging.getLogger("jointcal")


@dataclass
class VisitOffset:
    """Correction of one visit's header positions: rotate by ``rotation_deg`` about
    ``center`` (arcsec, tangent plane), then shift by ``(shift_xi, shift_eta)`` arcsec."""

    visit: int
    shift_xi: float
    shift_eta: float
    rotation_deg: float
    center: tuple[float, float]
    n_matched: int
    rms_arcsec: float

    def apply(self, xi, eta):
        """Corrected tangent-plane positions."""
        th = np.radians(self.rotation_deg)
        c, s = np.cos(th), np.sin(th)
        dx, dy = np.asarray(xi) - self.center[0], np.asarray(eta) - self.center[1]
        return (c * dx - s * dy + self.center[0] + self.shift_xi,
                s * dx + c * dy + self.center[1] + self.shift_eta)


def header_positions(det, images, image_index, ra0: float, dec0: float):
    """Tangent-plane positions (arcsec) of detections through their header WCS.

    Parameters
    ----------
    det : Detections
    images : list of CcdImage
    image_index : ndarray
        Index into ``images`` of each detection.
    ra0, dec0 : float
        Tangent point (deg).
    """
    xi = np.empty(len(det))
    eta = np.empty(len(det))
    order = np.argsort(image_index, kind="stable")
    bounds = np.searchsorted(image_index[order], np.arange(len(images) + 1))
    for g, img in enumerate(images):  # one vectorised WCS call per CCD
        sel = order[bounds[g]:bounds[g + 1]]
        if len(sel):
            ra, dec = img.wcs.all_pix2world(det.x[sel], det.y[sel], 0)
            xi[sel], eta[sel] = project(ra, dec, ra0, dec0)
    return xi, eta


def _rotate(xi, eta, center, deg):
    th = np.radians(deg)
    c, s = np.cos(th), np.sin(th)
    dx, dy = xi - center[0], eta - center[1]
    return c * dx - s * dy + center[0], s * dx + c * dy + center[1]


@blas_single_threaded  # small least-squares fits
def find_visit_offset(visit: int, xi, eta, ref_xi, ref_eta, max_offset: float = 15.0,
                      max_rotation: float = 0.15, rotation_step: float = 0.02,
                      bin_size: float = 1.0, min_matches: int = 5) -> VisitOffset:
    """Find the shift and rotation that bring one visit's detections onto the references.

    Parameters
    ----------
    visit : int
        Visit number (for messages).
    xi, eta : ndarray
        Header tangent-plane positions (arcsec) of the visit's (brightest) detections.
    ref_xi, ref_eta : ndarray
        Reference positions (arcsec) at the visit's epoch.
    max_offset : float
        Largest pointing error searched (arcsec).
    max_rotation, rotation_step : float
        Trial rotations from ``-max_rotation`` to ``+max_rotation`` (deg).
    bin_size : float
        Offset histogram bin (arcsec).

    Raises
    ------
    DataQualityError
        No significant offset peak (too few stars, wrong field or refcat).
    """
    center = (float(np.mean(xi)), float(np.mean(eta)))
    ref_tree = cKDTree(np.column_stack([ref_xi, ref_eta]))
    nb = int(np.ceil(max_offset / bin_size))
    edges = np.arange(-nb - 0.5, nb + 1.5) * bin_size
    best = None
    n_rot = int(round(max_rotation / rotation_step))
    for k in range(-n_rot, n_rot + 1):
        rot = k * rotation_step
        rx, ry = _rotate(xi, eta, center, rot)
        pairs = cKDTree(np.column_stack([rx, ry])).sparse_distance_matrix(
            ref_tree, max_offset * 1.42, output_type="ndarray")
        if len(pairs) == 0:
            continue
        i, j = pairs["i"], pairs["j"]
        h, _, _ = np.histogram2d(ref_xi[j] - rx[i], ref_eta[j] - ry[i], bins=[edges, edges])
        # a 2x2 box sum keeps a peak split over bin edges whole
        h2 = h[:-1, :-1] + h[1:, :-1] + h[:-1, 1:] + h[1:, 1:]
        p = np.unravel_index(np.argmax(h2), h2.shape)
        peak = h2[p]
        if best is None or peak > best[0]:
            centre_off = (edges[p[0] + 1], edges[p[1] + 1])
            best = (peak, rot, centre_off, np.median(h2[h2 > 0]) if np.any(h2 > 0) else 0)
    if best is None or best[0] < min_matches or best[0] < 5 * max(best[3], 1):
        raise DataQualityError(
            f"visit {visit}: no significant match of its detections to the reference "
            f"catalog within {max_offset} arcsec and {max_rotation} deg; check the "
            "header WCS, the reference catalog and initialOffsetMax")
    _, rot, (sx, sy), _ = best
    # refine shift and small rotation by least squares on the pairs near the peak
    rot_total, shift = rot, np.array([sx, sy])
    for radius in (2.5 * bin_size, 1.0 * bin_size, 0.5 * bin_size):
        rx, ry = _rotate(xi, eta, center, rot_total)
        px, py = rx + shift[0], ry + shift[1]
        d, j = ref_tree.query(np.column_stack([px, py]), distance_upper_bound=radius)
        ok = np.isfinite(d)
        if ok.sum() < min_matches:
            break
        dx, dy = rx[ok] - center[0], ry[ok] - center[1]
        # ref - p ~ s + theta * (-dy, dx)
        a = np.zeros((2 * ok.sum(), 3))
        a[0::2, 0] = 1
        a[1::2, 1] = 1
        a[0::2, 2] = -dy
        a[1::2, 2] = dx
        b = np.empty(2 * ok.sum())
        b[0::2] = ref_xi[j[ok]] - rx[ok]
        b[1::2] = ref_eta[j[ok]] - ry[ok]
        sol, *_ = np.linalg.lstsq(a, b, rcond=None)
        shift = sol[:2]
        rot_total += np.degrees(sol[2])
    rx, ry = _rotate(xi, eta, center, rot_total)
    d, j = ref_tree.query(np.column_stack([rx + shift[0], ry + shift[1]]),
                          distance_upper_bound=bin_size)
    ok = np.isfinite(d)
    rms = float(np.sqrt(np.mean(d[ok] ** 2))) if ok.any() else np.nan
    return VisitOffset(visit, float(shift[0]), float(shift[1]), float(rot_total), center,
                       int(ok.sum()), rms)


@dataclass
class ImageCorrection:
    """Affine correction of one CCD image's header positions after the visit offset:
    ``p + c + M (p - centre)`` (arcsec), absorbing header distortion errors of a few
    arcsec that the association radius would not tolerate."""

    centre: tuple[float, float]
    shift: tuple[float, float]
    matrix: tuple[tuple[float, float], tuple[float, float]]
    n_matched: int

    def apply(self, xi, eta):
        dx, dy = np.asarray(xi) - self.centre[0], np.asarray(eta) - self.centre[1]
        (a, b), (c, d) = self.matrix
        return (xi + self.shift[0] + a * dx + b * dy, eta + self.shift[1] + c * dx + d * dy)


@blas_single_threaded  # small least-squares fits
def refine_image(xi, eta, ref_tree, ref_xi, ref_eta, radii=(3.0, 1.5, 0.75),
                 min_matches: int = 8) -> ImageCorrection | None:
    """Affine correction of one image by matching to references with shrinking radii.

    Returns None (no correction) when too few detections match.
    """
    centre = (float(np.mean(xi)), float(np.mean(eta)))
    corr = ImageCorrection(centre, (0.0, 0.0), ((0.0, 0.0), (0.0, 0.0)), 0)
    for k, radius in enumerate(radii):
        px, py = corr.apply(xi, eta)
        d, j = ref_tree.query(np.column_stack([px, py]), distance_upper_bound=radius)
        ok = np.isfinite(d)
        if ok.sum() < min_matches:
            return None if k == 0 else corr
        rx, ry = ref_xi[j[ok]] - xi[ok], ref_eta[j[ok]] - eta[ok]
        if k == 0:  # a shift first: robust to the wrong matches of the wide radius
            corr = ImageCorrection(centre, (float(np.median(rx)), float(np.median(ry))),
                                   ((0.0, 0.0), (0.0, 0.0)), int(ok.sum()))
            continue
        a = np.column_stack([np.ones(ok.sum()), xi[ok] - centre[0], eta[ok] - centre[1]])
        cx = np.linalg.lstsq(a, rx, rcond=None)[0]
        cy = np.linalg.lstsq(a, ry, rcond=None)[0]
        corr = ImageCorrection(centre, (float(cx[0]), float(cy[0])),
                               ((float(cx[1]), float(cx[2])), (float(cy[1]), float(cy[2]))),
                               int(ok.sum()))
    return corr


@dataclass
class VisitDistortion:
    """Polynomial correction of one visit's offset-corrected header positions:
    ``p + P(p)`` with ``P`` a full polynomial of ``order`` in ``(p - centre) / scale``
    (arcsec), for the optical distortion a distortion-free header WCS lacks (HSC: ~10
    arcsec at 0.75 deg; radial, ~r^3, so a cubic represents it)."""

    centre: tuple[float, float]
    scale: float
    order: int
    coef_xi: np.ndarray
    coef_eta: np.ndarray
    n_matched: int
    rms_arcsec: float

    def apply(self, xi, eta):
        xi, eta = np.asarray(xi, float), np.asarray(eta, float)
        a = _poly_terms(xi, eta, self.centre, self.scale, self.order)
        return xi + a @ self.coef_xi, eta + a @ self.coef_eta


def _poly_terms(xi, eta, centre, scale, order):
    u, v = (xi - centre[0]) / scale, (eta - centre[1]) / scale
    return np.column_stack([u ** (n - j) * v ** j for n in range(order + 1)
                            for j in range(n + 1)])


def _match_count(xi, eta, ref_tree, radius):
    d, _ = ref_tree.query(np.column_stack([xi, eta]), distance_upper_bound=radius)
    return int(np.isfinite(d).sum())


@blas_single_threaded  # small least-squares fits
def fit_visit_distortion(xi, eta, ref_tree, ref_xi, ref_eta, centre, order: int = 3,
                         radius: float = 1.0, start_fraction: float = 0.3,
                         grow: float = 1.25, min_per_term: int = 5
                         ) -> VisitDistortion | None:
    """Focal-plane polynomial taking one visit's positions onto the references, grown
    outwards from the visit centre.

    After the visit's shift and rotation, the header positions are good near the
    optical axis but a distortion-free header is off by the optical distortion further
    out (HSC: 2-15 arcsec beyond 0.5 deg), beyond any match radius: there the nearest
    reference is a wrong star, and the per-CCD touch-up (:func:`refine_image`) fits the
    random offsets of wrong matches. As the distortion is smooth, a polynomial fitted to
    the unambiguous matches of an inner disc predicts it a little further out: the disc
    grows by ``grow`` per step, each step matching within ``radius`` of the current
    prediction and refitting (with 3-sigma clipping), until it holds every detection.

    Parameters
    ----------
    xi, eta : ndarray
        The visit's offset-corrected header positions (arcsec), brightest first or not.
    ref_tree, ref_xi, ref_eta
        KD-tree of the reference positions (arcsec, visit epoch) and the positions.
    centre : (float, float)
        The visit centre (arcsec): the disc's centre.
    order : int
        Polynomial order (lowered while an inner disc has too few matches).
    radius : float
        Match radius (arcsec).
    start_fraction : float
        Fraction of the detections in the first disc.

    Returns
    -------
    VisitDistortion or None
        None when the outer detections already match at least 0.8 times as often as
        the inner ones (a header WCS that holds the distortion), when too few
        detections match, or when the correction matches fewer detections within
        ``radius`` than the positions without it (a field too small for a polynomial).
    """
    xi, eta = np.asarray(xi, float), np.asarray(eta, float)
    r = np.hypot(xi - centre[0], eta - centre[1])
    if len(r) == 0:
        return None
    r_max = float(r.max())
    scale = r_max if r_max > 0 else 1.0
    disc = float(np.quantile(r, start_fraction))
    # a header that holds the distortion matches as well at the edge as in the centre:
    # nothing to fit (one query instead of the growth's ~6 queries and fits)
    d0 = ref_tree.query(np.column_stack([xi, eta]), distance_upper_bound=radius)[0]
    outer = r >= np.quantile(r, 1.0 - start_fraction)
    rate_in, rate_out = np.isfinite(d0[r <= disc]).mean(), np.isfinite(d0[outer]).mean()
    if rate_out >= 0.8 * rate_in:
        return None
    corr = None
    while True:
        inner = np.nonzero(r <= disc)[0]
        px, py = corr.apply(xi[inner], eta[inner]) if corr else (xi[inner], eta[inner])
        d, j = ref_tree.query(np.column_stack([px, py]), distance_upper_bound=radius)
        ok = np.isfinite(d)
        n_ok = int(ok.sum())
        n_ord = order
        while n_ord > 1 and n_ok < min_per_term * (n_ord + 1) * (n_ord + 2) // 2:
            n_ord -= 1
        if n_ok < min_per_term * 3:
            return None
        i, jj = inner[ok], j[ok]
        a = _poly_terms(xi[i], eta[i], centre, scale, n_ord)
        bx, by = ref_xi[jj] - xi[i], ref_eta[jj] - eta[i]
        use = np.ones(len(i), bool)
        for _ in range(2):  # the fit, then once more without the 3-sigma outliers
            cx = np.linalg.lstsq(a[use], bx[use], rcond=None)[0]
            cy = np.linalg.lstsq(a[use], by[use], rcond=None)[0]
            res = np.hypot(a @ cx - bx, a @ cy - by)
            # 2-d residuals: the median of a Rayleigh distribution is sigma sqrt(2 ln 2)
            sig = float(np.median(res[use])) / np.sqrt(2 * np.log(2)) + 1e-6
            use = res < 3 * sig
        corr = VisitDistortion(centre, scale, n_ord, cx, cy, int(use.sum()),
                               float(np.sqrt(np.mean(res[use] ** 2))))
        if disc >= r_max:
            break
        disc = min(disc * grow, r_max)
    before = _match_count(xi, eta, ref_tree, radius)
    after = _match_count(*corr.apply(xi, eta), ref_tree, radius)
    return corr if after > before else None
