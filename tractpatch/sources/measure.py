"""Source measurement: aperture and PSF-like fluxes and mask flags.

Everything is vectorised over sources: sep's array calls, numpy on per-source pixel
stamps (:mod:`.stamps`, in blocks of sources to bound memory). No numba here: loading
its cached kernels cost about a second per command. The windowed centroids and
adaptive sizes are in :mod:`.window`.

Choices (documented for the catalog's users):

- The PSF-like flux is the optimal (matched-filter) flux for a circular Gaussian PSF of
  the CCD's stellar FWHM at the windowed centroid, ``F = sum(P I) / sum(P^2)``, with error
  ``sqrt(sum(P^2 V)) / sum(P^2)``; masked pixels get zero weight (still unbiased for a
  Gaussian star). :mod:`.growth` multiplies it by an aperture correction to infinity
  measured on the CCD's stars (curve of growth), so for stars it is the total flux.
"""
from __future__ import annotations

import numpy as np
import sep

from .stamps import any_bad, source_blocks, stamp_index, window_stamps

#: Gaussian FWHM / sigma.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


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
    bad = any_bad(bad)
    for sl in source_blocks(len(x), half):
        (img, v), gx, gy, good = window_stamps([data, var], bad, x[sl], y[sl], half)
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
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    out = {name: np.zeros(len(x), bool) for name in bits}
    out["off_image"] = np.zeros(len(x), bool)
    flat_mask = np.ascontiguousarray(mask).reshape(-1) if np.any(mask) else None
    for sl in source_blocks(len(x), half):
        flat, inside, gx, gy = stamp_index(x[sl], y[sl], half, mask.shape)
        dx2 = (gx - x[sl, None]) ** 2
        dy2 = (gy - y[sl, None]) ** 2
        disc = dx2[:, None, :] + dy2[:, :, None] <= radius ** 2
        out["off_image"][sl] = np.any(disc & ~inside, axis=(1, 2))
        if flat_mask is None:  # no plane set anywhere: only the edge test
            continue
        m = np.where(disc & inside, np.take(flat_mask, flat), 0)
        ored = np.bitwise_or.reduce(m.reshape(len(m), -1), axis=1)
        for name, b in bits.items():
            out[name][sl] = (ored & b) != 0
    return out
