"""Cross-visit association of detections into fitted stars, and reference matching.

Association is a friends-of-friends grouping of all detections within a radius
(``cKDTree.query_pairs`` + connected components, vectorised); a group holding two
detections of the same visit is ambiguous (blend, double star) and dropped. Reference
matching keeps only one-to-one matches whose second-nearest candidate is beyond the radius.
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
