"""Cross-visit association of detections into fitted stars, and reference matching.

Association is a friends-of-friends grouping of all detections within a radius
(``cKDTree.query_pairs`` + connected components, vectorised); a group holding two
detections of the same visit is ambiguous (blend, double star) and dropped. Reference
matching keeps only one-to-one matches whose second-nearest candidate is beyond the radius.
In a crowded field positions alone are not enough: a star missing from some visits
(saturated) links with a neighbour detected in those, and a faint neighbour of a
saturated reference star matches it; :func:`flux_outliers` and :func:`flux_consistent`
drop the measurements and matches whose flux is far off their star's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


@dataclass
class Association:
    """Result of :func:`associate`.

    ``star`` gives each detection's fitted-star index (-1: dropped); ``n_stars`` the
    number of fitted stars; ``n_ambiguous`` the detections dropped as ambiguous.
    """

    star: np.ndarray
    n_stars: int
    n_ambiguous: int


def associate(xi, eta, visit, radius: float, min_measurements: int = 2,
              keep=None) -> Association:
    """Group detections of different visits lying within ``radius`` (arcsec).

    Parameters
    ----------
    xi, eta : ndarray
        Tangent-plane positions (arcsec), corrected for the per-visit offsets.
    visit : ndarray
        Visit of each detection.
    radius : float
        Linking radius (arcsec).
    min_measurements : int
        Groups with fewer detections are dropped unless ``keep`` is true for them.
    keep : ndarray of bool, optional
        Detections whose group is kept whatever its size (e.g. those near a reference).
    """
    n = len(xi)
    pts = np.column_stack([xi, eta])
    pairs = cKDTree(pts).query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])),
                       shape=(n, n))
    _, label = connected_components(graph, directed=False)
    # ambiguous: a group with two detections of one visit
    key = label.astype(np.int64) * (int(visit.max()) + 1) + (visit - visit.min())
    _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    dup = cnt[inv] > 1
    bad_group = np.zeros(label.max() + 1, bool)
    bad_group[label[dup]] = True
    size = np.bincount(label)
    good = ~bad_group[label]
    big = size[label] >= min_measurements
    if keep is not None:
        kept_group = np.zeros(label.max() + 1, bool)
        kept_group[label[np.asarray(keep, bool)]] = True
        big |= kept_group[label]
    ok = good & big
    star = np.full(n, -1, np.int64)
    uniq, star_ok = np.unique(label[ok], return_inverse=True)
    star[ok] = star_ok
    return Association(star, len(uniq), int((~good).sum()))


def match_references(star_xi, star_eta, ref_xi, ref_eta, radius: float) -> np.ndarray:
    """Index of the reference star matched to each fitted star, -1 for none.

    A match is kept only when it is one-to-one and the second-nearest reference is
    farther than ``radius`` (unambiguous).
    """
    ref = np.full(len(star_xi), -1, np.int64)
    if len(ref_xi) == 0 or len(star_xi) == 0:
        return ref
    tree = cKDTree(np.column_stack([ref_xi, ref_eta]))
    k = 2 if len(ref_xi) > 1 else 1
    d, j = tree.query(np.column_stack([star_xi, star_eta]), k=k,
                      distance_upper_bound=radius)
    if k == 1:
        d, j = d[:, None], j[:, None]
    ok = np.isfinite(d[:, 0])
    if k == 2:
        ok &= ~np.isfinite(d[:, 1])
    cand = np.where(ok, j[:, 0], -1)
    # one-to-one: a reference claimed by two stars matches neither
    claimed = np.bincount(cand[ok], minlength=len(ref_xi))
    ok &= claimed[np.maximum(cand, 0)] == 1
    ref[ok] = cand[ok]
    return ref


def flux_consistent(ref_index, star, visit, flux, ref_flux,
                    max_mag: float = 1.0) -> np.ndarray:
    """Which reference matches agree in flux with their fitted star.

    A faint star next to a bright reference star whose own detections are dropped
    (saturated) matches that reference by position alone; with sub-mas reference
    errors and a flux 5 mag off, such a match cannot be rejected by the fit and
    dominates both chi^2s. Each visit's zero point is the median reference/instrumental
    flux ratio of its matched measurements (exposure times, transparency); a match is
    kept when the median over its star's measurements of the ratio, over the visit's
    zero point, is within ``max_mag`` magnitudes of 1 -- far looser than the colour
    terms and focal-plane calibration variations (~0.1 mag), far tighter than a wrong
    star. Matches without a finite reference flux are kept.

    Parameters
    ----------
    ref_index : ndarray
        Reference matched to each fitted star (-1: none), as :func:`match_references`.
    star, visit, flux : ndarray
        Fitted star, visit and instrumental flux of each measurement.
    ref_flux : ndarray
        Reference fluxes in the fitted filter (NaN where unknown).

    Returns
    -------
    ndarray of bool
        Per fitted star: False for a match to reject (True where none).
    """
    ref_index = np.asarray(ref_index)
    rf = np.where(ref_index >= 0, np.asarray(ref_flux, float)[np.maximum(ref_index, 0)],
                  np.nan)[star]
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log10(rf / np.asarray(flux, float))
    ok_m = np.isfinite(lr)
    out = np.ones(len(ref_index), bool)
    if not ok_m.any():
        return out
    # per-visit zero point: median over that visit's matched measurements
    _, vi = np.unique(visit, return_inverse=True)
    zp = np.full(vi.max() + 1, np.nan)
    for v in np.unique(vi[ok_m]):  # one median per visit (tens to hundreds of visits)
        zp[v] = np.median(lr[ok_m & (vi == v)])
    d = lr - zp[vi]
    ok_m &= np.isfinite(d)
    # per-star median of the deviations (sort by star, take the middle one)
    s, dd = np.asarray(star)[ok_m], d[ok_m]
    o = np.lexsort((dd, s))
    s, dd = s[o], dd[o]
    first = np.searchsorted(s, np.arange(len(ref_index)))
    n = np.bincount(s, minlength=len(ref_index))
    has = n > 0
    med = np.full(len(ref_index), 0.0)
    med[has] = dd[first[has] + (n[has] - 1) // 2]
    out[has] = np.abs(med[has]) <= max_mag / 2.5
    return out


def _median_by(key, values, n_keys: int) -> np.ndarray:
    """Median of ``values`` per integer ``key`` (NaN for keys without values)."""
    o = np.lexsort((values, key))
    k, v = key[o], values[o]
    n = np.bincount(k, minlength=n_keys)
    first = np.searchsorted(k, np.arange(n_keys))
    out = np.full(n_keys, np.nan)
    has = n > 0
    lo = v[first[has] + (n[has] - 1) // 2]
    hi = v[first[has] + n[has] // 2]
    out[has] = 0.5 * (lo + hi)
    return out


def flux_outliers(star, visit, flux, max_mag: float = 1.0) -> np.ndarray:
    """Measurements whose flux is more than ``max_mag`` magnitudes off their star's.

    In a crowded field a star whose own detections are missing in some visits
    (saturated, in a gap) gets linked with a neighbour detected in those visits: one
    group, two stars, no visit twice. The faint measurements' small absolute errors then
    pull the star's flux to theirs, and outlier rejection throws away the right ones.
    Each star's median instrumental flux (after each visit's median zero point, for
    exposure times and transparency) names what it is; measurements more than
    ``max_mag`` off are another star. Stars with fewer than 3 measurements are left
    alone (no majority).

    Parameters
    ----------
    star : ndarray of int
        Fitted-star index of each measurement (>= 0).
    visit : ndarray
        Visit of each measurement.
    flux : ndarray
        Instrumental flux (counts) of each measurement.

    Returns
    -------
    ndarray of bool
        True for measurements to drop.
    """
    star = np.asarray(star, np.int64)
    out = np.zeros(len(star), bool)
    if len(star) == 0:
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        lf = np.log10(np.asarray(flux, float))
    ok = np.isfinite(lf)
    n_stars = int(star.max()) + 1
    _, vi = np.unique(visit, return_inverse=True)
    med = _median_by(star[ok], lf[ok], n_stars)
    zp = _median_by(vi[ok], (lf - med[star])[ok], int(vi.max()) + 1)
    lf0 = lf - np.nan_to_num(zp[vi])
    med = _median_by(star[ok], lf0[ok], n_stars)
    n = np.bincount(star[ok], minlength=n_stars)
    out[ok] = (n[star[ok]] >= 3) & (np.abs(lf0[ok] - med[star[ok]]) > max_mag / 2.5)
    return out
