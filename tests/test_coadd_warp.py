"""Warping: Gaussian stars between TAN / TAN-SIP WCSs vs an analytic rendering; the
coarse-grid transform error; mask propagation; variance; zero-point scaling."""
from __future__ import annotations

import numpy as np
import pytest

from tractpatch.coadd.kernels import KERNELS, kernel_weights, kernel_code
from tractpatch.coadd.transform import coarse_transform, exact_transform
from tractpatch.coadd.warp import njy_to_coadd_scale, warp_exposure

from test_coadd_support import (make_exposure, make_wcs, measure, render_stars,
                                star_list)

IN_SHAPE = (260, 240)
OUT_SHAPE = (420, 440)


def _scene(sip, rot=30.0, scale_out=0.17):
    win = make_wcs(IN_SHAPE, scale_arcsec=0.2, sip=sip)
    # output: rotated, finer pixels, centre offset by ~3 arcsec
    wout = make_wcs(OUT_SHAPE, scale_arcsec=scale_out, rot_deg=rot,
                    ra=150.0 + 8e-4, dec=2.0 - 5e-4)
    stars = star_list(win, IN_SHAPE, n=9, flux=1e5, margin=45)
    return win, wout, stars


@pytest.mark.parametrize("sip", [False, True])
@pytest.mark.parametrize("kernel", ["lanczos3", "lanczos5"])
def test_warped_stars_match_analytic_rendering(sip, kernel):
    win, wout, stars = _scene(sip)
    exp = make_exposure(IN_SHAPE, win, stars, sigma_arcsec=0.5)
    w = warp_exposure(exp, wout, OUT_SHAPE, kernel=kernel)
    x0, y0, x1, y1 = w.bbox
    # only the covered part is computed, and it is smaller than the output
    assert (x1 - x0) * (y1 - y0) < OUT_SHAPE[0] * OUT_SHAPE[1]
    assert w.transform_error < 0.01
    truth = render_stars(OUT_SHAPE, wout, stars, 0.5)[y0:y1, x0:x1]
    full = np.zeros(OUT_SHAPE)
    full[y0:y1, x0:x1] = w.image
    for ra, dec, flux in stars:
        x, y = wout.world_to_pixel_values(ra, dec)
        f, cx, cy = measure(full, float(x), float(y), r=14)
        assert abs(f / flux - 1) < 0.005, (f, flux)
        assert abs(cx - x) < 0.01 and abs(cy - y) < 0.01, (cx - x, cy - y)
    good = w.good
    peak = truth.max()
    assert np.max(np.abs(w.image - truth)[good]) < 0.01 * peak


def test_bilinear_also_conserves_flux():
    win, wout, stars = _scene(True)
    exp = make_exposure(IN_SHAPE, win, stars, sigma_arcsec=0.6)
    w = warp_exposure(exp, wout, OUT_SHAPE, kernel="bilinear")
    full = np.zeros(OUT_SHAPE)
    x0, y0, x1, y1 = w.bbox
    full[y0:y1, x0:x1] = w.image
    ra, dec, flux = stars[4]
    x, y = wout.world_to_pixel_values(ra, dec)
    f, cx, cy = measure(full, float(x), float(y), r=14)
    assert abs(f / flux - 1) < 0.005
    assert abs(cx - x) < 0.02 and abs(cy - y) < 0.02


def test_kernel_weights_are_lanczos_and_normalised():
    for name in KERNELS:
        kind, a = kernel_code(name)
        out = np.empty(2 * a)
        kernel_weights(0.3, kind, a, out)
        assert abs(out.sum() - 1) < 1e-12
    kind, a = kernel_code("lanczos3")
    out = np.empty(6)
    kernel_weights(0.0, kind, a, out)
    # integer phase: a delta on the pixel itself (offset 0 is index a-1)
    assert np.allclose(out, [0, 0, 1, 0, 0, 0])
    kernel_weights(0.5, kind, a, out)
    x = 0.5 - (np.arange(6) - 2)
    ref = 3 * np.sin(np.pi * x) * np.sin(np.pi * x / 3) / (np.pi * x) ** 2
    assert np.allclose(out, ref / ref.sum())


def test_coarse_grid_error_below_bound_and_refined():
    win = make_wcs((2000, 2000), scale_arcsec=0.2, sip=True)
    wout = make_wcs((2000, 2000), scale_arcsec=0.168, rot_deg=12,
                    ra=150.0 + 0.01, dec=2.0 + 0.005)
    tr = coarse_transform(wout, win, 0, 0, 2000, 2000, step=32, max_error=0.01)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1999, 4000)
    y = rng.uniform(0, 1999, 4000)
    ex, ey = exact_transform(wout, win, x, y)
    ix, iy = tr.interpolate(x, y)
    err = np.hypot(ix - ex, iy - ey)
    assert err.max() < 0.01
    # a tight bound forces refinement of the grid, and is then met
    tr2 = coarse_transform(wout, win, 0, 0, 2000, 2000, step=512, max_error=1e-3)
    assert tr2.step < 512 and tr2.max_error < 1e-3
    ix, iy = tr2.interpolate(x, y)
    assert np.hypot(ix - ex, iy - ey).max() < 1e-3


def test_single_bad_pixel_marks_only_its_neighbours_and_nodata_outside():
    win = make_wcs((100, 100), scale_arcsec=0.2)
    wout = make_wcs((140, 140), scale_arcsec=0.2, rot_deg=0.0, ra=150.0, dec=2.0,
                    crpix=[70.0 + 0.5 + 0.5, 70.0 + 0.5 + 0.5])  # half-pixel shift
    exp = make_exposure((100, 100), win, [], noise=0.0)
    exp.image[:] = 5.0
    bad = exp.mask_planes.bitmask("BAD")
    exp.mask[50, 50] = bad
    exp.image[50, 50] = 1e6  # garbage value must not leak
    w = warp_exposure(exp, wout, (140, 140))
    nbad = np.count_nonzero(w.mask & bad)
    # half-pixel phase in x and y: the 2x2 pixels around it, not the 6x6 footprint
    assert nbad == 4
    good = w.good & ((w.mask & bad) == 0)
    assert np.allclose(w.image[good], 5.0, rtol=1e-4)
    # outside the CCD nothing landed: NO_DATA
    nodata = w.mask_planes.bitmask("NO_DATA")
    full = np.full((140, 140), nodata)
    x0, y0, x1, y1 = w.bbox
    full[y0:y1, x0:x1] = w.mask
    assert np.all(full[:15] & nodata) and np.all(full[:, -15:] & nodata)
    assert not np.any(full[60:80, 60:80] & nodata)


def test_variance_propagated_with_squared_weights():
    win = make_wcs((200, 200), scale_arcsec=0.2)
    wout = make_wcs((200, 200), scale_arcsec=0.2, rot_deg=17.0, ra=150.0 + 1e-4)
    exp = make_exposure((200, 200), win, [], noise=3.0, seed=5)
    w = warp_exposure(exp, wout, (200, 200))
    g = w.good
    # per-pixel std of the warped noise equals the propagated sigma (correlations
    # between neighbours do not change a single pixel's variance)
    z = w.image[g] / np.sqrt(w.variance[g])
    assert abs(np.std(z) - 1) < 0.03
    assert np.median(w.variance[g]) < 9.0  # smoothing lowers the per-pixel variance


def test_zero_point_scaling_of_a_known_star():
    win = make_wcs((120, 120), scale_arcsec=0.2)
    wout = make_wcs((120, 120), scale_arcsec=0.2, rot_deg=5.0)
    mag = 20.0
    flux_njy = 10 ** (-0.4 * (mag - 31.4)) * (3631e9 / 10 ** (0.4 * 31.4))
    stars = [(150.0, 2.0, flux_njy)]
    exp = make_exposure((120, 120), win, stars, sigma_arcsec=0.5)
    scale = njy_to_coadd_scale(27.0)
    w = warp_exposure(exp, wout, (120, 120), scale=scale)
    full = np.zeros((120, 120))
    x0, y0, x1, y1 = w.bbox
    full[y0:y1, x0:x1] = w.image
    x, y = wout.world_to_pixel_values(150.0, 2.0)
    f, _, _ = measure(full, float(x), float(y), r=12)
    assert abs((27.0 - 2.5 * np.log10(f)) - mag) < 0.002
    # hand value: a 20th-magnitude star at ZP 27 has 10**(0.4*7) = 631 counts
    assert abs(f / 10 ** 2.8 - 1) < 0.002


@pytest.mark.parametrize("method", ["reproject_exact", "reproject_adaptive"])
def test_reproject_methods_conserve_flux(method):
    win, wout, stars = _scene(False, rot=10.0)
    exp = make_exposure(IN_SHAPE, win, stars[:3], sigma_arcsec=0.6)
    w = warp_exposure(exp, wout, OUT_SHAPE, method=method)
    full = np.zeros(OUT_SHAPE)
    x0, y0, x1, y1 = w.bbox
    full[y0:y1, x0:x1] = w.image
    ra, dec, flux = stars[1]
    x, y = wout.world_to_pixel_values(ra, dec)
    f, cx, cy = measure(full, float(x), float(y), r=14)
    assert abs(f / flux - 1) < 0.01
    assert abs(cx - x) < 0.05 and abs(cy - y) < 0.05


def test_phase_table_matches_exact_weights():
    """Every row of the phase table is the exact normalised kernel at its phase, and
    rounding a position to the nearest phase moves it by at most 1 / (2 PHASES)."""
    from tractpatch.coadd.kernels import PHASES, phase_table

    for name in KERNELS:
        kind, a = kernel_code(name)
        table = phase_table(name)
        assert table.shape == (PHASES + 1, 2 * a)
        exact = np.empty(2 * a)
        for i in np.linspace(0, PHASES, 41).astype(int):
            kernel_weights(i / PHASES, kind, a, exact)
            assert np.max(np.abs(table[i] - exact)) < 1e-12
        assert np.allclose(table.sum(axis=1), 1.0)
    # hand check: Lanczos3 at phase 1/2 is symmetric, the two middle taps
    # 3 sin(pi/2) sin(pi/6) / (pi/2)^2 = 0.6079 before normalisation
    w = phase_table("lanczos3")[PHASES // 2]
    assert np.allclose(w, w[::-1])
    raw = 3 * np.sin(np.pi * 0.5) * np.sin(np.pi * 0.5 / 3) / (np.pi * 0.5) ** 2
    x = 0.5 + 2 - np.arange(6)
    raws = 3 * np.sin(np.pi * x) * np.sin(np.pi * x / 3) / (np.pi * x) ** 2
    assert np.isclose(w[2], raw / raws.sum())
    # the worst phase rounding is half a phase step: the weights' centroid moves by it
    frac = 0.5 / PHASES * 0.999
    exact = np.empty(6)
    kernel_weights(frac, *kernel_code("lanczos3"), exact)
    table = phase_table("lanczos3")
    shift = np.sum(exact * (np.arange(6) - 2)) - np.sum(table[0] * (np.arange(6) - 2))
    assert 0 < abs(shift) < 1e-4
