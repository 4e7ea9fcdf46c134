"""The stellar locus of a CCD, the aperture correction, and the star/galaxy split.

- The stellar locus is the densest narrow group of sizes (adaptive-moment FWHM)
  among bright, unflagged sources: stars all share the PSF size, galaxies are larger and
  spread out. Its median is the CCD's PSF FWHM.
- The aperture correction to TOTAL flux is in :mod:`.growth`;
  :func:`aperture_correction` (median largest-aperture / Gaussian flux ratio) is the
  older largest-aperture scale. The star test below compares the PSF flux on the
  largest aperture's scale (``flux_psf / APCINF``) with that aperture's flux.
- A source is a star when its concentration ``c = flux_psf / flux_ap_max`` (1 for a
  point source after aperture correction, below 1 for an extended one, about 2 for a
  cosmic ray) lies within ``tolerance + nsigma * sigma_c`` of 1 — like LSST's
  extendedness from the PSF/model flux ratio, so faint unresolved sources stay stars.
  Cosmic-ray tracks can mimic that ratio, so a star must also not be much sharper than
  the locus (``fwhm > min_size x locus``) nor much more elongated than the locus stars
  (``a/b < median_locus(a/b) + 0.5 + 5/snr``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StellarLocus:
    """The CCD's stellar size locus.

    Attributes
    ----------
    fwhm : float
        PSF FWHM in pixels (NaN when no candidate exists).
    members : ndarray of bool
        Sources on the locus (candidates within ``width`` of it).
    """

    fwhm: float
    members: np.ndarray


def stellar_locus(fwhm: np.ndarray, candidate: np.ndarray,
                  width: float = 0.15, min_fwhm: float = 1.0) -> StellarLocus:
    """Find the stellar locus among ``candidate`` sources.

    Parameters
    ----------
    fwhm : ndarray
        Size of every source (pixels).
    candidate : ndarray of bool
        Bright, unflagged sources to consider.
    width : float
        Fractional half-width of the locus.
    min_fwhm : float
        Smaller sizes are cosmic rays or hot pixels, never stars.
    """
    use = candidate & np.isfinite(fwhm) & (fwhm >= min_fwhm)
    f = np.sort(fwhm[use])
    if f.size == 0:
        return StellarLocus(np.nan, np.zeros(len(fwhm), bool))
    # densest window of k consecutive sorted sizes (relative span)
    k = max(1, min(f.size, max(3, f.size // 4)))
    span = (f[k - 1:] - f[: f.size - k + 1]) / f[: f.size - k + 1]
    i = int(np.argmin(span))
    centre = float(np.median(f[i:i + k]))
    for _ in range(3):  # refine on the members
        members = use & (np.abs(fwhm / centre - 1) < width)
        if not members.any():
            break
        centre = float(np.median(fwhm[members]))
    members = use & (np.abs(fwhm / centre - 1) < width)
    return StellarLocus(centre, members)


def aperture_correction(flux_ap_max: np.ndarray, flux_gauss: np.ndarray,
                        stars: np.ndarray, min_stars: int = 1) -> tuple[float, int]:
    """Median ``flux_ap_max / flux_gauss`` over ``stars``; 1.0 when too few stars.

    Returns
    -------
    apcorr : float
    n : int
        Number of stars used.
    """
    ok = stars & (flux_gauss > 0) & np.isfinite(flux_ap_max) & (flux_ap_max > 0)
    n = int(ok.sum())
    if n < min_stars:
        return 1.0, n
    return float(np.median(flux_ap_max[ok] / flux_gauss[ok])), n


def is_star(flux_psf, flux_psf_err, flux_ap, flux_ap_err, tolerance: float = 0.05,
            nsigma: float = 3.0, fwhm=None, locus_fwhm: float | None = None,
            min_size: float = 0.7, elongation=None,
            locus_elongation: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Star/galaxy split from the concentration ``flux_psf / flux_ap``.

    Parameters
    ----------
    flux_psf, flux_psf_err, flux_ap, flux_ap_err : ndarray
        Aperture-corrected PSF flux and the largest aperture flux, with errors.
    tolerance, nsigma : float
        A star has ``|c - 1| < tolerance + nsigma * sigma_c``.
    fwhm, locus_fwhm, min_size : optional
        When given, a star also has ``fwhm > min_size * locus_fwhm``.
    elongation, locus_elongation : optional
        When given (``a/b`` and its locus median), a star also has
        ``elongation < locus_elongation + 0.5 + 5 / snr``.

    Returns
    -------
    star : ndarray of bool
    concentration : ndarray
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        c = flux_psf / flux_ap
        sc = np.abs(c) * np.sqrt((flux_psf_err / flux_psf) ** 2
                                 + (flux_ap_err / flux_ap) ** 2)
    star = np.isfinite(c) & (flux_ap > 0) & (np.abs(c - 1) < tolerance + nsigma * sc)
    if fwhm is not None and locus_fwhm is not None and np.isfinite(locus_fwhm):
        star &= np.asarray(fwhm) > min_size * locus_fwhm
    if elongation is not None and locus_elongation is not None \
            and np.isfinite(locus_elongation):
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.abs(flux_psf / flux_psf_err)
        star &= np.asarray(elongation) < locus_elongation + 0.5 + 5.0 / snr
    return star, c
