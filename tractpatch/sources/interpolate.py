"""Linear interpolation over short runs of bad pixels along rows.

A bad column or a few bad pixels through a star's core bias its windowed centroid (the
window sees a hole on one side) and its aperture fluxes by far more than their errors
say. Like SExtractor (``INTERP_TYPE ALL``, ``INTERP_MAXXLAG``) and the LSST pipelines'
bad-column interpolation, each run of at most ``max_run`` bad pixels along a row is
replaced by the straight line between the good pixels either side of it; longer runs
(no-data regions, vignetted corners) stay bad. Sources near interpolated pixels are
still flagged from the mask planes.

The work is vectorised over the bad pixels only (no pass per row), so a few bad columns
on a CCD cost a few milliseconds.
"""
from __future__ import annotations

import numpy as np


def interpolate_bad_runs(planes, bad: np.ndarray, max_run: int = 16):
    """Fill short runs of ``bad`` pixels along rows in each of ``planes``, in place.

    Parameters
    ----------
    planes : list of ndarray
        Image planes of ``bad``'s shape (e.g. the image and its variance), C-contiguous;
        they are modified in place.
    bad : ndarray of bool
        Pixels to replace; the filled ones are cleared in place.
    max_run : int
        Longest run (pixels along a row) that is interpolated.

    Returns
    -------
    ndarray of bool
        ``bad``, now the pixels still bad: runs longer than ``max_run`` and runs touching both ends
        of their row. A run touching one end takes the value of its one good neighbour.
    """
    ny, nx = bad.shape
    idx = np.flatnonzero(bad)
    if idx.size == 0 or max_run < 1:
        return bad
    col = idx % nx
    # runs: consecutive flat indices within one row
    start = np.ones(idx.size, bool)
    start[1:] = (idx[1:] != idx[:-1] + 1) | (col[1:] == 0)
    run = np.cumsum(start) - 1
    first = idx[start]                        # flat index of each run's first pixel
    last = idx[np.r_[start[1:], True]]        # and of its last
    length = last - first + 1
    has_left = (first % nx) > 0
    has_right = (last % nx) < nx - 1
    fill = (length <= max_run) & (has_left | has_right)
    use = fill[run]
    if not use.any():
        return bad
    r = run[use]
    # position of each pixel along its run's straight line: 1 .. length, out of length + 1
    frac = (idx[use] - first[r] + 1) / (length[r] + 1.0)
    lo = np.where(has_left, first - 1, last + 1)[r]   # one-sided runs: the same pixel
    hi = np.where(has_right, last + 1, first - 1)[r]  # twice
    for plane in planes:
        flat = plane.reshape(-1)
        flat[idx[use]] = flat[lo] * (1.0 - frac) + flat[hi] * frac
    bad.reshape(-1)[idx[use]] = False
    return bad
