"""The vectorised measurement kernels of tractpatch.sources against known answers.

The window kernels (adaptive moments, windowed-centroid errors, the Gaussian matched
filter) are numpy on per-source stamps grouped by window size; they are checked here
against analytic Gaussians and against a plain per-source loop of the defining sums
(SExtractor's formulae, as the numba kernels they replaced computed them). The growth
helpers (isolation test, annulus medians) are checked against direct per-star
computations, and the threaded per-source split against the serial result.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tractpatch.image import Exposure, ExposureInfo
from tractpatch.sources.growth import _annulus_median, _isolated
from tractpatch.sources.measure import (FWHM_PER_SIGMA, _window_errors, adaptive_fwhm,
                                        gaussian_psf_flux)
from tractpatch.sources.task import DetectSourcesConfig, _split, measure_exposure


def _gaussians(shape, x, y, flux, sigma):
    """Point-sampled circular Gaussians (sum to ``flux`` on an infinite grid)."""
    ny, nx = shape
    img = np.zeros(shape)
    yy, xx = np.mgrid[:ny, :nx]
    for xi, yi, fi, si in zip(x, y, flux, sigma):  # rendering the truth
        img += fi / (2 * np.pi * si ** 2) * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2)
                                                   / (2 * si ** 2))
    return img


def _loop_adaptive(data, bad, x, y, s0, n_iter=12, s_max=30.0):
    """The adaptive-moment iteration written out per source and pixel (reference)."""
    ny, nx = data.shape
    out = np.full(len(x), np.nan)
    for i in range(len(x)):
        sw = min(max(s0[i], 0.5), 15.0)
        for _ in range(n_iter):
            rad = 4 * sw
            x0, x1 = max(0, int(np.floor(x[i] - rad))), min(nx - 1, int(np.ceil(x[i] + rad)))
            y0, y1 = max(0, int(np.floor(y[i] - rad))), min(ny - 1, int(np.ceil(y[i] + rad)))
            yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
            r2 = (xx - x[i]) ** 2 + (yy - y[i]) ** 2
            w = np.exp(-r2 / (2 * sw * sw)) * np.where(bad[y0:y1 + 1, x0:x1 + 1], 0,
                                                       data[y0:y1 + 1, x0:x1 + 1])
            wi, wr = w.sum(), (w * r2).sum()
            if not (wi > 0 and wr > 0):
                sw = np.nan
                break
            sw = min(max(np.sqrt(wr / wi), 0.3), s_max)
        out[i] = sw
    return out


def _loop_errors(data, var, bad, x, y, sig, gain):
    """SExtractor's ERRX2WIN written out per source (reference)."""
    ny, nx = data.shape
    ex, ey = np.full(len(x), np.nan), np.full(len(x), np.nan)
    yy, xx = np.mgrid[:ny, :nx]
    for i in range(len(x)):
        dx, dy = xx - x[i], yy - y[i]
        r2 = dx ** 2 + dy ** 2
        use = (r2 < (4 * sig[i]) ** 2) & ~bad.astype(bool)
        w = np.exp(-r2 / (2 * sig[i] ** 2))
        v = var + (np.clip(data, 0, None) / gain if gain else 0)
        wi = (w * data)[use].sum()
        if wi > 0:
            ex[i] = 2 * np.sqrt((w ** 2 * v * dx ** 2)[use].sum()) / wi
            ey[i] = 2 * np.sqrt((w ** 2 * v * dy ** 2)[use].sum()) / wi
    return ex, ey


@pytest.fixture(scope="module")
def field():
    """Stars and galaxies of very different sizes, some at the edge, with noise and a
    bad column through one of them."""
    rng = np.random.default_rng(7)
    shape = (160, 150)
    x = np.array([30.3, 75.8, 110.2, 2.4, 146.7, 60.1, 100.0])
    y = np.array([40.6, 80.1, 30.9, 50.2, 150.3, 130.4, 120.0])
    sigma = np.array([1.6, 6.0, 2.5, 1.8, 2.2, 11.0, 1.2])
    flux = np.array([2e4, 8e4, 5e4, 1e4, 3e4, 2e5, 6e3])
    img = _gaussians(shape, x, y, flux, sigma)
    noisy = img + rng.normal(0, 3.0, shape)
    bad = np.zeros(shape, np.uint8)
    bad[20:60, 31] = 1  # through the first star
    var = np.full(shape, 9.0) + rng.uniform(0, 1, shape)
    return dict(img=img, noisy=noisy, bad=bad, var=var, x=x, y=y, sigma=sigma, flux=flux)


def test_adaptive_fwhm_of_noiseless_gaussians_is_their_fwhm():
    # isolated Gaussians; starting far too small (0.6 px) forces the wide ones' windows
    # to outgrow their first stamps and move to larger ones
    x = np.array([40.3, 160.8, 60.2, 170.5])
    y = np.array([50.6, 60.1, 170.9, 180.2])
    s = np.array([1.2, 2.5, 6.0, 9.0])
    img = _gaussians((260, 260), x, y, np.full(4, 1e4), s)
    f = adaptive_fwhm(img, np.zeros(img.shape, np.uint8), x, y, np.full(4, 0.6), n_iter=40)
    # (pixel sampling of the 1.2 px Gaussian: 2e-5)
    np.testing.assert_allclose(f, FWHM_PER_SIGMA * s, rtol=1e-4)


def test_adaptive_fwhm_matches_the_per_source_loop(field):
    d = field["noisy"].astype(np.float32)
    x, y, b = field["x"], field["y"], field["bad"]
    s0 = np.array([1.0, 2.0, 4.0, 0.7, 3.0, 5.0, 1.5])
    ref = _loop_adaptive(d, b, x, y, s0)
    got = adaptive_fwhm(d, b, x, y, s0) / FWHM_PER_SIGMA
    np.testing.assert_allclose(got, ref, rtol=1e-9)


@pytest.mark.parametrize("gain", [None, 4.0])
def test_window_errors_match_the_per_source_loop(field, gain):
    d = field["noisy"].astype(np.float32)
    var = field["var"].astype(np.float32)
    x, y, b = field["x"] + 0.17, field["y"] - 0.31, field["bad"]
    sig = np.array([1.5, 5.5, 2.4, 1.7, 2.0, 10.0, 1.1])
    ref = _loop_errors(d.astype(float), var.astype(float), b, x, y, sig, gain)
    got = _window_errors(d, var, b, x, y, sig, float(gain or 0.0))
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)  # float32 planes
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-6)


def test_gaussian_matched_filter_returns_the_flux_of_a_matching_star():
    # I = F P on the same pixels: sum(P I) / sum(P^2) = F exactly, masks included
    x, y, f = np.array([20.3, 50.7]), np.array([25.5, 40.2]), np.array([1234.0, 5e4])
    fwhm = 3.7
    s = fwhm / FWHM_PER_SIGMA
    img = _gaussians((70, 80), x, y, f, [s, s])
    bad = np.zeros(img.shape, np.uint8)
    bad[24, 18:23] = 1
    var = np.full(img.shape, 4.0)
    flux, err = gaussian_psf_flux(img, var, bad, x, y, fwhm)
    np.testing.assert_allclose(flux, f, rtol=1e-10)
    # error with uniform variance V: sqrt(V / sum P^2); sum P^2 = 1/(4 pi s^2) unmasked
    np.testing.assert_allclose(err[1], np.sqrt(4.0 * 4 * np.pi * s * s), rtol=1e-3)


def test_isolation_matches_a_direct_pair_loop():
    rng = np.random.default_rng(3)
    n = 900
    x, y = rng.uniform(0, 2000, n), rng.uniform(0, 4000, n)
    flux = 10 ** rng.uniform(2, 5, n)
    flux[5] = np.nan
    size = rng.uniform(0, 6, n)
    cand = rng.random(n) < 0.3
    got = _isolated(x, y, flux, size, cand, 25.0, 0.01, block=64)
    fl = np.where(np.isfinite(flux), flux, np.inf)
    want = cand.copy()
    for i in np.flatnonzero(cand):
        d = np.hypot(x - x[i], y - y[i])
        hit = (fl > 0.01 * flux[i]) & (d < 25.0 + 3 * size)
        hit[i] = False
        want[i] = not hit.any()
    assert 0 < want.sum() < cand.sum()
    np.testing.assert_array_equal(got, want)


def test_annulus_median_matches_nanmedian():
    rng = np.random.default_rng(5)
    data = rng.normal(10, 2, (60, 70)).astype(np.float32)
    reject = rng.random(data.shape) < 0.2
    x, y = np.array([30.0, 33.4, 2.0]), np.array([30.0, 28.6, 3.0])
    got = _annulus_median(data, reject, x, y, 5.0, 9.0)
    yy, xx = np.mgrid[:60, :70]
    for i in range(3):
        r2 = (xx - x[i]) ** 2 + (yy - y[i]) ** 2
        # the stamp's pixels: within ceil(r_out) + 1 of the nearest pixel centre
        near = (np.abs(xx - np.rint(x[i])) <= 10) & (np.abs(yy - np.rint(y[i])) <= 10)
        use = near & (r2 >= 25) & (r2 <= 81) & ~reject
        assert got[i] == pytest.approx(np.median(data[use]), rel=1e-6)


def test_split_over_threads_concatenates_in_order():
    a = np.arange(1000.0)
    with ThreadPoolExecutor(3) as pool:
        out = _split(pool, 3, 1000, lambda v: (v * 2, v + 1), a)
    np.testing.assert_array_equal(out[0], a * 2)
    np.testing.assert_array_equal(out[1], a + 1)


def test_threads_do_not_change_the_catalog():
    rng = np.random.default_rng(11)
    ny, nx = 700, 640
    n = 700  # enough sources for a split over threads
    x, y = rng.uniform(8, nx - 9, n), rng.uniform(8, ny - 9, n)
    img = np.zeros((ny, nx))
    s = 1.5
    off = np.arange(-8, 9)
    cx, cy = np.rint(x).astype(int), np.rint(y).astype(int)
    gx, gy = cx[:, None, None] + off[None, None, :], cy[:, None, None] + off[None, :, None]
    p = np.exp(-((gx - x[:, None, None]) ** 2 + (gy - y[:, None, None]) ** 2) / (2 * s * s))
    f = 10 ** rng.uniform(3, 4.5, n)
    gx, gy = np.broadcast_arrays(gx, gy)
    np.add.at(img, (gy.ravel(), gx.ravel()), (p * (f / p.sum(axis=(1, 2)))[:, None, None]).ravel())
    image = (100 + img + rng.normal(0, 5, img.shape)).astype(np.float32)
    exp = Exposure(image=image, variance=np.full(img.shape, 25.0, np.float32),
                   info=ExposureInfo(visit=1, ccd=2, gain=2.0))
    one = measure_exposure(exp, DetectSourcesConfig(threads=1)).table
    three = measure_exposure(exp, DetectSourcesConfig(threads=3)).table
    assert len(one) > 512
    for c in one.colnames:
        np.testing.assert_array_equal(np.asarray(one[c]), np.asarray(three[c]))
