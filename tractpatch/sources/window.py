"""Adaptive Gaussian-windowed centroids, sizes and centroid errors, in one iteration.

For each source a circular Gaussian window of sigma ``s`` centred at ``(x, y)`` is
iterated to two fixed points at once:

- the centroid is SExtractor's windowed position (``XWIN_IMAGE``): ``x <- x + 2
  sum(w dx I) / sum(w I)``, stopping when the step is below ``1e-4`` pixel;
- the window sigma is the adaptive-moment (self-matched) sigma: ``s^2 = 2 m``, with ``m``
  the window-weighted second moment per axis about the centroid. For a Gaussian source
  that is its sigma exactly; for a Moffat-like PSF it follows the core (as the FWHM
  quoted by PSFEx or the LSST pipelines does), unlike SExtractor's ``2 r50 / 2.35``,
  which the wings and neighbours inflate. The update is the mean of ``s^2 <- 2 m`` and
  ``s^2 <- m s^2 / (s^2 - m)`` (the window deconvolved from a Gaussian's weighted
  moment): both have the fixed point ``s^2 = 2 m``; the first halves a Gaussian
  source's error per step, the second oscillates for a sharp one, the mean quarters
  and halves them.

Pixels of other detections (the segmentation map) are left out of a source's window,
as sep's ``sum_circle(..., seg_id)`` does: a bright neighbour 12-20 pixels away
otherwise pulls the window, and the adaptive size, onto itself.

The centroid errors are SExtractor's ``ERRX2WIN``/``ERRY2WIN``:
``4 sum(w^2 V dx^2) / (sum w I)^2`` over the window, with ``V`` the variance plane plus
the source's Poisson variance when the gain is known.

The window is truncated to the box ``[floor(x - 4 s), ceil(x + 4 s)]`` per axis (so it
is separable and each sum is a batched stamp-vector product) where SExtractor truncates
at the circle ``r < 4 s``: the pixels between them have weights below ``3.4e-4``.

Sources are measured on pixel stamps cut around their detection position, grouped by
window size (a window that outgrows its stamp moves to the next size and goes on from
where it stopped); the converged sources leave the arrays as they finish.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stamps import source_blocks, stamp_index

#: Stamp half-sizes: a source is measured on the smallest stamp that holds its window box,
#: so most stars cost a 19 x 19 stamp.
HALVES = (6, 9, 13, 19, 27, 39, 56, 80, 124)
#: Window radius in sigma (SExtractor's WINPOS_NSIG).
NSIG = 4.0
#: Centroid step factor of the windowed position (SExtractor's WINPOS_FAC).
WINPOS_FAC = 2.0


@dataclass
class Windows:
    """Windowed measurements of many sources (0-based pixels).

    Attributes
    ----------
    x, y : ndarray
        Windowed centroids; the detection position where the iteration failed or moved
        further than allowed.
    x_err, y_err : ndarray
        1-sigma centroid errors (NaN where the window holds no positive flux).
    sigma : ndarray
        Adaptive-moment window sigma (NaN where the moments were not positive).
    ok : ndarray of bool
        The centroid iteration succeeded (False: detection position kept).
    """

    x: np.ndarray
    y: np.ndarray
    x_err: np.ndarray
    y_err: np.ndarray
    sigma: np.ndarray
    ok: np.ndarray


def half_index(rad: np.ndarray) -> np.ndarray:
    """Index into :data:`HALVES` of the smallest stamp holding a window box of radius
    ``rad`` around any sub-pixel position (``ceil(x + rad) - rint(x) <= rad + 1.5``)."""
    return np.searchsorted(np.asarray(HALVES, float), np.asarray(rad, float) + 1.5)


def _profiles(g, c, s):
    """The 1-D window ``exp(-(g - c)^2 / 2 s^2)`` on stamp pixels ``g`` (n, m), zero
    outside the box ``[floor(c - 4 s), ceil(c + 4 s)]``, and the offsets ``g - c``."""
    d = g - c[:, None]
    rad = NSIG * s
    box = (g >= np.floor(c - rad)[:, None]) & (g <= np.ceil(c + rad)[:, None])
    w = np.where(box, np.exp(-d * d / (2.0 * s * s)[:, None]), 0.0)
    return w, d


def _moments(img, gx, gy, x, y, s):
    """Window sums ``sum w I``, ``sum w dx I``, ``sum w dy I``, ``sum w dx^2 I`` and
    ``sum w dy^2 I`` of each stamp."""
    ex, dx = _profiles(gx, x, s)
    ey, dy = _profiles(gy, y, s)
    # the window is separable: sum over x with three profiles at once, then over y
    px = np.stack([ex, ex * dx, ex * dx * dx], axis=2)             # (n, m, 3)
    t = np.matmul(img, px)                                          # (n, m_y, 3)
    wi = np.einsum("ny,ny->n", ey, t[:, :, 0])
    wx = np.einsum("ny,ny->n", ey, t[:, :, 1])
    wxx = np.einsum("ny,ny->n", ey, t[:, :, 2])
    eyd = ey * dy
    wy = np.einsum("ny,ny->n", eyd, t[:, :, 0])
    wyy = np.einsum("ny,ny->n", eyd * dy, t[:, :, 0])
    return wi, wx, wy, wxx, wyy


def _outgrown(x, y, s, cx, cy, half):
    """Which windows no longer fit the stamp centred on pixel ``(cx, cy)``."""
    rad = NSIG * s
    return ((np.ceil(x + rad) > cx + half) | (np.floor(x - rad) < cx - half)
            | (np.ceil(y + rad) > cy + half) | (np.floor(y - rad) < cy - half))


def _iterate(img, gx, gy, x, y, s, fix_s, n_left, half, s_max, tol, sigma_tol):
    """Iterate the windows of one stamp block in place.

    ``x, y, s`` (float arrays) are updated; ``fix_s`` marks sources whose window sigma is
    held fixed (their moments failed); ``n_left`` counts the iterations each may still
    take. Returns per source: 0 converged (or out of iterations), 1 outgrew the stamp,
    2 failed (no positive flux in the window).
    """
    n = len(x)
    state = np.zeros(n, np.int8)
    cx, cy = gx[:, half].astype(float), gy[:, half].astype(float)
    rows = np.arange(n)              # block rows of the (compacted) working arrays
    live = np.ones(n, bool)          # which working rows still iterate
    w_img, w_gx, w_gy = img, gx, gy
    while live.any():
        if live.sum() < 0.7 * live.size:  # compact: finished stamps cost no more work
            rows, w_img, w_gx, w_gy = rows[live], w_img[live], w_gx[live], w_gy[live]
            live = np.ones(rows.size, bool)
        xa, ya, sa = x[rows], y[rows], s[rows]
        over = _outgrown(xa, ya, sa, cx[rows], cy[rows], half)
        wi, wx, wy, wxx, wyy = _moments(w_img, w_gx, w_gy, xa, ya, sa)
        with np.errstate(invalid="ignore", divide="ignore"):
            fail = ~(wi > 0.0)
            # second moments about the centroid, per axis and their mean
            mxx = (wxx - wx * wx / wi) / wi
            myy = (wyy - wy * wy / wi) / wi
            m = 0.5 * (mxx + myy)
            s2 = sa * sa
            # a Gaussian source's own variance is m s^2 / (s^2 - m) (the window
            # deconvolved); near-flat or noisy moments (m -> s^2) are held to 3x
            dec = s2 / np.maximum(s2 - m, s2 / 9.0)
            # the centroid step of a Gaussian source is 1 + sigma^2 / s^2 = s^2 / (s^2 - m)
            # times the weighted mean offset, per axis: 2 (SExtractor's factor) once
            # the window matches, 1 along a sharp source, where 2 overshoots for ever
            fac_x = np.clip(s2 / np.maximum(s2 - mxx, s2 / 9.0), 1.0, WINPOS_FAC)
            fac_y = np.clip(s2 / np.maximum(s2 - myy, s2 / 9.0), 1.0, WINPOS_FAC)
            stepx, stepy = fac_x * wx / wi, fac_y * wy / wi
            # the mean of the plain update s^2 <- 2 m and the deconvolved one m dec: both
            # have the fixed point s^2 = 2 m; the plain one halves a Gaussian's error per
            # step, the deconvolved one oscillates for a sharp source (m fixed), the mean
            # converges for both (rates 1/4 and 1/2)
            new_s = np.sqrt(0.5 * m * (2.0 + dec))
        bad_m = ~(m > 0.0) | ~np.isfinite(new_s)
        fix = fix_s[rows] | (bad_m & ~fail)
        new_s = np.where(fix, sa, np.clip(new_s, 0.3, s_max))
        step = live & ~fail & ~over
        x[rows] = np.where(step, xa + stepx, xa)
        y[rows] = np.where(step, ya + stepy, ya)
        s[rows] = np.where(step, new_s, sa)
        fix_s[rows] = np.where(live, fix, fix_s[rows])
        n_left[rows] -= step
        with np.errstate(invalid="ignore"):
            done = step & (stepx * stepx + stepy * stepy < tol * tol) \
                & (np.abs(new_s - sa) <= sigma_tol * sa)
        state[rows[live & over & ~fail]] = 1
        state[rows[live & fail]] = 2
        live &= ~(over | fail | done | (n_left[rows] <= 0))
    return state


def _errors(img, var, gx, gy, x, y, s, gain):
    """SExtractor's windowed centroid errors on the stamps (see the module docstring)."""
    if gain > 0.0:  # the source's own Poisson noise
        var = var + np.clip(img, 0.0, None) / gain
    ex, dx = _profiles(gx, x, s)
    ey, dy = _profiles(gy, y, s)
    wi = np.einsum("ny,ny->n", ey, np.matmul(img, ex[:, :, None])[:, :, 0])
    ex2, ey2 = ex * ex, ey * ey
    t = np.matmul(var, np.stack([ex2 * dx * dx, ex2], axis=2))   # (n, m_y, 2)
    sx = np.einsum("ny,ny->n", ey2, t[:, :, 0])
    sy = np.einsum("ny,ny->n", ey2 * dy * dy, t[:, :, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        good = wi > 0.0
        return (np.where(good, 2.0 * np.sqrt(sx) / wi, np.nan),
                np.where(good, 2.0 * np.sqrt(sy) / wi, np.nan))


def measure_windows(data, var, bad, x0, y0, sigma0, segmap=None, ids=None,
                    gain: float | None = None, blended=None, n_iter: int = 20,
                    tol: float = 1e-4, sigma_tol: float = 1e-3,
                    s_max: float = 30.0) -> Windows:
    """Windowed centroids with errors and adaptive window sizes of many sources.

    Parameters
    ----------
    data, var : ndarray
        Background-subtracted image and its variance (same shape).
    bad : ndarray or None
        Pixels to ignore (non-zero), or None when none is.
    x0, y0 : ndarray
        Detection positions (0-based pixels).
    sigma0 : ndarray
        Starting window sigma per source (e.g. ``sqrt(a b)`` of the isophote).
    segmap : ndarray of int, optional
        Segmentation map (``ids[i]`` marks source ``i``'s pixels, 0 no source): the
        pixels of other sources are left out of each window.
    ids : ndarray of int, optional
        Segmentation id of each source (required with ``segmap``).
    gain : float, optional
        e-/count; adds the source Poisson variance to the errors.
    blended : ndarray of bool, optional
        Deblended sources: they may move at most ``max(sigma / 2, 0.5)`` pixels from
        the detection position (the window can slide onto the neighbour), the others
        ``2 sigma + 1``; beyond it the detection position is kept and ``ok`` is False.
    n_iter : int
        Most iterations per source.
    tol, sigma_tol : float
        Convergence: centroid step below ``tol`` pixels (SExtractor's WINPOS_STEPMIN)
        and window sigma change below ``sigma_tol`` of itself (the centroid hardly
        depends on the window's exact size: 1e-3 instead of 1e-4 moves centroids by
        1e-4 px at most on bench_detect's CCD and saves a fifth of the iterations).
    s_max : float
        Largest window sigma (pixels).

    Returns
    -------
    Windows
    """
    data = np.ascontiguousarray(data)
    var = np.ascontiguousarray(var)
    x0 = np.asarray(x0, np.float64)
    y0 = np.asarray(y0, np.float64)
    n = x0.size
    x, y = x0.copy(), y0.copy()
    s = np.clip(np.where(np.isfinite(sigma0), sigma0, 1.0), 0.5, 15.0).astype(np.float64)
    fix_s = np.zeros(n, bool)
    n_left = np.full(n, int(n_iter))
    state = np.full(n, 1, np.int8)
    x_err = np.full(n, np.nan)
    y_err = np.full(n, np.nan)
    ok = np.zeros(n, bool)
    blended = np.zeros(n, bool) if blended is None else np.asarray(blended, bool)
    level = half_index(NSIG * s)
    flat_data, flat_var = data.reshape(-1), var.reshape(-1)
    flat_bad = None if bad is None else np.ascontiguousarray(bad).reshape(-1)
    flat_seg = None if segmap is None else np.ascontiguousarray(segmap).reshape(-1)
    for k, half in enumerate(HALVES):
        last = k == len(HALVES) - 1
        idx = np.flatnonzero((state == 1) & (level <= k))
        for sl in source_blocks(idx.size, half):
            i = idx[sl]
            flat, usable, gx, gy = stamp_index(x0[i], y0[i], half, data.shape)
            if flat_bad is not None:
                usable &= np.take(flat_bad, flat) == 0
            if flat_seg is not None:
                seg = np.take(flat_seg, flat)
                usable &= (seg == 0) | (seg == np.asarray(ids)[i][:, None, None])
            img = np.where(usable, np.take(flat_data, flat), 0.0)
            xi, yi, si, fi, ni = x[i], y[i], s[i], fix_s[i], n_left[i]
            st = _iterate(img, gx, gy, xi, yi, si, fi, ni, half, s_max, tol, sigma_tol)
            if last:  # nowhere larger to go: measure where it stopped
                st[st == 1] = 0
            x[i], y[i], s[i], fix_s[i], n_left[i], state[i] = xi, yi, si, fi, ni, st
            level[i[st == 1]] = k + 1
            fin = np.flatnonzero(st != 1)
            if fin.size:
                j = i[fin]
                sj = np.maximum(s[j], 0.5)
                lim = np.where(blended[j], np.maximum(sj / 2.0, 0.5), 2.0 * sj + 1.0)
                moved = (st[fin] == 0) & (np.hypot(x[j] - x0[j], y[j] - y0[j]) < lim)
                ok[j] = moved
                x[j] = np.where(moved, x[j], x0[j])
                y[j] = np.where(moved, y[j], y0[j])
                v = np.where(usable[fin], np.take(flat_var, flat[fin]), 0.0)
                x_err[j], y_err[j] = _errors(img[fin], v, gx[fin], gy[fin], x[j], y[j],
                                             s[j], float(gain or 0.0))
    sigma = np.where(fix_s | (state == 2), np.nan, s)
    return Windows(x=x, y=y, x_err=x_err, y_err=y_err, sigma=sigma, ok=ok)
