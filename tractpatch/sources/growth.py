"""Curve of growth and the aperture correction to TOTAL flux (DAOGROW-like).

jointcal calibrates ``flux_psf`` against a reference catalog of total fluxes, and coadds
inherit that scale, so ``flux_psf`` must estimate the total flux of a star. A
Gaussian matched filter put on the scale of a finite aperture (12 px) misses the
Moffat wings of a ground-based PSF: 0.3 % of the light at FWHM 3 px, 6.4 % at FWHM
7 px (beta = 3), which varies with the seeing from visit to visit.

Method (after Stetson 1990, PASP 102, 932):

1. Growth stars: bright, unflagged stars of the CCD's stellar locus whose outer
   aperture and sky annulus lie on the CCD, with no rejected (masked, saturated, CR)
   pixel in the outer aperture and no detection brighter than ``isolation_ratio`` of
   the star whose light reaches it (within ``r_out + 3 sigma`` of the neighbour), and
   whose outer-aperture sky noise is below ``max_error``.
2. Each is measured in a sequence of apertures (1 FWHM .. ``outer_fwhm`` FWHM, capped
   by ``max_radius`` and the CCD size, plus the reference radius r_ref) in one
   ``sep.sum_circle`` call, with a local sky: the median of the annulus
   ``[r_out + gap, r_out + gap + width]`` without other sources' footprints.
3. The curves are normalised at r_ref; outlying curves (> 5 robust sigma at r_out) are
   rejected and the per-radius median of the rest is fitted with ONE Moffat growth
   curve for the CCD, ``EE(r) = 1 - (1 + (r/alpha)^2)^(1 - beta)``, corrected for the
   star's own light in the sky annulus (the local sky removes ``pi r^2`` times the mean
   wing surface brightness there: ``G(r) = EE(r) - r^2 (EE(r2) - EE(r1)) /
   (r2^2 - r1^2)``). A Gaussian PSF is the limit beta -> infinity (bounded at 200).
4. The flux scale comes from a small core aperture (``core_fwhm`` FWHM, least sky
   noise) on all isolated locus stars: ``ln(f_core / f_gauss / EE(r_core))`` is fitted
   as a plane over the CCD (the PSF size varies by several per cent over a CCD, and a
   fixed-width Gaussian filter loses as much flux), with alpha scaled by the locally
   fitted stellar FWHM. ``flux_psf = f_gauss x APCORR x exp(APCDX (x/NX - 0.5) +
   APCDY (y/NY - 0.5))``; ``APCORR = APCREF x APCINF`` with APCREF the Gaussian ->
   r_ref scale (what flux_psf used to be on) and ``APCINF = 1 / EE(r_ref)``.

Fallbacks, flagged in the header keyword GROWMETH:

- ``fallback-beta`` (fewer than ``min_stars`` growth stars, or a failed fit): the
  shape inside r_ref from all isolated locus stars (global sky), fitted with a Moffat
  of fixed ``fallback_beta`` (alpha only); beyond r_ref the assumed beta rules.
- ``fallback-fwhm`` (fewer than 3 such stars): the median Gaussian -> r_ref ratio of
  the locus stars times ``1 / EE(r_ref)`` of a Moffat of ``fallback_beta`` and the
  CCD's (adaptive-moment) FWHM; no correction beyond r_ref when ``fallback_beta`` is
  None.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from .stamps import stamp_index


def moffat_alpha(fwhm, beta):
    """Moffat core width ``alpha`` of a profile of ``fwhm`` (same units)."""
    return np.asarray(fwhm, float) / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_enclosed(r, alpha, beta):
    """Fraction of a Moffat profile's total flux within radius ``r``."""
    return 1.0 - (1.0 + (np.asarray(r, float) / alpha) ** 2) ** (1.0 - beta)


def local_sky_curve(r, alpha, beta, r_in, r_out):
    """Moffat growth curve as measured with a local sky from the annulus ``[r_in, r_out]``.

    The annulus holds ``EE(r_out) - EE(r_in)`` of the star's light; subtracting its mean
    surface brightness over ``pi r^2`` removes ``r^2 (EE(r_out) - EE(r_in)) /
    (r_out^2 - r_in^2)`` of the total from the aperture at ``r``.
    """
    r = np.asarray(r, float)
    ann = (moffat_enclosed(r_out, alpha, beta) - moffat_enclosed(r_in, alpha, beta)) \
        / (r_out ** 2 - r_in ** 2)
    return moffat_enclosed(r, alpha, beta) - r ** 2 * ann


@dataclass
class GrowthCurve:
    """The CCD's curve of growth and its aperture corrections.

    Attributes
    ----------
    method : str
        ``moffat`` (fitted on the growth stars) or ``fallback``.
    alpha, beta : float
        Moffat parameters (pixels); in the fallback, the assumed ones (NaN if none).
    n_stars : int
        Growth stars used.
    r_ref : float
        Reference aperture radius (pixels; the largest catalog aperture).
    r_out : float
        Outer aperture radius of the growth curves (NaN in the fallback).
    apcorr_ref : float
        Gaussian matched-filter flux -> reference-aperture flux.
    apcorr_inf : float
        Reference-aperture flux -> total flux (``1 / G(r_ref)``).
    radii, curve : ndarray
        The measured median normalised growth curve (empty in the fallback).
    fit_rms : float
        RMS of the fit residuals (fraction of the reference flux).
    """

    method: str
    alpha: float
    beta: float
    n_stars: int
    r_ref: float
    r_out: float
    apcorr_ref: float
    apcorr_inf: float
    radii: np.ndarray
    curve: np.ndarray
    fit_rms: float
    apcorr_ref_global: float = np.nan
    r_core: float = np.nan
    n_ref: int = 0
    grad_x: float = 0.0
    grad_y: float = 0.0
    shape: tuple = (1, 1)

    @property
    def apcorr(self) -> float:
        """Gaussian matched-filter flux -> total flux."""
        return self.apcorr_ref * self.apcorr_inf

    def apcorr_at(self, x, y) -> np.ndarray:
        """Gaussian matched-filter flux -> total flux at pixels ``(x, y)``:
        ``apcorr x exp(grad_x (x / nx - 0.5) + grad_y (y / ny - 0.5))`` (the PSF size
        and so the matched filter's loss vary over a CCD)."""
        ny, nx = self.shape
        return self.apcorr * np.exp(self.grad_x * (np.asarray(x) / nx - 0.5)
                                    + self.grad_y * (np.asarray(y) / ny - 0.5))

    def enclosed(self, r) -> np.ndarray:
        """Model fraction of the total flux within ``r`` (no local sky)."""
        return moffat_enclosed(r, self.alpha, self.beta)


def _isolated(x, y, flux, size, cand, radius, ratio, block=256):
    """Candidates with no other detection brighter than ``ratio`` x theirs within
    ``radius + 3 size`` (``size``: the neighbour's rms radius, so an extended galaxy
    whose light reaches into the sky annulus counts).

    Vectorised over blocks of candidates sorted by y: each block is compared with all
    detections of its y strip (widened by the largest reach), so the cost stays near
    ``n_candidates x n_detections x strip / ny``.
    """
    idx = np.flatnonzero(cand)
    if idx.size == 0:
        return cand
    size = np.where(np.isfinite(size), size, 0.0)
    reach = radius + 3.0 * size
    r_max = float(np.max(reach))
    fl = np.where(np.isfinite(flux), flux, np.inf)  # unmeasured neighbours count
    order = np.argsort(y, kind="stable")
    ys = y[order]
    idx = idx[np.argsort(y[idx], kind="stable")]
    ok = cand.copy()
    for start in range(0, idx.size, block):
        i = idx[start:start + block]
        nb = order[np.searchsorted(ys, y[i[0]] - r_max, "left"):
                   np.searchsorted(ys, y[i[-1]] + r_max, "right")]
        d = np.hypot(x[nb][None, :] - x[i][:, None], y[nb][None, :] - y[i][:, None])
        hit = (fl[nb][None, :] > ratio * flux[i][:, None]) & (d < reach[nb][None, :]) \
            & (nb[None, :] != i[:, None])
        ok[i] = ~hit.any(axis=1)
    return ok


def _annulus_median(data, reject, x, y, r_in, r_out):
    """Median of the good pixels of each source's annulus (NaN where none).

    Rows are sorted once (NaNs last) and the middle of each row's good values read off,
    instead of a per-row ``nanmedian``.
    """
    half = int(np.ceil(r_out)) + 1
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    flat, inside, gx, gy = stamp_index(x, y, half, data.shape)
    r2 = ((gx - x[:, None]) ** 2)[:, None, :] + ((gy - y[:, None]) ** 2)[:, :, None]
    use = (inside & (r2 >= r_in ** 2) & (r2 <= r_out ** 2)
           & ~np.take(np.ascontiguousarray(reject).reshape(-1), flat)).reshape(len(x), -1)
    vals = np.where(use, np.take(np.ascontiguousarray(data).reshape(-1), flat)
                    .reshape(len(x), -1), np.nan)
    vals.sort(axis=1)
    k = use.sum(axis=1)
    lo = np.take_along_axis(vals, np.clip((k - 1) // 2, 0, None)[:, None], 1)[:, 0]
    hi = np.take_along_axis(vals, np.clip(k // 2, 0, vals.shape[1] - 1)[:, None], 1)[:, 0]
    return np.where(k > 0, 0.5 * (lo + hi), np.nan)


def _touches(reject, x, y, use, radius):
    """Sources of ``use`` with a ``reject`` pixel overlapping the disc of ``radius``:
    the count of reject pixels whose centres lie within ``radius + sqrt(2) / 2`` (every
    pixel that overlaps the disc; one sep call on the boolean image read as bytes,
    pixel centres only, no exact overlaps)."""
    out = np.zeros(len(x), bool)
    if use.any() and reject.any():
        n, _, _ = sep.sum_circle(np.ascontiguousarray(reject, dtype=bool).view(np.uint8),
                                 x[use], y[use], radius + np.sqrt(0.5), subpix=1)
        out[use] = np.asarray(n) > 0.5
    return out


def _spatial_scale(x, y, shape, ref, f_core, e_core, f_gauss, fwhm_star, r_core, alpha,
                   beta, floor=0.003, nsig=3.0, min_gradient_stars=10):
    """``ln(total / f_gauss)`` over the CCD: ``c0 + cx (x/nx - 0.5) + cy (y/ny - 0.5)``.

    Each star's total flux is its core-aperture flux over the enclosed fraction of a
    Moffat whose alpha scales with the locally fitted stellar FWHM (a linear fit of the
    stars' adaptive sizes over the CCD): the PSF size varies by several per cent over
    a CCD, and the Gaussian matched filter of fixed width loses as much flux. Weighted
    least squares (errors: the core aperture's, plus ``floor``) with ``nsig`` clipping;
    a constant only with fewer than ``min_gradient_stars`` stars.

    Returns
    -------
    c0, cx, cy : float
    n : int
        Stars kept.
    """
    ny, nx = shape
    ok = ref & np.isfinite(f_core) & (f_core > 0) & (f_gauss > 0) & (e_core > 0)
    n = int(ok.sum())
    if n < 3:
        return np.nan, 0.0, 0.0, n
    u = x[ok] / nx - 0.5
    v = y[ok] / ny - 0.5
    grad = n >= min_gradient_stars
    a = np.column_stack([np.ones(n), u, v]) if grad else np.ones((n, 1))
    # the local PSF size relative to the CCD's (robust linear fit of the star sizes)
    fw = fwhm_star[ok]
    good = np.isfinite(fw)
    scale = np.ones(n)
    if grad and good.sum() >= min_gradient_stars:
        keep = good.copy()
        for _ in range(3):
            c = np.linalg.lstsq(a[keep], fw[keep], rcond=None)[0]
            res = fw - a @ c
            mad = 1.4826 * np.median(np.abs(res[keep]))
            keep = good & (np.abs(res) < 3 * max(mad, 1e-3))
        scale = (a @ c) / c[0]
    q = np.log(f_core[ok] / f_gauss[ok]
               / moffat_enclosed(r_core, alpha * scale, beta))
    err = np.hypot(e_core[ok] / f_core[ok], floor)
    w = 1.0 / err
    keep = np.abs(q - np.median(q)) < 10 * max(1.4826 * np.median(
        np.abs(q - np.median(q))), floor)
    coef = np.zeros(a.shape[1])
    for _ in range(10):
        if keep.sum() < a.shape[1] + 2:
            break
        coef = np.linalg.lstsq(a[keep] * w[keep, None], q[keep] * w[keep], rcond=None)[0]
        new = np.abs(q - a @ coef) < nsig * err
        if np.array_equal(new, keep):
            break
        keep = new
    if not keep.any():
        return np.nan, 0.0, 0.0, 0
    cx, cy = (float(coef[1]), float(coef[2])) if grad else (0.0, 0.0)
    return float(coef[0]), cx, cy, int(keep.sum())


def _fallback(apcorr_ref, n, r_ref, fwhm, beta) -> GrowthCurve:
    """No usable star profile: the measured Gaussian -> r_ref ratio and a Moffat of
    ``beta`` with the CCD's FWHM beyond r_ref (``fallback-fwhm``)."""
    if beta is None or not np.isfinite(fwhm):
        alpha, b, inf = np.nan, np.nan, 1.0
    else:
        alpha, b = float(moffat_alpha(fwhm, beta)), float(beta)
        inf = 1.0 / float(moffat_enclosed(r_ref, alpha, b))
    return GrowthCurve("fallback-fwhm", alpha, b, 0, r_ref, np.nan, apcorr_ref, inf,
                       np.zeros(0), np.zeros(0), np.nan, apcorr_ref, r_ref, n)


def _fit_curve(radii, curve, sigma, k_ref, model, p0, lo, hi, max_iter=400):
    """Least-squares fit of ``model(radii, *p) / model(r_ref, *p)`` to ``curve``.

    A bounded Levenberg-Marquardt in numpy on ``p / |p0|`` (forward-difference
    Jacobian; a parameter on a bound that the gradient pushes outward is held there).
    For these one- or two-parameter fits it reaches scipy's ``least_squares`` minimum
    (tested: enclosed fractions equal to 4e-7) without importing scipy.optimize, which
    cost ~0.35 s CPU per detectSources.py command (scipy.linalg with it). Returns None
    when the model is not finite at the start.
    """
    def resid(p):
        g = model(radii, *p)
        return (g / g[k_ref] - curve) / sigma

    scale = np.abs(np.asarray(p0, float))
    lo = np.asarray(lo, float) / scale
    hi = np.asarray(hi, float) / scale
    u = np.clip(np.asarray(p0, float) / scale, lo, hi)
    with np.errstate(all="ignore"):
        r = resid(u * scale)
        cost = r @ r
        if not np.isfinite(cost):
            return None
        lam = 1e-3
        for _ in range(max_iter):
            h = 1e-7 * np.maximum(np.abs(u), 1.0)
            jac = np.empty((r.size, u.size))
            for j in range(u.size):
                du = u.copy()
                du[j] = du[j] + h[j] if du[j] + h[j] <= hi[j] else du[j] - h[j]
                jac[:, j] = (resid(du * scale) - r) / (du[j] - u[j])
            if not np.all(np.isfinite(jac)):
                return None
            a = jac.T @ jac
            g = jac.T @ r
            free = ~(((u <= lo) & (g > 0)) | ((u >= hi) & (g < 0)))
            if not free.any():
                break
            af = a[np.ix_(free, free)]
            while True:  # raise the damping until the cost does not grow
                step = np.zeros_like(u)
                step[free] = np.linalg.solve(af + lam * np.diag(np.diag(af) + 1e-12),
                                             -g[free])
                new = np.clip(u + step, lo, hi)
                r_new = resid(new * scale)
                c_new = r_new @ r_new
                if np.isfinite(c_new) and c_new <= cost:
                    break
                lam *= 10.0
                if lam > 1e12:  # no decrease left: converged
                    return u * scale
            moved = np.max(np.abs(new - u) / np.maximum(np.abs(u), 1e-12))
            drop = cost - c_new
            u, r, cost, lam = new, r_new, c_new, max(lam / 10.0, 1e-9)
            if drop <= 1e-12 * max(cost, 1e-300) or moved < 1e-10:
                break
    return u * scale


def _median_curve(f, k_ref):
    """Median of the curves ``f`` (stars x radii) normalised at column ``k_ref``, and
    the error of that median (with a floor)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = f / f[:, k_ref:k_ref + 1]
    norm = norm[np.all(np.isfinite(norm), axis=1) & (f[:, k_ref] > 0)]
    if len(norm) == 0:
        return None, None, 0
    curve = np.median(norm, axis=0)
    scatter = 1.4826 * np.median(np.abs(norm - curve), axis=0)
    return curve, 1.25 * scatter / np.sqrt(len(norm)) + 2e-4, len(norm)


def _fixed_beta(data, var, gain, x, y, ref, flux_gauss, fwhm, r_ref, r_core, beta,
                n_radii, fb, fwhm_star, min_gradient_stars):
    """Too few growth stars: the shape inside r_ref from all isolated locus stars
    (global sky), fitted with a Moffat of fixed ``beta`` (``fallback-beta``)."""
    if beta is None or ref.sum() < 3:
        return _fallback(*fb)
    radii = np.unique(np.concatenate([np.linspace(0.7 * fwhm, r_ref, n_radii),
                                      [r_core]]))
    radii = radii[radii <= r_ref]
    k_ref, k_core = radii.size - 1, int(np.flatnonzero(radii == r_core)[0])
    n, k = int(ref.sum()), radii.size
    f, e, _ = sep.sum_circle(data, np.repeat(x[ref], k), np.repeat(y[ref], k),
                             np.tile(radii, n), var=var, gain=gain, subpix=0)
    f = np.asarray(f, float).reshape(n, k)
    e = np.asarray(e, float).reshape(n, k)
    curve, sigma, m = _median_curve(f, k_ref)
    if m < 3:
        return _fallback(*fb)
    a0 = float(moffat_alpha(fwhm, beta))
    p = _fit_curve(radii, curve, sigma, k_ref, lambda r, a: moffat_enclosed(r, a, beta),
                   [a0], [0.05 * a0], [50 * a0])
    if p is None:
        return _fallback(*fb)
    alpha = float(p[0])
    f_core = np.full(len(x), np.nan)
    e_core = np.full(len(x), np.nan)
    f_core[ref], e_core[ref] = f[:, k_core], e[:, k_core]
    c0, cx, cy, n_ref = _spatial_scale(x, y, data.shape, ref, f_core, e_core, flux_gauss,
                                       fwhm_star, r_core, alpha, beta,
                                       min_gradient_stars=min_gradient_stars)
    if n_ref < 3 or not np.isfinite(c0):
        return _fallback(*fb)
    e_ref = float(moffat_enclosed(r_ref, alpha, beta))
    ratio = np.exp(c0) * e_ref
    rms = float(np.sqrt(np.mean((moffat_enclosed(radii, alpha, beta) / e_ref
                                 - curve) ** 2)))
    return GrowthCurve("fallback-beta", alpha, float(beta), m, float(r_ref), float(r_ref),
                       ratio, 1.0 / e_ref, radii, curve, rms, fb[0], r_core, n_ref,
                       cx, cy, data.shape)


def fit_growth_curve(data, var, reject, x, y, stars, flux_ref_global, flux_ref_err,
                     flux_gauss, fwhm, r_ref, flux_all=None, size=None, sky_reject=None, *, outer_fwhm=4.0, max_radius=40.0,
                     min_radius=None, sky_gap=2.0, sky_width=None, min_stars=5,
                     max_stars=200, isolation_ratio=0.01, fallback_beta=3.0,
                     n_radii=12, sky_sigma=None, max_error=0.005, core_fwhm=1.0,
                     gain=None, fwhm_star=None, min_gradient_stars=10) -> GrowthCurve:
    """Fit the CCD's curve of growth and derive the aperture correction to total flux.

    Parameters
    ----------
    data, var : ndarray
        Background-subtracted image and its variance.
    reject : ndarray of bool
        Pixels that must not lie in a growth star's apertures (masked, saturated,
        cosmic rays); also left out of the sky annuli.
    x, y : ndarray
        Positions of all detections.
    stars : ndarray of bool
        Bright, unflagged stars (the stellar locus); growth stars are chosen among them.
    flux_ref_global : ndarray
        Reference-aperture flux of every detection (global sky), for the fallback and
        the isolation test.
    flux_ref_err : ndarray
        Its error.
    flux_gauss : ndarray
        Gaussian matched-filter flux of every detection.
    fwhm : float
        PSF FWHM (pixels).
    r_ref : float
        Reference aperture radius (pixels).
    flux_all : ndarray, optional
        Brightness used in the isolation test (default ``flux_ref_global``).
    sky_reject : ndarray of bool, optional
        Pixels left out of the local sky annuli (default ``reject``): other sources'
        footprints.
    size : ndarray, optional
        Gaussian-equivalent sigma of every detection (pixels; default 0): a neighbour counts in
        the isolation test out to ``r_sky_out + 3 size``.
    outer_fwhm, max_radius, min_radius : float
        Outer growth radius ``outer_fwhm x fwhm``, at most ``max_radius`` and at least
        ``min_radius`` (default ``1.25 r_ref``), then capped by the CCD size.
    sky_gap, sky_width : float
        Local sky annulus beyond the outer radius (width default ``max(6, fwhm)``).
    min_stars, max_stars : int
        Fewer growth stars: fallback; more: the brightest are used.
    isolation_ratio : float
        A neighbour brighter than this fraction of the star within ``r_out + 3 size``
        of it disqualifies the star.
    fallback_beta : float or None
        Moffat beta assumed in the fallback.
    n_radii : int
        Apertures in the growth sequence (plus ``r_ref``).
    sky_sigma : float, optional
        Per-pixel sky noise; with it, growth stars must have a sky-noise error of their
        outer-aperture flux (aperture plus local-sky terms) below ``max_error`` of their
        flux (faint stars' curves are dominated by sky noise).
    max_error : float
        See ``sky_sigma``.
    core_fwhm : float
        Radius (in FWHM) of the core aperture that sets the flux scale on all isolated
        locus stars.
    gain : float, optional
        e-/count, for the core apertures' errors (weights).
    fwhm_star : ndarray, optional
        Every detection's own FWHM (pixels): its variation over the CCD scales the
        Moffat alpha in the position-dependent correction (:func:`_spatial_scale`).
    min_gradient_stars : int
        Fewer core-aperture stars: a constant correction over the CCD (a plane fitted
        to a few stars is noisier than the PSF's variation over a CCD).

    Returns
    -------
    GrowthCurve
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    flux_all = flux_ref_global if flux_all is None else flux_all
    ok_old = stars & (flux_gauss > 0) & np.isfinite(flux_ref_global) \
        & (flux_ref_global > 0)
    n_old = int(ok_old.sum())
    apcorr_old = float(np.median(flux_ref_global[ok_old] / flux_gauss[ok_old])) \
        if n_old else 1.0
    fallback = (apcorr_old, n_old, float(r_ref), float(fwhm), fallback_beta)
    if not np.isfinite(fwhm) or fwhm <= 0:
        return _fallback(*fallback)
    size = np.zeros(len(x)) if size is None else np.asarray(size, float)
    fwhm_star = np.full(len(x), np.nan) if fwhm_star is None else np.asarray(fwhm_star,
                                                                              float)
    # The flux scale comes from a small aperture (``core_fwhm`` FWHM) on all isolated
    # locus stars: there the sky noise and the sky's errors are several times smaller
    # than at r_ref, and the fitted curve carries it to infinity (DAOGROW).
    r_core = float(np.clip(core_fwhm * fwhm, 1.0, r_ref))
    ref = _isolated(x, y, np.asarray(flux_all, float), size,
                    ok_old & ~_touches(reject, x, y, ok_old, r_ref), r_ref, isolation_ratio)

    def fail():
        return _fixed_beta(data, var, gain, x, y, ref, flux_gauss, fwhm, r_ref, r_core,
                           fallback_beta, n_radii, fallback, fwhm_star,
                           min_gradient_stars)

    width = sky_width if sky_width is not None else max(6.0, fwhm)
    ny, nx = data.shape
    r_min = 1.25 * r_ref if min_radius is None else min_radius
    r_out = min(max(outer_fwhm * fwhm, r_min), max_radius)
    # the whole annulus of a star must fit on the CCD with room to spare
    r_out = min(r_out, 0.5 * min(nx, ny) - sky_gap - width - 2.0)
    if r_out <= r_ref:
        return fail()
    r1, r2 = r_out + sky_gap, r_out + sky_gap + width

    on_ccd = (x >= r2) & (x <= nx - 1 - r2) & (y >= r2) & (y <= ny - 1 - r2)
    cand = ok_old & on_ccd
    if cand.sum() < min_stars:
        return fail()
    cand &= ~_touches(reject, x, y, cand, r_out)
    # neighbours whose light reaches the outer aperture disqualify a star; those only
    # reaching the sky annulus are masked there (sky_reject) and the median copes
    cand = _isolated(x, y, np.asarray(flux_all, float), size, cand, r_out,
                     isolation_ratio)
    idx = np.flatnonzero(cand)
    if idx.size < min_stars:
        return fail()
    if sky_sigma is not None and np.isfinite(sky_sigma):
        n_ann = np.pi * (r2 ** 2 - r1 ** 2)
        area = np.pi * r_out ** 2
        # aperture noise plus the local sky's (median: 1.57 x the variance of a mean)
        err = sky_sigma * np.sqrt(area + area ** 2 * 1.57 / n_ann)
        idx = idx[err < max_error * flux_ref_global[idx]]
        if idx.size < min_stars:
            return fail()
    idx = idx[np.argsort(-flux_ref_global[idx])][:max_stars]

    radii = np.unique(np.concatenate([np.linspace(fwhm, r_out, n_radii), [r_ref]]))
    k_ref = int(np.flatnonzero(radii == r_ref)[0])
    n, k = idx.size, radii.size
    f, _, _ = sep.sum_circle(data, np.repeat(x[idx], k), np.repeat(y[idx], k),
                             np.tile(radii, n), subpix=0)
    sky = _annulus_median(data, reject if sky_reject is None else sky_reject,
                          x[idx], y[idx], r1, r2)
    f_loc = np.asarray(f, float).reshape(n, k) - np.pi * radii[None, :] ** 2 * sky[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = f_loc / f_loc[:, k_ref:k_ref + 1]
    good = np.all(np.isfinite(norm), axis=1) & (f_loc[:, k_ref] > 0)
    # reject outlying curves (neighbours, undetected companions, residual CRs) at r_out
    for _ in range(3):
        if good.sum() < min_stars:
            return fail()
        med = np.median(norm[good, -1])
        mad = 1.4826 * np.median(np.abs(norm[good, -1] - med))
        keep = good & (np.abs(norm[:, -1] - med) <= 5 * max(mad, 1e-4))
        if np.array_equal(keep, good):
            break
        good = keep
    if good.sum() < min_stars:
        return fail()
    curve = np.median(norm[good], axis=0)
    scatter = 1.4826 * np.median(np.abs(norm[good] - curve), axis=0)
    sigma = 1.25 * scatter / np.sqrt(good.sum()) + 2e-4  # error of a median, a floor

    a0 = float(moffat_alpha(fwhm, 3.0))
    # beta up to 200: a Gaussian PSF is the limit beta -> infinity
    p = _fit_curve(radii, curve, sigma, k_ref,
                   lambda r, a, b: local_sky_curve(r, a, b, r1, r2), [a0, 3.0],
                   [0.05 * a0, 1.05], [50 * a0, 200.0])
    if p is None:
        return fail()
    alpha, beta = (float(v) for v in p)
    g_ref = float(local_sky_curve(r_ref, alpha, beta, r1, r2))
    if not (0 < g_ref <= 1.0):
        return fail()
    g_model = local_sky_curve(radii, alpha, beta, r1, r2)
    rms = float(np.sqrt(np.mean((g_model / g_ref - curve) ** 2)))
    f_core = np.full(len(x), np.nan)
    e_core = np.full(len(x), np.nan)
    if ref.any():
        f_c, e_c, _ = sep.sum_circle(data, x[ref], y[ref], r_core, var=var, gain=gain,
                                     subpix=0)
        f_core[ref], e_core[ref] = f_c, e_c
    c0, cx, cy, n_ref = _spatial_scale(x, y, data.shape, ref, f_core, e_core, flux_gauss,
                                       fwhm_star, r_core, alpha, beta,
                                       min_gradient_stars=min_gradient_stars)
    if n_ref < 3 or not np.isfinite(c0):
        return fail()
    e_ref = float(moffat_enclosed(r_ref, alpha, beta))
    # reported as Gaussian -> r_ref (APCREF) times r_ref -> total (APCINF), at the centre
    ratio = np.exp(c0) * e_ref
    # flux_psf = g x ratio / EE(r_ref); APCREF x APCINF = that, APCINF = 1 / EE(r_ref)
    return GrowthCurve("moffat", alpha, beta, int(good.sum()), float(r_ref),
                       float(r_out), ratio, 1.0 / e_ref, radii, curve, rms,
                       apcorr_old, r_core, n_ref, cx, cy, data.shape)
