"""Source measurement: windowed centroids, aperture and PSF-like fluxes, sizes, mask flags.

Everything is vectorised over sources: sep's array calls, numpy on per-source pixel
stamps (cut with fancy indexing, in blocks of sources to bound memory); where each
source needs its own window size (adaptive moments, window errors) the sources are
grouped by stamp size and the separable Gaussian windows become batched products. No
numba here: loading its cached kernels cost about a second per command.

Choices (documented for the catalog's users):

- Centroids are SExtractor's windowed positions (``XWIN_IMAGE``; sep.winpos) with a
  Gaussian window of the source's adaptive-moment sigma (SExtractor uses
  ``2 r50 / 2.35``, which Moffat wings and neighbours inflate: a window matched to the
  core cut the centroid scatter of bright stars on a Moffat PSF by half). Their errors
  follow SExtractor's ``ERRX2WIN``: ``4 sum(w^2 V dx^2) / (sum w I)^2`` over the window,
  with V the variance plane plus the source's Poisson variance when the gain is known.
- The PSF-like flux is the optimal (matched-filter) flux for a circular Gaussian PSF of
  the CCD's stellar FWHM at the windowed centroid, ``F = sum(P I) / sum(P^2)``, with error
  ``sqrt(sum(P^2 V)) / sum(P^2)``; masked pixels get zero weight (still unbiased for a
  Gaussian star). :mod:`.growth` multiplies it by an aperture correction to infinity
  measured on the CCD's stars (curve of growth), so for stars it is the total flux.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

#: Gaussian FWHM / sigma.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass
class Stamps:
    """Pixel stamps around many sources (axis 0: source).

    ``dx``/``dy`` are pixel-centre offsets from the source position, ``inside`` marks
    stamp pixels that lie on the image.
    """

    dx: np.ndarray
    dy: np.ndarray
    inside: np.ndarray
    iy: np.ndarray
    ix: np.ndarray

    def take(self, arr: np.ndarray) -> np.ndarray:
        """Values of image ``arr`` on the stamps (off-image pixels read the edge)."""
        return arr[self.iy, self.ix]


def cut_stamps(x: np.ndarray, y: np.ndarray, half: int, shape) -> Stamps:
    """Stamps of ``(2 half + 1)^2`` pixels centred on the nearest pixel of each source."""
    ny, nx = shape
    off = np.arange(-half, half + 1)
    cx = np.rint(x).astype(np.int64)
    cy = np.rint(y).astype(np.int64)
    gx = cx[:, None, None] + off[None, None, :]
    gy = cy[:, None, None] + off[None, :, None]
    gx, gy = np.broadcast_arrays(gx, gy)
    inside = (gx >= 0) & (gx < nx) & (gy >= 0) & (gy < ny)
    return Stamps(dx=gx - x[:, None, None], dy=gy - y[:, None, None], inside=inside,
                  iy=np.clip(gy, 0, ny - 1), ix=np.clip(gx, 0, nx - 1))


def _blocks(n: int, half: int, budget: int = 4_000_000):
    """Slices over ``n`` sources keeping stamp arrays near ``budget`` elements."""
    step = max(1, budget // (2 * half + 1) ** 2)
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


#: Stamp half-sizes of the window kernels: a source is measured on the smallest stamp
#: that holds its window box (one whose window outgrows it during the adaptive
#: iteration is redone on the next size), so most stars cost a 19 x 19 stamp.
_HALVES = (6, 9, 13, 19, 27, 39, 56, 80, 124)


def _half_index(rad: np.ndarray) -> np.ndarray:
    """Index into :data:`_HALVES` of the smallest stamp holding a window box of radius
    ``rad`` around any sub-pixel position (``ceil(x + rad) - rint(x) <= rad + 1.5``)."""
    return np.searchsorted(np.asarray(_HALVES, float), np.asarray(rad, float) + 1.5)


def _window_stamps(arrays, bad, x, y, half):
    """Stamps of each image in ``arrays`` (their dtype, zero on masked and off-image
    pixels),
    the stamp pixels' image columns ``gx`` (n, m) and rows ``gy`` (n, m),
    ``m = 2 half + 1``, and which stamp pixels are usable (n, m, m).

    One flat index array serves every image (``np.take`` on the raveled images is
    several times faster than 2-D fancy indexing); ``bad`` is only read when it has a
    masked pixel near a source.
    """
    ny, nx = arrays[0].shape
    off = np.arange(-half, half + 1)
    gx = np.rint(x).astype(np.int64)[:, None] + off
    gy = np.rint(y).astype(np.int64)[:, None] + off
    flat = np.clip(gy, 0, ny - 1)[:, :, None] * nx + np.clip(gx, 0, nx - 1)[:, None, :]
    ok = ((gy >= 0) & (gy < ny))[:, :, None] & ((gx >= 0) & (gx < nx))[:, None, :]
    if bad is not None:
        ok &= np.take(bad.reshape(-1), flat) == 0
    out = [np.where(ok, np.take(a.reshape(-1), flat), 0.0) for a in arrays]
    return out, gx, gy, ok


def _box_profile(g, c, rad, s):
    """1-D Gaussian window ``exp(-(g - c)^2 / 2 s^2)`` on stamp pixels ``g`` inside the
    box ``[floor(c - rad), ceil(c + rad)]`` (zero outside), and ``(g - c)^2``."""
    d2 = (g - c[:, None]) ** 2
    box = (g >= np.floor(c - rad)[:, None]) & (g <= np.ceil(c + rad)[:, None])
    with np.errstate(invalid="ignore"):
        w = np.where(box, np.exp(-d2 / (2.0 * s * s)[:, None]), 0.0)
    return w, d2


def _adaptive_block(stamp, gx, gy, x, y, s, n_iter, s_max, half):
    """The adaptive-moment iteration for one block of sources on their stamps.

    The Gaussian window and the box are separable, so each iteration is two batched
    stamp-vector products: ``sum w I = ey . (I ex)`` and ``sum w r^2 I = ey . (I ex dx^2)
    + (ey dy^2) . (I ex)``.

    Returns the sigma (NaN where the moments were not positive) and which sources'
    windows outgrew the stamp (to be redone on a larger one).
    """
    s = s.copy()
    over = np.zeros(len(x), bool)
    cx, cy = np.rint(x), np.rint(y)
    for _ in range(n_iter):
        live = np.isfinite(s) & ~over
        if not live.any():
            break
        rad = 4.0 * s
        with np.errstate(invalid="ignore"):
            over |= live & ((np.ceil(x + rad) > cx + half) | (np.floor(x - rad) < cx - half)
                            | (np.ceil(y + rad) > cy + half)
                            | (np.floor(y - rad) < cy - half))
        ex, dx2 = _box_profile(gx, x, rad, s)
        ey, dy2 = _box_profile(gy, y, rad, s)
        t1 = np.einsum("nyx,nx->ny", stamp, ex)
        t2 = np.einsum("nyx,nx->ny", stamp, ex * dx2)
        wi = np.einsum("ny,ny->n", ey, t1)
        wr = np.einsum("ny,ny->n", ey, t2) + np.einsum("ny,ny->n", ey * dy2, t1)
        with np.errstate(invalid="ignore", divide="ignore"):
            new = np.clip(np.sqrt(wr / wi), 0.3, s_max)  # sigma_w^2 = 2 m, m = wr/(2 wi)
            new = np.where((wi > 0.0) & (wr > 0.0), new, np.nan)
        s = np.where(live & ~over, new, s)
    return s, over


def _adaptive_sigma(data, bad, x, y, sigma0, n_iter, s_max):
    """Per-source adaptive-moment sigma, sources grouped by window size (numpy)."""
    out = np.full(x.size, np.nan)
    level = _half_index(4.0 * sigma0)
    pending = np.ones(x.size, bool)
    for k, half in enumerate(_HALVES):
        idx = np.flatnonzero(pending & (level <= k))
        for sl in _blocks(idx.size, half):
            i = idx[sl]
            (stamp,), gx, gy, _ = _window_stamps([data], bad, x[i], y[i], half)
            s, over = _adaptive_block(stamp, gx, gy, x[i], y[i], sigma0[i], n_iter,
                                      s_max, half)
            out[i[~over]] = s[~over]
            pending[i[~over]] = False
            level[i[over]] = k + 1
    return out


def adaptive_fwhm(data, bad, x, y, sigma0, n_iter: int = 12) -> np.ndarray:
    """FWHM from adaptive (Gaussian-weighted, self-matched) second moments.

    The weight's sigma is iterated to ``sigma_w^2 = 2 m``, with ``m`` the weighted
    second moment per axis; for a Gaussian the fixed point is its sigma exactly, for a
    Moffat-like PSF it follows the core (as the FWHM quoted by PSFEx or the LSST
    pipelines does), unlike ``2 r50`` which the wings inflate by ~20%.

    Parameters
    ----------
    data : ndarray
        Background-subtracted image.
    bad : ndarray of uint8
        Masked pixels (ignored).
    x, y : ndarray
        Centroids.
    sigma0 : ndarray
        Starting weight sigma per source (pixels).
    n_iter : int
        Iterations (geometric convergence; 12 is ample from a 2x wrong start).

    Returns
    -------
    ndarray
        ``2.3548 sigma`` in pixels; NaN where the moments are not positive.
    """
    s = np.clip(np.where(np.isfinite(sigma0), sigma0, 1.0), 0.5, 15.0)
    sig = _adaptive_sigma(np.ascontiguousarray(data, dtype=np.float32), _any_bad(bad),
                          np.asarray(x, np.float64), np.asarray(y, np.float64),
                          s.astype(np.float64), int(n_iter), 30.0)
    return FWHM_PER_SIGMA * sig


def _any_bad(bad):
    """``bad`` as contiguous uint8, or None when no pixel is masked (skips its reads)."""
    if bad is None:
        return None
    bad = np.ascontiguousarray(bad).view(np.uint8) if np.asarray(bad).dtype == bool \
        else np.ascontiguousarray(bad, dtype=np.uint8)
    return bad if bad.any() else None


def _window_errors(data, var, bad, x, y, sig, gain):
    """SExtractor's ERRX2WIN/ERRY2WIN over each source's 4-sigma window (numpy stamps,
    sources grouped by window size)."""
    ex = np.full(x.size, np.nan)
    ey = np.full(x.size, np.nan)
    level = _half_index(4.0 * sig)
    for k, half in enumerate(_HALVES):
        idx = np.flatnonzero(level == k)
        for sl in _blocks(idx.size, half):
            i = idx[sl]
            (img, v), gx, gy, _ = _window_stamps([data, var], bad, x[i], y[i], half)
            if gain > 0.0:  # the source's own Poisson noise
                v += np.clip(img, 0.0, None) / gain
            s = sig[i][:, None]
            dx2 = (gx - x[i][:, None]) ** 2
            dy2 = (gy - y[i][:, None]) ** 2
            # the Gaussian window is separable: exp(-r^2/2s^2) = exp(-dy^2/..) exp(-dx^2/..)
            gxw = np.exp(-dx2 / (2.0 * s * s))
            gyw = np.exp(-dy2 / (2.0 * s * s))
            circle = dx2[:, None, :] + dy2[:, :, None] < (16.0 * s * s)[:, :, None]
            w = np.where(circle, gyw[:, :, None] * gxw[:, None, :], 0.0)
            wi = np.einsum("nyx,nyx->n", w, img)
            w2v = w * w * v
            sx = np.einsum("nyx,nx->n", w2v, dx2)
            sy = np.einsum("nyx,ny->n", w2v, dy2)
            with np.errstate(invalid="ignore", divide="ignore"):
                ex[i] = np.where(wi > 0.0, 2.0 * np.sqrt(sx) / wi, np.nan)
                ey[i] = np.where(wi > 0.0, 2.0 * np.sqrt(sy) / wi, np.nan)
    return ex, ey


def windowed_centroids(data, var, bad, x, y, sig, gain=None, max_shift=None):
    """Windowed centroids and their errors.

    Parameters
    ----------
    data, var : ndarray
        Background-subtracted image and its variance.
    bad : ndarray of uint8
        Masked pixels (ignored).
    x, y : ndarray
        Initial positions (0-based pixels).
    sig : ndarray
        Gaussian window sigma per source (SExtractor uses ``2 r50 / 2.35``;
        :mod:`.task` uses the adaptive-moment sigma, matched to the source's core).
    gain : float, optional
        e-/count; adds the source Poisson variance to the errors.
    max_shift : ndarray, optional
        Largest accepted move from the initial position per source (default
        ``2 sig + 1``); deblended sources get a tighter bound because the window
        iteration can slide onto the neighbour.

    Returns
    -------
    xw, yw, x_err, y_err : ndarray
        Centroids (pixels, 0-based) and 1-sigma errors; where the window iteration fails
        the detection position is kept.
    winflag : ndarray of int
        sep.winpos flags (non-zero: failed or truncated).
    """
    sig = np.clip(np.where(np.isfinite(sig), sig, 1.0), 0.5, 20.0)
    # subpix=0: exact pixel/circle overlap at the window's 4-sigma edge, where the
    # weight is 3e-4; sep's default 11x11 sub-sampling there cost 6x the time and moved
    # centroids by < 1e-4 pix
    xw, yw, flag = sep.winpos(data, x, y, sig, mask=bad, subpix=0)
    xw = np.asarray(xw, np.float64)
    yw = np.asarray(yw, np.float64)
    if max_shift is None:
        max_shift = 2 * sig + 1
    ok = np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x, yw - y) < max_shift)
    xw = np.where(ok, xw, x)
    yw = np.where(ok, yw, y)
    x_err, y_err = _window_errors(np.ascontiguousarray(data), np.ascontiguousarray(var),
                                  _any_bad(bad), xw, yw, sig, float(gain or 0.0))
    bad_err = ~(x_err > 0) | ~(y_err > 0)
    x_err[bad_err] = np.nan
    y_err[bad_err] = np.nan
    return xw, yw, x_err, y_err, np.where(ok, flag, flag | 1)


def aperture_fluxes(data, var, bad, x, y, radii, gain=None) -> dict:
    """Circular-aperture fluxes and errors (sep.sum_circle, exact pixel overlap).

    Returns ``{r: (flux, err, sep_flags)}``. Masked pixels are left out (no
    interpolation), so apertures touching masks are flagged by :func:`mask_flags`.
    """
    out = {}
    for r in radii:
        f, e, fl = sep.sum_circle(data, x, y, float(r), var=var, mask=bad, gain=gain,
                                  subpix=0)
        out[r] = (np.asarray(f, float), np.asarray(e, float), np.asarray(fl))
    return out


def gaussian_psf_flux(data, var, bad, x, y, fwhm: float, gain=None):
    """Matched-filter flux for a circular Gaussian PSF of ``fwhm`` pixels at (x, y).

    Returns
    -------
    flux, err : ndarray
        ``sum(P I)/sum(P^2)`` and ``sqrt(sum(P^2 V))/sum(P^2)`` over good pixels within
        4 sigma (NaN where no good pixel is left).
    """
    s = fwhm / FWHM_PER_SIGMA
    half = int(np.ceil(4 * s))
    flux = np.full(len(x), np.nan)
    err = np.full(len(x), np.nan)
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    data = np.ascontiguousarray(data)
    var = np.ascontiguousarray(var)
    bad = _any_bad(bad)
    for sl in _blocks(len(x), half):
        (img, v), gx, gy, good = _window_stamps([data, var], bad, x[sl], y[sl], half)
        dx2 = (gx - x[sl, None]) ** 2
        dy2 = (gy - y[sl, None]) ** 2
        good &= dx2[:, None, :] + dy2[:, :, None] < (4 * s) ** 2
        # separable Gaussian: exp only on the stamp's rows and columns
        p = np.where(good, np.exp(-dy2 / (2 * s * s))[:, :, None]
                     * np.exp(-dx2 / (2 * s * s))[:, None, :], 0.0) / (2 * np.pi * s * s)
        if gain:
            v = v + np.clip(img, 0, None) / gain
        p2 = np.einsum("nyx,nyx->n", p, p)
        with np.errstate(divide="ignore", invalid="ignore"):
            flux[sl] = np.einsum("nyx,nyx->n", p, img) / p2
            err[sl] = np.sqrt(np.einsum("nyx,nyx->n", p * p, v)) / p2
    return flux, err


def mask_flags(mask, x, y, radius: float, bits: dict) -> dict:
    """Which mask planes are set within ``radius`` of each source, and off-image pixels.

    Parameters
    ----------
    mask : ndarray of int
        The CCD's mask bit planes.
    x, y : ndarray
        Source positions.
    radius : float
        Pixels within this distance count.
    bits : dict
        ``{name: bitmask}`` to test.

    Returns
    -------
    dict
        ``{name: bool array}`` plus ``"off_image"`` (part of the disc lies off the CCD).
    """
    half = int(np.ceil(radius))
    out = {name: np.zeros(len(x), bool) for name in bits}
    out["off_image"] = np.zeros(len(x), bool)
    for sl in _blocks(len(x), half):
        st = cut_stamps(x[sl], y[sl], half, mask.shape)
        disc = (st.dx ** 2 + st.dy ** 2) <= radius ** 2
        m = np.where(disc & st.inside, st.take(mask), 0)
        ored = np.bitwise_or.reduce(m.reshape(len(m), -1), axis=1)
        for name, b in bits.items():
            out[name][sl] = (ored & b) != 0
        out["off_image"][sl] = np.any(disc & ~st.inside, axis=(1, 2))
    return out
