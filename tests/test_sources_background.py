"""Binned sky pass of tractpatch.sources.background against hand computations and a
known (simulated) sky."""
from __future__ import annotations

import numpy as np
import pytest

from tractpatch.sources.background import _bin, _subtract_blocks, estimate_background


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
    # the remainder rows/columns take the last whole block's value
    back = rng.normal(size=binned.shape).astype(np.float32)
    full = np.pad(np.repeat(np.repeat(back, f, 0), f, 1), ((0, ny % f), (0, nx % f)),
                  mode="edge")
    out = np.full(shape, np.nan, np.float32)
    assert _subtract_blocks(img, back, f, out) is out
    np.testing.assert_array_equal(out, img - full)


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
    # binned one by 0.59 (its blocks add at most half a block's ramp step, 0.16)
    err_binned = np.abs(binned.level - sky).mean()
    assert err_binned < 0.8
    assert err_binned < 1.1 * np.abs(full.level - sky).mean() + 0.05
    assert binned.global_rms == pytest.approx(20.0, rel=0.05)
    assert full.global_rms == pytest.approx(20.0, rel=0.05)
    data = binned.subtract(img)
    np.testing.assert_allclose(data, img - binned.level, atol=1e-3)
