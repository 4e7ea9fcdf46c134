"""The coadd's speed-ups against reference implementations: the warper's mask fast path,
the folded zero-point scale, the good-pixel statistics, the visit-layer paste, the fused
MEANCLIP statistic (against a plain Python/numpy rendering of its definition), warps held
in memory vs spilled to disk, the input prefetch and the per-worker thread count."""
from __future__ import annotations

import numpy as np
import pytest

from tractpatch.coadd.assemble import (CcdWarp, WarpStore, coadd_patch, fill_layer,
                                       good_stats, prefetch)
from tractpatch.coadd.config import CoaddDriverConfig
from tractpatch.coadd.kernels import PHASES, clean_windows, warp_region
from tractpatch.coadd.stack import StackResult, stack_arrays
from tractpatch.coadd.transform import coarse_transform
from tractpatch.coadd.warp import _table, flag_nonfinite, warp_exposure
from tractpatch.image import MaskPlanes

from test_coadd_stack import _dithered_visits
from test_coadd_support import make_exposure, make_wcs, star_list


def test_clean_windows_marks_all_zero_runs():
    rng = np.random.default_rng(3)
    msk = np.where(rng.random((40, 50)) < 0.05, 32, 0).astype(np.int32)
    for n in (2, 6):
        got = clean_windows(msk, n)
        ref = np.zeros(msk.shape, np.uint8)
        for y in range(40):
            for x in range(50 - n + 1):
                ref[y, x] = not msk[y, x:x + n].any()
        assert np.array_equal(got, ref)


def _masked_scene():
    win = make_wcs((120, 110), scale_arcsec=0.2)
    wout = make_wcs((150, 150), scale_arcsec=0.17, rot_deg=20.0, ra=150.0 + 2e-4)
    exp = make_exposure((120, 110), win, star_list(win, (120, 110), n=4, flux=1e4,
                                                   margin=30), noise=2.0, seed=4)
    rng = np.random.default_rng(9)
    mp = exp.mask_planes
    # scattered DETECTED (propagated, not excluded) and BAD (excluded) pixels, one NaN
    exp.mask[rng.random(exp.shape) < 0.02] |= mp.bitmask("DETECTED")
    exp.mask[rng.random(exp.shape) < 0.005] |= mp.bitmask("BAD")
    exp.image[60, 55] = np.nan
    return exp, wout


def test_fast_path_equals_general_path():
    """The clean-window fast path gives what the general (bookkeeping) path gives."""
    exp, wout = _masked_scene()
    w = warp_exposure(exp, wout, (150, 150), scale=2.5)
    x0, y0, x1, y1 = w.bbox
    ny, nx = y1 - y0, x1 - x0
    tr = coarse_transform(wout, exp.wcs, x0, y0, ny, nx, step=32, max_error=0.01)
    mp = exp.mask_planes
    outs = [np.empty((ny, nx), t) for t in (np.float32, np.float32, np.int32, np.float32)]
    # no window is clean: every pixel takes the general path
    warp_region(exp.image, exp.variance, flag_nonfinite(exp),
                mp.bitmask("BAD", "SAT", "CR", "NO_DATA", "EDGE", "SUSPECT"),
                mp.bit("NO_DATA"), tr.gx, tr.gy, tr.gj, tr.step, ny, nx,
                _table("lanczos3"), PHASES, 3, 0.1, *outs,
                np.zeros(exp.shape, np.uint8), False, 2.5)
    img, var, msk, cov = outs
    assert np.array_equal(w.mask, msk)
    assert np.allclose(w.image, img, rtol=1e-5, atol=1e-4)
    assert np.allclose(w.variance, var, rtol=1e-5, atol=1e-6)
    assert np.allclose(w.coverage, cov)
    # the scene does exercise both: masked footprints and clean ones
    det = mp.bitmask("DETECTED")
    assert 0 < np.count_nonzero(w.mask & det) < w.mask.size // 2


def test_scale_folded_into_the_loop():
    exp, wout = _masked_scene()
    w1 = warp_exposure(exp, wout, (150, 150))
    w3 = warp_exposure(exp, wout, (150, 150), scale=3.0)
    assert np.allclose(w3.image, 3.0 * w1.image, rtol=1e-6, atol=1e-5)
    assert np.allclose(w3.variance, 9.0 * w1.variance, rtol=1e-6)
    assert np.array_equal(w3.mask, w1.mask)


def test_good_stats_equal_numpy():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(300, 700)).astype(np.float32)
    var = rng.uniform(0.5, 2, size=img.shape).astype(np.float32)
    msk = np.where(rng.random(img.shape) < 0.1, 1 << 8, 0).astype(np.int32)
    img[5, :30] = np.nan
    var[7, :40] = 0
    good = (msk == 0) & np.isfinite(img) & (var > 0)
    n, sample = good_stats(img, var, msk, 1 << 8, 1000)
    gv = var[good]
    assert n == good.sum()
    assert np.array_equal(sample, gv[::max(1, gv.size // 1000)])


def _warp(visit, bbox, img, var, msk):
    return CcdWarp(visit, 0, bbox, {}, 1, 1.0, 1.0, 0.0,
                   arrays={"image": img, "variance": var, "mask": msk})


def test_fill_layer_pastes_with_data_winning_over_nodata():
    nodata = MaskPlanes().bitmask("NO_DATA")
    a = np.full((4, 5), 1.0, np.float32)
    ma = np.zeros((4, 5), np.uint16)
    ma[:, 4] = nodata  # A's right column has no data ...
    b = np.full((4, 3), 2.0, np.float32)
    mb = np.zeros((4, 3), np.uint16)
    mb[:, 0] = nodata  # ... B's left column has none either
    mb[0, 2] = 4
    wa = _warp(1, (1, 2, 6, 6), a, a * 10, ma)
    wb = _warp(1, (5, 3, 8, 7), b, b * 10, mb)
    img = np.full((5, 9), -1, np.float32)
    var = np.empty_like(img)
    msk = np.empty((5, 9), np.int32)
    fill_layer([wa, wb], 1, 6, nodata, img, var, msk)  # patch rows 1..5
    ref_img = np.zeros((5, 9), np.float32)
    ref_msk = np.full((5, 9), nodata, np.int32)
    ref_img[1:5, 1:5] = 1.0       # A (rows 2..5)
    ref_msk[1:5, 1:5] = 0
    ref_msk[1:5, 5] = nodata      # A's and B's NO_DATA column overlap at x = 5
    ref_img[2:5, 6:8] = 2.0       # B (rows 3..5 of the band: patch rows 3..5)
    ref_msk[2:5, 6:8] = 0
    ref_msk[2, 7] = 4
    # under NO_DATA the last CCD's value (never read by the stack: NO_DATA is skipped)
    ref_img[1, 5] = 1.0
    ref_img[2:5, 5] = 2.0
    assert np.array_equal(msk, ref_msk)
    assert np.array_equal(img, ref_img)
    assert np.array_equal(var, 10 * ref_img)


def _meanclip_reference(vals, var, w, nsigma, niter, ampfrac):
    """MEANCLIP of one pixel as the module docstring defines it (plain numpy)."""
    vals, var, w = map(np.asarray, (vals, var, w))
    keep = np.ones(vals.size, bool)
    if vals.size >= 3:
        floor = np.sqrt(var.mean())
        center = np.median(vals)
        sig = np.hypot(max(1.4826 * np.median(np.abs(vals - center)), floor),
                       ampfrac * center)
        for _ in range(niter):
            out = keep & (np.abs(vals - center) > nsigma * sig)
            if not out.any() or keep.sum() - out.sum() < 1:
                break
            keep &= ~out
            center = np.sum(w[keep] * vals[keep]) / np.sum(w[keep])
            s = np.sqrt(np.mean((vals[keep] - center) ** 2))
            sig = np.hypot(max(s, floor), ampfrac * center)
            if keep.sum() < 3:
                break
    sw = w[keep].sum()
    return (np.sum(w[keep] * vals[keep]) / sw, np.sum(w[keep] ** 2 * var[keep]) / sw ** 2,
            keep.sum(), not keep.all())


def test_fused_meanclip_equals_reference_with_outliers_weights_masks():
    rng = np.random.default_rng(7)
    k, ny, nx = 9, 12, 15
    mp = MaskPlanes()
    level = rng.uniform(-1, 50, (ny, nx))
    imgs = (level + rng.normal(0, 1.0, (k, ny, nx))).astype(np.float32)
    out_sel = rng.random((k, ny, nx)) < 0.08
    imgs[out_sel] += rng.uniform(20, 200, out_sel.sum())  # cosmic rays, trails
    vars_ = rng.uniform(0.5, 1.5, (k, ny, nx)).astype(np.float32)
    msks = np.zeros((k, ny, nx), np.int32)
    msks[rng.random((k, ny, nx)) < 0.1] = mp.bitmask("NO_DATA")
    msks[rng.random((k, ny, nx)) < 0.05] |= mp.bitmask("CR")
    w = rng.uniform(0.5, 2.0, k)
    e = rng.uniform(50, 100, k)
    out = StackResult(np.empty((ny, nx), np.float32), np.empty((ny, nx), np.float32),
                      np.empty((ny, nx), np.int32), np.empty((ny, nx), np.int32),
                      np.empty((ny, nx), np.float32))
    r = stack_arrays(imgs, vars_, msks, w, e, mp, statistic="MEANCLIP", ampfrac=0.3,
                     out=out)
    assert r is out
    bad = mp.bitmask("BAD", "SAT", "CR", "NO_DATA", "EDGE", "SUSPECT")
    nclipped = 0
    for iy in range(ny):
        for ix in range(nx):
            use = (msks[:, iy, ix] & bad) == 0
            if not use.any():
                assert np.isnan(r.image[iy, ix]) and r.nimage[iy, ix] == 0
                continue
            m, v, n, clipped = _meanclip_reference(imgs[use, iy, ix], vars_[use, iy, ix],
                                                   w[use], 3.0, 2, 0.3)
            assert r.image[iy, ix] == pytest.approx(m, rel=1e-5, abs=1e-5)
            assert r.variance[iy, ix] == pytest.approx(v, rel=1e-5)
            assert r.nimage[iy, ix] == n
            assert bool(r.mask[iy, ix] & mp.bitmask("CLIPPED")) == clipped
            nclipped += clipped
    assert nclipped > 20  # the outliers were there to be clipped


def test_warps_in_memory_or_spilled_give_the_same_coadd(tmp_path):
    exps, pw, pshape, _ = _dithered_visits(n_visits=4, trail_visit=1)
    mem = coadd_patch(iter(exps), pw, pshape, CoaddDriverConfig(), workdir=tmp_path)
    disk = coadd_patch(iter(exps), pw, pshape,
                       CoaddDriverConfig(maxWarpMemoryMB=0, maxStackMemoryMB=0.5,
                                         prefetchInputs=False), workdir=tmp_path)
    assert disk.rows_per_band < mem.rows_per_band
    for plane in ("image", "variance", "mask", "nimage", "exptime"):
        assert np.array_equal(getattr(mem, plane), getattr(disk, plane), equal_nan=True)
    assert list(tmp_path.iterdir()) == []  # the spilled warps are gone


def test_store_spills_beyond_its_budget_and_narrows_the_mask(tmp_path):
    store = WarpStore(1.0, tmp_path)  # 1 MiB
    a = np.ones((256, 256), np.float32)  # 256 KiB a plane
    m = np.zeros((256, 256), np.int32)
    arrays, files = store.put(1, 0, a, a, m, MaskPlanes())
    assert files == {} and arrays["mask"].dtype == np.uint16
    arrays, files = store.put(2, 0, a, a, m, MaskPlanes())
    assert arrays is None and sorted(files) == ["image", "mask", "variance"]
    assert store.spilled == 1 and store.used == 2 * 256 * 256 * 4 + 256 * 256 * 2
    w = CcdWarp(2, 0, (0, 0, 256, 256), files, 1, 1.0, 1.0, 0.0)
    assert np.array_equal(w.rows("image", 10, 20), a[10:20])
    # a plane on a high bit keeps the 32-bit mask
    arrays, _ = WarpStore(10.0, tmp_path).put(3, 0, a, a, m, MaskPlanes({"X": 20}))
    assert arrays["mask"].dtype == np.int32


def test_prefetch_keeps_order_and_raises_in_place():
    assert list(prefetch(iter(range(5)))) == [0, 1, 2, 3, 4]

    def gen():
        yield 1
        raise ValueError("bad CCD")

    it = prefetch(gen())
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad CCD"):
        next(it)


def test_limit_threads_shares_cpus_between_workers():
    import os

    import numba

    from tractpatch.coadd.task import limit_threads

    ncpu = len(os.sched_getaffinity(0))
    before = numba.get_num_threads()
    try:
        assert limit_threads(1) == min(numba.config.NUMBA_NUM_THREADS, ncpu)
        assert limit_threads(ncpu) == 1
        assert limit_threads(4 * ncpu) == 1 and numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)


def test_lanczos3_fast_loop_equals_direct_evaluation():
    """The warper (phase table, column-first 6 × 6 sums) against a direct evaluation of
    its definition: per output pixel, the interpolated source position, the exact
    normalised Lanczos3 weights (:func:`kernel_weights`), ``J * sum(w I)`` and
    ``J^2 sum(w^2 V)``. Differences come only from rounding the phase to 1/8192 pixel:
    below 1e-4 of the star's peak, 5e-4 relative in the variance."""
    from tractpatch.coadd.kernels import kernel_weights

    win = make_wcs((60, 60), scale_arcsec=0.2)
    wout = make_wcs((50, 50), scale_arcsec=0.17, rot_deg=20.0, ra=150.0 + 2e-4)
    exp = make_exposure((60, 60), win, star_list(win, (60, 60), n=2, flux=1e4, margin=20),
                        noise=2.0, seed=5)
    exp.variance[:] = np.random.default_rng(2).uniform(3.0, 5.0, exp.shape)
    w = warp_exposure(exp, wout, (50, 50))
    x0, y0, x1, y1 = w.bbox
    tr = coarse_transform(wout, exp.wcs, x0, y0, y1 - y0, x1 - x0, step=32,
                          max_error=0.01)
    wx, wy = np.empty(6), np.empty(6)
    n_checked = 0
    for oy in range(y1 - y0):
        for ox in range(x1 - x0):
            sx, sy = tr.interpolate(np.array([x0 + ox]), np.array([y0 + oy]))
            sx, sy = float(sx[0]), float(sy[0])
            ix, iy = int(np.floor(sx)), int(np.floor(sy))
            if not (2 <= ix < 60 - 3 and 2 <= iy < 60 - 3):
                continue
            kernel_weights(sx - ix, 1, 3, wx)
            kernel_weights(sy - iy, 1, 3, wy)
            win_img = exp.image[iy - 2:iy + 4, ix - 2:ix + 4]
            win_var = exp.variance[iy - 2:iy + 4, ix - 2:ix + 4]
            gj = tr.gj
            # the pixel-area ratio, bilinear between nodes as the loop does
            u, v = ox / tr.step, oy / tr.step
            i, j = int(u), int(v)
            fu, fv = u - i, v - j
            jac = ((1 - fv) * ((1 - fu) * gj[j, i] + fu * gj[j, i + 1])
                   + fv * ((1 - fu) * gj[j + 1, i] + fu * gj[j + 1, i + 1]))
            ref = jac * wy @ win_img @ wx
            ref_var = jac ** 2 * (wy ** 2) @ win_var @ (wx ** 2)
            assert abs(w.image[oy, ox] - ref) < 1e-4 * exp.image.max()
            assert abs(w.variance[oy, ox] / ref_var - 1) < 5e-4
            n_checked += 1
    assert n_checked > 1000
