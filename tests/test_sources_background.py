"""Binned sky pass of tractpatch.sources.background against hand computations and a
known (simulated) sky."""
from __future__ import annotations

import numpy as np
import pytest

from tractpatch.sources.background import (_bin, _subtract_binned, estimate_background,
                                           pixel_noise)


@pytest.mark.parametrize("shape,f", [((37, 45), 4), ((40, 48), 4), ((41, 40), 2)])
def test_block_sums_and_block_subtraction_match_hand_computation(shape, f):
    rng = np.random.default_rng(3)
    ny, nx = shape
    img = rng.normal(size=shape).astype(np.float32)
    binned = _bin(img, f, np.add)
    hand = img[:ny // f * f, :nx // f * f].reshape(ny // f, f, nx // f, f).sum((1, 3))
    assert binned == pytest.approx(hand, abs=1e-5)
    bad = np.zeros(shape, bool)
    bad[f + 1, 2 * f] = True  # one pixel: its whole block is bad
    mask = _bin(bad, f, np.logical_or)
    assert mask.sum() == 1 and mask[1, 2]
    # the sky between block centres (j f + (f - 1) / 2) is bilinear, constant beyond
    # the outermost ones (np.interp along x on each binned row, then along y)
    back = rng.normal(size=binned.shape).astype(np.float32)
    cx = np.arange(back.shape[1]) * f + (f - 1) / 2
    cy = np.arange(back.shape[0]) * f + (f - 1) / 2
    rows = np.array([np.interp(np.arange(nx), cx, b) for b in back])
    full = np.array([np.interp(np.arange(ny), cy, c) for c in rows.T]).T
    out = np.full(shape, np.nan, np.float32)
    assert _subtract_binned(img, back, f, out) is out
    np.testing.assert_allclose(out, img - full, atol=1e-5)


def test_binned_sky_recovers_a_sloped_sky_like_full_resolution():
    """A sky ramp of 40 counts over the image plus Gaussian noise of 20: the 4x4-binned
    pass finds the same sky as a full-resolution one (within the mesh noise), the
    per-pixel noise scaled back to full resolution."""
    rng = np.random.default_rng(11)
    ny, nx = 512, 384
    yy, xx = np.mgrid[:ny, :nx]
    sky = 1000.0 + 40.0 * yy / ny + 10.0 * xx / nx
    img = (sky + rng.normal(0, 20.0, (ny, nx))).astype(np.float32)
    bad = np.zeros((ny, nx), bool)
    full = estimate_background(img, bad, 64, 3)
    binned = estimate_background(img, bad, 64, 3, bin_factor=4)
    assert binned.factor == 4 and binned.level.shape == (ny, nx)
    # mesh noise 20 / sqrt(64 * 64) ~ 0.3 counts, the median filter and the spline's
    # edges on a ramp: the full-resolution pass is off by 0.62 on average here, the
    # binned one (bilinear between its block centres) by 0.58
    err_binned = np.abs(binned.level - sky).mean()
    assert err_binned < 0.8
    assert err_binned < 1.1 * np.abs(full.level - sky).mean() + 0.05
    assert binned.global_rms == pytest.approx(20.0, rel=0.05)
    assert full.global_rms == pytest.approx(20.0, rel=0.05)
    data = binned.subtract(img)
    np.testing.assert_allclose(data, img - binned.level, atol=1e-3)


def test_pixel_noise_ignores_the_sky_slope_and_masked_sources():
    rng = np.random.default_rng(5)
    ny, nx = 400, 300
    yy, xx = np.mgrid[:ny, :nx]
    sky = 500.0 + 300.0 * yy / ny + 80.0 * xx / nx  # steep: 0.75 counts per row
    img = sky + rng.normal(0, 12.0, (ny, nx))
    img[100:160, 50:120] += 5000.0 * rng.random((60, 70))  # a "source", masked
    bad = np.zeros((ny, nx), bool)
    bad[100:160, 50:120] = True
    assert pixel_noise(img, bad) == pytest.approx(12.0, rel=0.02)
    assert pixel_noise(img, bad, rows=7) == pytest.approx(12.0, rel=0.05)
    assert pixel_noise(img, np.ones((ny, nx), bool)) is None  # nothing left to use
    # the binned sky pass reports it as the per-pixel noise
    b = estimate_background(img.astype(np.float32), bad, 64, 3, bin_factor=4)
    assert b.global_rms == pytest.approx(12.0, rel=0.03)
