"""Curve of growth and total-flux aperture correction (tractpatch.sources.growth).

Synthetic CCDs rendered here with a Moffat PSF of known alpha, beta (pixel-integrated
by 5x5 sub-sampling, evaluated over the whole CCD so the wings are complete), flat sky,
Gaussian sky noise plus source Poisson noise. Known answers: the analytic enclosed
fraction ``1 - (1 + (r/alpha)^2)^(1 - beta)`` and the stars' total fluxes.
"""
from __future__ import annotations

import numpy as np
import pytest

from tractpatch.image import Exposure, ExposureInfo
from tractpatch.sources.growth import (local_sky_curve, moffat_alpha, moffat_enclosed)
from tractpatch.sources.task import DetectSourcesConfig, measure_exposure

SKY, SKY_SIGMA, GAIN = 300.0, 8.0, 4.0
N = 400
SUB = 5


def _moffat_image(shape, xs, ys, fluxes, fwhm, beta):
    """Pixel-integrated Moffat stars summed over the full image (the truth renderer)."""
    alpha = float(moffat_alpha(fwhm, beta))
    ny, nx = shape
    off = (np.arange(SUB) + 0.5) / SUB - 0.5
    yy = (np.arange(ny)[:, None] + off[None, :]).ravel()
    xx = (np.arange(nx)[:, None] + off[None, :]).ravel()
    norm = (beta - 1) / (np.pi * alpha ** 2) / SUB ** 2
    img = np.zeros((ny * SUB, nx * SUB))
    for x, y, f in zip(xs, ys, fluxes):  # rendering the truth, not the code under test
        r2 = (xx[None, :] - x) ** 2 + (yy[:, None] - y) ** 2
        img += f * norm * (1 + r2 / alpha ** 2) ** (-beta)
    return img.reshape(ny, SUB, nx, SUB).sum(axis=(1, 3))


def _scene(fwhm, beta, seed):
    rng = np.random.default_rng(seed)
    g = np.arange(50, N - 40, 75.0)
    gx, gy = np.meshgrid(g, g)
    xs = gx.ravel() + rng.uniform(-3, 3, gx.size)
    ys = gy.ravel() + rng.uniform(-3, 3, gx.size)
    fluxes = 10 ** rng.uniform(4.3, 5.7, xs.size)
    img = _moffat_image((N, N), xs, ys, fluxes, fwhm, beta)
    noisy = SKY + img + rng.normal(0, SKY_SIGMA, img.shape) \
        + rng.normal(0, 1, img.shape) * np.sqrt(img / GAIN)
    var = np.full(img.shape, SKY_SIGMA ** 2, np.float32)
    exp = Exposure(image=noisy, variance=var,
                   info=ExposureInfo(visit=1, ccd=1, gain=GAIN))
    return exp, xs, ys, fluxes


def test_moffat_formulae_by_hand():
    # FWHM = 2 alpha sqrt(2^(1/beta) - 1): beta = 3, FWHM 7 -> alpha = 6.8663
    assert moffat_alpha(7.0, 3.0) == pytest.approx(7 / (2 * np.sqrt(2 ** (1 / 3) - 1)))
    # half the light within r = alpha for beta = 2: 1 - 2^-1
    assert moffat_enclosed(5.0, 5.0, 2.0) == pytest.approx(0.5)
    # beta = 3, FWHM 7 px: (1 + (12/6.866)^2)^-2 = 6.08 % outside 12 px
    a = moffat_alpha(7.0, 3.0)
    assert 1 - moffat_enclosed(12.0, a, 3.0) == pytest.approx(0.0608, abs=2e-4)
    # local sky from [r1, r2]: beta = 2 has EE = r^2/(r^2 + a^2) -> exact numbers
    g = local_sky_curve(10.0, 5.0, 2.0, 20.0, 30.0)
    ann = (900 / 925 - 400 / 425) / (900 - 400)
    assert g == pytest.approx(100 / 125 - 100 * ann)


@pytest.mark.parametrize("fwhm,beta", [(3.0, 3.0), (5.0, 2.5), (7.0, 3.0), (7.0, 2.5)])
def test_growth_curve_and_total_flux(fwhm, beta):
    exp, xs, ys, fluxes = _scene(fwhm, beta, seed=int(fwhm * 10 + beta * 100))
    res = measure_exposure(exp, DetectSourcesConfig())
    g = res.growth
    assert g.method == "moffat" and g.n_stars >= 5
    alpha = float(moffat_alpha(fwhm, beta))
    # the fitted curve recovers the analytic enclosed fraction at 12 px
    true12 = float(moffat_enclosed(12.0, alpha, beta))
    assert g.enclosed(12.0) == pytest.approx(true12, rel=0.003)
    assert g.apcorr_inf == pytest.approx(1 / true12, rel=0.003)
    # and the bright stars' flux_psf is their total flux
    t = res.table
    d = np.hypot(np.asarray(t["x"])[None, :] - xs[:, None],
                 np.asarray(t["y"])[None, :] - ys[:, None])
    j = np.argmin(d, axis=1)
    ok = (d[np.arange(len(xs)), j] < 1.5) & (t["flags"][j] == 0) & (t["snr"][j] > 100)
    assert ok.sum() >= 15
    ratio = t["flux_psf"][j][ok] / fluxes[ok]
    assert np.mean(ratio) == pytest.approx(1.0, abs=0.003), (np.mean(ratio), g)
    # whereas the largest aperture misses the wings (the old flux_psf scale)
    ap = t["flux_ap_12"][j][ok] / fluxes[ok]
    assert np.median(ap) == pytest.approx(true12, abs=0.005)
    # a constant PSF: no gradient of the correction over the CCD
    assert abs(g.grad_x) < 0.01 and abs(g.grad_y) < 0.01


def test_fallback_with_few_stars_is_flagged():
    """Two stars on a small CCD: no growth curve can be fitted; the correction beyond
    the largest aperture comes from a Moffat of the configured beta and the CCD's
    FWHM, and the method says so."""
    rng = np.random.default_rng(5)
    xs, ys, fl = np.array([40.0, 90.3]), np.array([45.2, 80.7]), np.array([2e5, 1e5])
    img = _moffat_image((128, 128), xs, ys, fl, 4.0, 3.0)
    noisy = SKY + img + rng.normal(0, SKY_SIGMA, img.shape)
    exp = Exposure(image=noisy, variance=np.full(img.shape, SKY_SIGMA ** 2),
                   info=ExposureInfo(visit=1, ccd=2))
    res = measure_exposure(exp, DetectSourcesConfig())
    g = res.growth
    assert g.method == "fallback-fwhm" and g.beta == 3.0
    assert g.apcorr_inf == pytest.approx(
        1 / moffat_enclosed(12.0, moffat_alpha(res.psf_fwhm_pix, 3.0), 3.0))
    none = measure_exposure(exp, DetectSourcesConfig(fallback_beta=None)).growth
    assert none.method == "fallback-fwhm" and none.apcorr_inf == 1.0


@pytest.mark.parametrize("fwhm,beta", [(3.0, 2.5), (5.0, 3.0), (8.0, 4.5)])
def test_fit_curve_recovers_moffat_and_matches_scipy(fwhm, beta):
    """The numpy Levenberg-Marquardt fit recovers a noiseless growth curve's alpha, beta
    and, on a noisy one, reaches scipy's least_squares minimum."""
    from scipy.optimize import least_squares

    from tractpatch.sources.growth import _fit_curve

    alpha = float(moffat_alpha(fwhm, beta))
    r_out = min(max(3 * fwhm, 15.0), 40.0)
    r1, r2 = r_out + 2.0, r_out + 2.0 + max(6.0, fwhm)
    radii = np.unique(np.r_[np.linspace(fwhm, r_out, 12), [12.0]])
    k = int(np.flatnonzero(radii == 12.0)[0])

    def model(r, a, b):
        return local_sky_curve(r, a, b, r1, r2)

    a0 = float(moffat_alpha(fwhm, 3.0))
    lo, hi = [0.05 * a0, 1.05], [50 * a0, 200.0]
    exact = model(radii, alpha, beta) / model(12.0, alpha, beta)
    sigma = np.full(radii.size, 5e-4)
    p = _fit_curve(radii, exact, sigma, k, model, [a0, 3.0], lo, hi)
    assert p == pytest.approx([alpha, beta], rel=1e-5)
    noisy = exact + np.random.default_rng(7).normal(0, 2e-3, radii.size)

    def resid(q):
        g = model(radii, *q)
        return (g / g[k] - noisy) / sigma

    ref = least_squares(resid, [a0, 3.0], bounds=(lo, hi), x_scale=[a0, 3.0]).x
    ours = _fit_curve(radii, noisy, sigma, k, model, [a0, 3.0], lo, hi)
    # same minimum: equal cost and equal enclosed fraction at r = 12 (the correction)
    assert np.sum(resid(ours) ** 2) <= np.sum(resid(ref) ** 2) * (1 + 1e-8)
    assert moffat_enclosed(12.0, *ours) == pytest.approx(moffat_enclosed(12.0, *ref),
                                                         rel=1e-6)
