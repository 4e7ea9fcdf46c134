"""Bad-pixel interpolation along rows (tractpatch.sources.interpolate) against hand
computations, and its effect on a star with a bad column through it."""
from __future__ import annotations

import numpy as np

from tractpatch.image import Exposure, ExposureInfo
from tractpatch.sources.interpolate import interpolate_bad_runs
from tractpatch.sources.task import DetectSourcesConfig, measure_exposure


def test_runs_are_filled_on_the_line_between_their_neighbours():
    img = np.arange(40, dtype=np.float32).reshape(4, 10) * 10.0
    var = np.ones((4, 10), np.float32)
    img[1, 3:5] = np.nan
    img[1, 4] = 1e6
    bad = np.zeros((4, 10), bool)
    bad[1, 3:5] = True         # between 120 (x=2) and 150 (x=5): 130, 140
    bad[0, 8:] = True          # end of row 0 ...
    bad[1, 0] = True           # ... and start of row 1: separate one-sided runs
    bad[2, 1:9] = True         # 8 long: too long for max_run=5
    bad[3, :] = True           # a whole row: nothing to interpolate from
    var[1, 3] = 7.0            # interpolated like the image: (1 * 2 + 1 * 1) / 3 = 1
    left = interpolate_bad_runs([img, var], bad, max_run=5)
    assert left is bad  # updated in place
    np.testing.assert_allclose(img[1, 3:5], [130.0, 140.0])
    np.testing.assert_allclose(img[0, 8:], [70.0, 70.0])   # copies its left neighbour
    assert img[1, 0] == 110.0                              # copies its right neighbour
    assert var[1, 3] == 1.0
    expect = np.zeros((4, 10), bool)
    expect[2, 1:9] = True
    expect[3, :] = True
    np.testing.assert_array_equal(left, expect)
    assert img[2, 1] == 210.0  # long runs are left as they were


def test_nothing_bad_or_nothing_short_changes_nothing():
    img = np.ones((3, 5), np.float32)
    bad = np.zeros((3, 5), bool)
    assert not interpolate_bad_runs([img], bad).any()
    bad[1] = True
    expect = bad.copy()
    np.testing.assert_array_equal(interpolate_bad_runs([img], bad, max_run=0), expect)


def test_a_bad_column_through_a_star_no_longer_moves_its_centroid():
    # a Gaussian star (sigma 1.7 px) with a bad, hot column 1 px from its centre
    ny, nx = 64, 64
    yy, xx = np.mgrid[:ny, :nx]
    x0, y0 = 31.3, 30.6
    rng = np.random.default_rng(4)
    star = 2e5 / (2 * np.pi * 1.7 ** 2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2)
                                                 / (2 * 1.7 ** 2))
    image = (100.0 + star + rng.normal(0, 3.0, (ny, nx))).astype(np.float32)
    image[:, 32] = 5000.0
    exp = Exposure(image=image, variance=np.full((ny, nx), 9.0, np.float32),
                   info=ExposureInfo(visit=1, ccd=0))
    exp.mask[:, 32] = exp.mask_planes.bitmask("BAD")
    original = image.copy()

    def centroid(cfg):
        t = measure_exposure(exp, cfg).table
        i = int(np.argmin(np.hypot(t["x"] - x0, t["y"] - y0)))
        return t[i]

    interp = centroid(DetectSourcesConfig(threads=1))
    masked = centroid(DetectSourcesConfig(threads=1, interpolate_max_run=0))
    np.testing.assert_array_equal(exp.image, original)  # the input is not modified
    err_i = np.hypot(interp["x"] - x0, interp["y"] - y0)
    err_m = np.hypot(masked["x"] - x0, masked["y"] - y0)
    # a straight line across the core misses the peak's curvature: 0.055 px here;
    # leaving the column out instead pushes the window 1 px away from it
    assert err_i < 0.1 and err_m > 5 * err_i, (err_i, err_m)
    assert interp["flag_bad"] and masked["flag_bad"]  # still flagged
    # a caller that owns the planes lets them be interpolated in place: same catalog
    own = Exposure(image=image.copy(), variance=exp.variance.copy(), mask=exp.mask.copy(),
                   info=ExposureInfo(visit=1, ccd=0))
    t_own = measure_exposure(own, DetectSourcesConfig(threads=1), overwrite=True).table
    t_ref = measure_exposure(exp, DetectSourcesConfig(threads=1)).table
    for c in t_ref.colnames:
        np.testing.assert_array_equal(np.asarray(t_own[c]), np.asarray(t_ref[c]))
    # the hot column was interpolated there: the mean of its neighbours
    np.testing.assert_allclose(own.image[:, 32], (image[:, 31] + image[:, 33]) / 2,
                               rtol=1e-6)
