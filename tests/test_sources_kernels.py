"""The vectorised measurement kernels of tractpatch.sources against known answers.

The window kernels (windowed centroids with adaptive sizes, their errors, the Gaussian
matched filter) are numpy on per-source stamps grouped by window size; they are checked
here against analytic Gaussians and against a plain per-source loop of the defining
sums and iterations (SExtractor's formulae). The growth
helpers (isolation test, annulus medians) are checked against direct per-star
computations, and the threaded per-source split against the serial result.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sep

from tractpatch.image import Exposure, ExposureInfo
from tractpatch.sources.growth import _annulus_median, _isolated
from tractpatch.sources.measure import FWHM_PER_SIGMA, gaussian_psf_flux, mask_flags
from tractpatch.sources.stamps import stamp_index
from tractpatch.sources.task import DetectSourcesConfig, _split, measure_exposure
from tractpatch.sources.window import _errors, measure_windows


def _gaussians(shape, x, y, flux, sigma):
    """Point-sampled circular Gaussians (sum to ``flux`` on an infinite grid)."""
    ny, nx = shape
    img = np.zeros(shape)
    yy, xx = np.mgrid[:ny, :nx]
    for xi, yi, fi, si in zip(x, y, flux, sigma):  # rendering the truth
        img += fi / (2 * np.pi * si ** 2) * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2)
                                                   / (2 * si ** 2))
    return img


def _box_window(shape, x, y, s):
    """The separable box-truncated Gaussian window of :mod:`.window` over the image."""
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    rad = 4 * s
    box = ((xx >= np.floor(x - rad)) & (xx <= np.ceil(x + rad))
           & (yy >= np.floor(y - rad)) & (yy <= np.ceil(y + rad)))
    dx, dy = xx - x, yy - y
    return np.where(box, np.exp(-(dx ** 2 + dy ** 2) / (2 * s * s)), 0.0), dx, dy


def _loop_windows(data, bad, x, y, s0, n_iter=400):
    """The textbook iteration, written out per source over the whole image: the windowed
    position ``x += 2 sum(w dx I) / sum(w I)`` and the adaptive size ``s^2 = 2 m``
    (reference for the accelerated, stamp-based one)."""
    good = np.where(bad.astype(bool), 0.0, data)
    out = []
    for xi, yi, si in zip(x, y, s0):
        for _ in range(n_iter):
            w, dx, dy = _box_window(data.shape, xi, yi, si)
            wi = (w * good).sum()
            mx, my = (w * dx * good).sum() / wi, (w * dy * good).sum() / wi
            m = 0.5 * ((w * (dx ** 2 + dy ** 2) * good).sum() / wi - mx ** 2 - my ** 2)
            xi, yi, si = xi + 2 * mx, yi + 2 * my, np.sqrt(2 * m)
        out.append((xi, yi, si))
    return np.array(out).T


def _loop_errors(data, var, bad, x, y, sig, gain):
    """SExtractor's ERRX2WIN written out per source (reference), on the box window."""
    ex, ey = np.full(len(x), np.nan), np.full(len(x), np.nan)
    good = ~bad.astype(bool)
    for i in range(len(x)):
        w, dx, dy = _box_window(data.shape, x[i], y[i], sig[i])
        w = np.where(good, w, 0.0)
        v = var + (np.clip(data, 0, None) / gain if gain else 0)
        wi = (w * data).sum()
        if wi > 0:
            ex[i] = 2 * np.sqrt((w ** 2 * v * dx ** 2).sum()) / wi
            ey[i] = 2 * np.sqrt((w ** 2 * v * dy ** 2).sum()) / wi
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


def test_windows_of_noiseless_gaussians_are_their_sigma_and_centre():
    # isolated Gaussians, detected up to 0.7 px off; starting far too small (0.6 px)
    # forces the wide ones' windows to outgrow their first stamps and move to larger ones
    x = np.array([40.3, 160.8, 60.2, 170.5])
    y = np.array([50.6, 60.1, 170.9, 180.2])
    s = np.array([1.2, 2.5, 6.0, 9.0])
    img = _gaussians((260, 260), x, y, np.full(4, 1e4), s)
    w = measure_windows(img, np.ones(img.shape), None, x + [0.5, -0.7, 0.3, 0.6],
                        y + [-0.4, 0.2, 0.7, -0.5], np.full(4, 0.6), n_iter=60,
                        sigma_tol=1e-6)
    assert w.ok.all()
    # (pixel sampling of the 1.2 px Gaussian: 2e-5)
    np.testing.assert_allclose(w.sigma, s, rtol=1e-4)
    np.testing.assert_allclose(w.x, x, atol=1e-4)
    np.testing.assert_allclose(w.y, y, atol=1e-4)


def test_windows_reach_the_textbook_fixed_point(field):
    # noise, a masked column through a star, sources at the edges
    d = field["noisy"].astype(np.float32)
    x, y, b = field["x"] + 0.3, field["y"] - 0.4, field["bad"]
    s0 = np.array([1.0, 2.0, 4.0, 0.7, 3.0, 5.0, 1.5])
    rx, ry, rs = _loop_windows(d.astype(float), b, x, y, s0)
    w = measure_windows(d, field["var"], b, x, y, s0, n_iter=60, tol=1e-7, sigma_tol=1e-7)
    assert w.ok.all()
    np.testing.assert_allclose(w.sigma, rs, rtol=1e-5)
    np.testing.assert_allclose(w.x, rx, atol=1e-5)
    np.testing.assert_allclose(w.y, ry, atol=1e-5)


def test_sharp_sources_converge_instead_of_oscillating():
    # a cosmic-ray track one pixel wide (5 px along y, peaked: a flat top has no
    # well-defined window centre) and a single hot pixel. Along a
    # sharp axis SExtractor's step factor 2 overshoots by the whole offset for ever;
    # the per-axis factor is 1 there and the iteration lands on the pixel column.
    img = np.zeros((40, 40))
    p = np.array([300.0, 700.0, 900.0, 700.0, 300.0])
    img[18:23, 10] = p
    img[30, 30] = 500.0  # no second moment at all: no size (NaN)
    w = measure_windows(img, np.ones(img.shape), None, np.array([10.3, 29.8]),
                        np.array([20.4, 30.2]), np.array([0.9, 0.7]))
    np.testing.assert_allclose(w.x, [10.0, 30.0], atol=1e-4)
    np.testing.assert_allclose(w.y, [20.0, 30.0], atol=1e-4)
    # the track's fixed point s^2 = 2 m = (0 + m_yy), the window-weighted variance of
    # its five pixels at -2..2, with the 0.3 px floor (the plain iteration written out:
    # this peaked track shrinks its window to the floor)
    k, s2 = np.arange(-2, 3), 1.0
    for _ in range(500):
        wk = p * np.exp(-k ** 2 / (2 * s2))
        s2 = max((wk * k ** 2).sum() / wk.sum(), 0.09)
    assert w.sigma[0] == pytest.approx(np.sqrt(s2), rel=1e-4)
    assert np.isnan(w.sigma[1])


@pytest.mark.parametrize("seed", [0, 1])
def test_other_detections_are_left_out_of_the_window(seed):
    # a star 14 px from a bright, wide galaxy (deblended by sep): the galaxy's light
    # pulls the plain window, and the adaptive size runs away onto the galaxy (then the
    # move is refused and the detection position kept); leaving the galaxy's
    # segmentation pixels out of the star's window keeps both on the star
    rng = np.random.default_rng(seed)
    x, y = np.array([40.3, 54.3]), np.array([40.6, 40.6])
    img = _gaussians((80, 90), x, y, np.array([2e4, 3e5]), np.array([1.7, 5.0]))
    noisy = (img + rng.normal(0, 3.0, img.shape)).astype(np.float32)
    var = np.full(img.shape, 9.0, np.float32)
    objs, seg = sep.extract(noisy, 5.0, var=var, segmentation_map=True, minarea=5)
    assert len(objs) == 2
    i = int(np.argmin(np.hypot(objs["x"] - x[0], objs["y"] - y[0])))
    x0, y0 = objs["x"][i:i + 1], objs["y"][i:i + 1]
    s0 = np.sqrt(objs["a"] * objs["b"])[i:i + 1]
    masked = measure_windows(noisy, var, None, x0, y0, s0, segmap=seg, ids=[i + 1])
    plain = measure_windows(noisy, var, None, x0, y0, s0)
    err_det = np.hypot(x0 - x[0], y0 - y[0])[0]
    err_masked = np.hypot(masked.x - x[0], masked.y - y[0])[0]
    assert masked.ok[0] and err_masked < 0.6 * err_det, (err_masked, err_det)
    assert masked.sigma[0] == pytest.approx(1.7, rel=0.05)
    assert plain.sigma[0] > 2.5 and not plain.ok[0]


@pytest.mark.parametrize("gain", [None, 4.0])
def test_window_errors_match_the_per_source_loop(field, gain):
    d = field["noisy"].astype(np.float32)
    var = field["var"].astype(np.float32)
    x, y, b = field["x"] + 0.17, field["y"] - 0.31, field["bad"]
    sig = np.array([1.5, 5.5, 2.4, 1.7, 2.0, 10.0, 1.1])
    ref = _loop_errors(d.astype(float), var.astype(float), b, x, y, sig, gain)
    half = 124
    flat, usable, gx, gy = stamp_index(x, y, half, d.shape)
    usable &= np.take(b.reshape(-1), flat) == 0
    img = np.where(usable, np.take(d.reshape(-1), flat), 0.0)
    v = np.where(usable, np.take(var.reshape(-1), flat), 0.0)
    got = _errors(img, v, gx, gy, x, y, sig, float(gain or 0.0))
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


@pytest.mark.parametrize("empty", [False, True])
def test_mask_flags_match_a_per_source_loop(empty):
    rng = np.random.default_rng(8)
    ny, nx = 50, 40
    mask = np.zeros((ny, nx), np.int32)
    if not empty:
        mask[rng.random((ny, nx)) < 0.01] = 1
        mask[rng.random((ny, nx)) < 0.01] |= 4
    x = np.r_[rng.uniform(0, nx - 1, 30), 0.2, 39.6]
    y = np.r_[rng.uniform(0, ny - 1, 30), 25.0, 48.7]
    r = 2.6
    got = mask_flags(mask, x, y, r, {"a": 1, "b": 4})
    for i in range(len(x)):
        ored, off = 0, False
        for py in range(int(np.floor(y[i] - r)), int(np.ceil(y[i] + r)) + 1):
            for px in range(int(np.floor(x[i] - r)), int(np.ceil(x[i] + r)) + 1):
                if (px - x[i]) ** 2 + (py - y[i]) ** 2 > r * r:
                    continue
                if 0 <= px < nx and 0 <= py < ny:
                    ored |= mask[py, px]
                else:
                    off = True
        assert got["a"][i] == bool(ored & 1) and got["b"][i] == bool(ored & 4)
        assert got["off_image"][i] == off
    assert got["off_image"][-2:].all() and (empty or got["a"].any())
