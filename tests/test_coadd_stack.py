"""Stacking statistics on hand-computed values, mask thresholds, clipping, and the
multi-visit assembly of warped synthetic CCDs (fluxes, positions, noise, trail)."""
from __future__ import annotations

import numpy as np
import pytest

from tractpatch.coadd.assemble import coadd_patch
from tractpatch.coadd.config import CoaddDriverConfig
from tractpatch.coadd.stack import stack_arrays
from tractpatch.coadd.warp import njy_to_coadd_scale
from tractpatch.image import MaskPlanes

from test_coadd_support import make_exposure, make_wcs, measure, star_list


def _cube(values, shape=(2, 3)):
    return np.array([np.full(shape, v, np.float32) for v in values])


def test_hand_values_mean_median_meanclip():
    mp = MaskPlanes()
    vals = [1.0, 2.0, 3.0, 10.0]
    imgs = _cube(vals)
    var = _cube([1e-4] * 4)
    msk = np.zeros(imgs.shape, np.int32)
    w = [1.0] * 4
    e = [10.0, 20.0, 30.0, 40.0]
    r = stack_arrays(imgs, var, msk, w, e, mp, statistic="MEAN")
    assert np.allclose(r.image, 4.0) and np.all(r.nimage == 4)
    assert np.allclose(r.variance, 4e-4 / 16)
    assert np.allclose(r.exptime, 100.0)
    r = stack_arrays(imgs, var, msk, w, e, mp, statistic="MEDIAN")
    assert np.allclose(r.image, 2.5)
    # MEANCLIP: median 2.5, MAD 1.0 -> sigma hypot(1.4826, 0.3*2.5) = 1.66,
    # |10-2.5| > 3 sigma: clipped;
    # then mean of (1,2,3) = 2, sigma hypot(0.816, 0.6): nothing more clipped
    r = stack_arrays(imgs, var, msk, w, e, mp, statistic="MEANCLIP", ampfrac=0.3)
    assert np.allclose(r.image, 2.0)
    assert np.all(r.nimage == 3) and np.allclose(r.exptime, 60.0)
    assert np.all(r.mask & mp.bitmask("CLIPPED"))
    # with the default ampfrac 1.0 the tolerance is hypot(1.48, 2.5) * 3 = 8.7 > 7.5:
    # a factor-4 difference at a bright level (a star core in better seeing) is kept
    r = stack_arrays(imgs, var, msk, w, e, mp, statistic="MEANCLIP")
    assert np.allclose(r.image, 4.0) and np.all(r.nimage == 4)
    # ... but a 10 on a level near 0 (an artefact on sky) is clipped
    r = stack_arrays(_cube([0.1, -0.2, 0.0, 10.0]), var, msk, w, e, mp)
    assert np.allclose(r.image, -0.1 / 3) and np.all(r.nimage == 3)
    # weighted mean: weights 1,1,2,0.5
    r = stack_arrays(imgs, var, msk, [1, 1, 2, 0.5], e, mp, statistic="MEAN")
    assert np.allclose(r.image, (1 + 2 + 6 + 5) / 4.5)


def test_two_values_are_never_clipped_and_nodata_where_empty():
    mp = MaskPlanes()
    imgs = _cube([0.0, 100.0])
    msk = np.zeros(imgs.shape, np.int32)
    msk[:, 0, 0] = mp.bitmask("NO_DATA")
    r = stack_arrays(imgs, _cube([1.0, 1.0]), msk, [1, 1], [1, 1], mp)
    assert np.allclose(r.image[0, 1:], 50.0)
    assert r.mask[0, 0] & mp.bitmask("NO_DATA") and r.nimage[0, 0] == 0
    assert np.isnan(r.image[0, 0])


def test_sat_spreads_only_above_threshold_and_rejected_marked():
    mp = MaskPlanes()
    n = 11
    imgs = _cube([5.0] * n, shape=(1, 2))
    msk = np.zeros(imgs.shape, np.int32)
    sat = mp.bitmask("SAT")
    msk[0, 0, 0] = sat            # pixel 0: 1 of 11 saturated (9 % of weight)
    msk[0:2, 0, 1] = sat          # pixel 1: 2 of 11 (18 %)
    imgs[0, 0, 0] = imgs[0, 0, 1] = imgs[1, 0, 1] = 1e5
    r = stack_arrays(imgs, _cube([1.0] * n, shape=(1, 2)), msk, [1.0] * n, [1.0] * n, mp)
    assert not r.mask[0, 0] & sat and r.mask[0, 1] & sat
    assert np.all(r.mask & mp.bitmask("REJECTED"))
    assert np.allclose(r.image, 5.0)
    assert list(r.nimage[0]) == [10, 9]


def _dithered_visits(n_visits=4, trail_visit=None, noise=30.0, seed=0, shape=(240, 260)):
    """Calibrated (nJy) CCDs of one field, dithered and rotated, TAN-SIP."""
    patch_shape = (330, 330)
    pw = make_wcs(patch_shape, scale_arcsec=0.168, rot_deg=0.0)
    base = make_wcs(shape, scale_arcsec=0.2)
    stars = star_list(base, shape, n=9, flux=2e6, margin=50, seed=seed)
    exps = []
    for v in range(n_visits):
        rng = np.random.default_rng(100 + v)
        w = make_wcs(shape, scale_arcsec=0.2, rot_deg=rng.uniform(-5, 5),
                     ra=150.0 + rng.uniform(-2, 2) / 3600, dec=2.0 + rng.uniform(-2, 2) / 3600,
                     sip=True)
        e = make_exposure(shape, w, stars, sigma_arcsec=0.45 + 0.05 * v, noise=noise,
                          seed=seed + v, visit=100 + v, ccd=0, exptime=120.0)
        if v == trail_visit:
            yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
            # the trail passes 35 px (10 PSF sigma) from the stars: MEANCLIP cannot
            # clip a faint trail on top of a star, whose level sets the clip tolerance
            on = np.abs(yy - (0 * xx + 85)) < 2.0
            e.image[on] += 40 * noise
        exps.append(e)
    return exps, pw, patch_shape, stars


def test_patch_coadd_fluxes_positions_noise_and_trail():
    exps, pw, pshape, stars = _dithered_visits(n_visits=5, trail_visit=2)
    cfg = CoaddDriverConfig(maxStackMemoryMB=0.5)  # forces several bands of rows
    res = coadd_patch(iter(exps), pw, pshape, cfg)
    assert res.rows_per_band < pshape[0]
    assert res.max_transform_error < 0.01
    scale = njy_to_coadd_scale(27.0)
    img = np.nan_to_num(res.image)
    for ra, dec, flux in stars:
        x, y = pw.world_to_pixel_values(ra, dec)
        f, cx, cy = measure(img, float(x), float(y), r=14)
        # 30 nJy noise over a 29x29 box: ~0.03 % of 2e6 nJy, centroid noise ~0.002 px
        assert abs(f / (flux * scale) - 1) < 0.005
        assert abs(cx - x) < 0.01 and abs(cy - y) < 0.01
    # the trail (visit 102) is clipped: no excess along it, CLIPPED set on it
    trail_ccd = exps[2]
    yy, xx = np.mgrid[0:240, 0:260]
    on = (np.abs(yy - (0 * xx + 85)) < 1.0) & (xx > 20) & (xx < 240)
    ra, dec = trail_ccd.wcs.pixel_to_world_values(xx[on], yy[on])
    px, py = pw.world_to_pixel_values(ra, dec)
    px, py = np.round(px).astype(int), np.round(py).astype(int)
    clipped = res.mask[py, px] & res.mask_planes.bitmask("CLIPPED")
    assert np.mean(clipped != 0) > 0.95
    z_trail = img[py, px] / np.sqrt(res.variance[py, px])
    assert abs(np.median(z_trail)) < 0.3
    # blank sky: normalised residuals have unit standard deviation
    inner = (res.nimage == 5)
    star_mask = np.zeros(pshape, bool)
    for ra, dec, _ in stars:
        x, y = pw.world_to_pixel_values(ra, dec)
        star_mask[max(0, int(y) - 15):int(y) + 16, max(0, int(x) - 15):int(x) + 16] = True
    sky = inner & ~star_mask
    sky &= (res.mask & res.mask_planes.bitmask("CLIPPED")) == 0
    z = img[sky] / np.sqrt(res.variance[sky])
    assert sky.sum() > 20000
    assert abs(np.std(z) - 1) < 0.03 and abs(np.mean(z)) < 0.03
    # bands do not change the answer
    res2 = coadd_patch(iter(exps), pw, pshape, CoaddDriverConfig())
    assert np.array_equal(np.nan_to_num(res2.image), img)
    # INPUTS: one row per CCD with its weight = 1/median variance
    assert [r["visit"] for r in res.inputs] == [100, 101, 102, 103, 104]
    assert all(r["goodPix"] > 30000 for r in res.inputs)
    assert np.all(res.exptime[inner & ~(res.mask & res.mask_planes.bitmask("CLIPPED")
                                         != 0)] == 600.0)


@pytest.mark.parametrize("stat", ["MEAN", "MEDIAN"])
def test_mean_keeps_trail_median_removes_it(stat):
    exps, pw, pshape, _ = _dithered_visits(n_visits=3, trail_visit=1, shape=(160, 170))
    res = coadd_patch(iter(exps), pw, pshape, CoaddDriverConfig(statistic=stat))
    w = exps[1].wcs
    ra, dec = w.pixel_to_world_values(np.array([60.0]), np.array([85.0]))  # on the trail
    x, y = pw.world_to_pixel_values(ra, dec)
    v = res.image[int(round(y[0])), int(round(x[0]))]
    trail_level = 40 * 30.0 * njy_to_coadd_scale(27.0) * (0.168 / 0.2) ** 2
    if stat == "MEAN":
        assert v > 0.25 * trail_level
    else:
        assert v < 0.1 * trail_level


def test_median_by_rank_and_by_quickselect_equal_numpy():
    """Both median algorithms (ranks up to RANK_MEDIAN_MAX values, quickselect beyond)
    give numpy's median exactly, with ties, odd and even counts."""
    from tractpatch.coadd.stack import RANK_MEDIAN_MAX, _median, _median_rank, _median_select

    rng = np.random.default_rng(11)
    tmp = np.empty(200)
    for n in (1, 2, 3, 4, 7, 8, 29, 30, RANK_MEDIAN_MAX, RANK_MEDIAN_MAX + 1, 150):
        for _ in range(20):
            buf = np.round(rng.normal(size=200), 1)  # rounding makes ties common
            orig = buf.copy()
            want = np.median(buf[:n])
            assert _median(buf, n, tmp) == want
            assert _median_rank(buf, n) == want
            assert _median_select(buf, n, tmp) == want
            assert np.array_equal(buf, orig)  # the input is left in place
    # hand case: 4, 1, 3, 3 -> sorted 1 3 3 4 -> 3; 5, 1, 2, 9 -> 3.5
    assert _median(np.array([4.0, 1.0, 3.0, 3.0]), 4, tmp) == 3.0
    assert _median(np.array([5.0, 1.0, 2.0, 9.0]), 4, tmp) == 3.5
