"""mosaic's per-image block assembly of the normal equations against the dense algebra.

The block assembly (:func:`tractpatch.jointcal.mosaic_solver.normal_equations`) must give
exactly the matrix ``J^T J`` and gradient ``J^T r`` of the generic residual rows (the
problems' :meth:`rows`, which jointcal's fitter uses), with the stars eliminated exactly
as the dense Schur complement; and its Gauss-Newton step must be the dense solution of
the full system (model and star parameters together).
"""
from __future__ import annotations

import numpy as np
import pytest

from tractpatch.jointcal import mosaic_solver as ms
from tractpatch.jointcal.config import MosaicConfig
from tractpatch.jointcal.problems import AstrometryProblem, PhotometryProblem
from tractpatch.jointcal.synthetic import make_synthetic


@pytest.fixture(scope="module")
def tiny():
    """A fitted 3-visit, 4-CCD mosaic and the prepared inputs its fit started from."""
    det, images, ref, truth = make_synthetic(n_visits=3, ccd_grid=(2, 2), stars_per_ccd=50,
                                             seed=3)
    captured = {}
    orig = ms.fit_models_blocks

    def grab(prep, amodel, theta, pmodel, config, focal):
        captured.update(prep=prep, amodel=amodel, theta=theta.copy(), pmodel=pmodel)
        return orig(prep, amodel, theta, pmodel, config, focal)

    mp = pytest.MonkeyPatch()
    mp.setattr(ms, "fit_models_blocks", grab)
    try:
        res = ms.fit_mosaic(det, images, ref, MosaicConfig(fittingOrder=3, fluxFitOrder=2))
    finally:
        mp.undo()
    return dict(captured, res=res, ref=ref, data=(det, images, ref, truth))


def _dense(rows, n_params, n_star):
    """Dense J (model), J_s (stars), r of generic :class:`fitter.Rows`."""
    J = np.zeros((len(rows.r), n_params))
    for j in range(rows.idx.shape[1]):
        ok = rows.idx[:, j] >= 0
        np.add.at(J, (np.nonzero(ok)[0], rows.idx[ok, j]), rows.val[ok, j])
    Js = np.zeros((len(rows.r), n_star))
    star, val = rows.star.reshape(len(rows.r), -1), rows.star_val.reshape(len(rows.r), -1)
    for j in range(star.shape[1]):  # position, and motion where fitted
        ok = star[:, j] >= 0
        Js[np.nonzero(ok)[0], star[ok, j]] += val[ok, j]
    return J, Js, rows.r


def _check(problem, blocks, theta, stars, n_params, n_star, free):
    J, Js, r = _dense(problem.rows(theta, stars), n_params, n_star)
    br = blocks.block_rows(theta, stars)
    assert br.chi2 == pytest.approx(r @ r, rel=1e-12)
    assert blocks.chi2(theta, stars) == pytest.approx(problem.chi2(theta, stars), rel=1e-12)
    np.testing.assert_allclose(blocks.measurement_chi2(theta, stars),
                               problem.measurement_chi2(theta, stars), rtol=1e-10)
    # stars held fixed: H_tt and g_t
    ne = ms.normal_equations(br, n_params, False)
    H, g = J.T @ J, J.T @ r
    assert np.abs(ne.H - H).max() <= 1e-12 * np.abs(H).max()
    assert np.abs(ne.g - g).max() <= 1e-12 * np.abs(g).max()
    # stars eliminated: the Schur complement of the star block (diagonal, or 2 x 2 blocks
    # of position and motion); star parameters without rows do not take part
    D = Js.T @ Js
    on = np.diag(D) > 0
    Dinv = np.zeros_like(D)
    Dinv[np.ix_(on, on)] = np.linalg.inv(D[np.ix_(on, on)])
    Hts = J.T @ Js
    S = H - Hts @ Dinv @ Hts.T
    gS = g - Hts @ (Dinv @ (Js.T @ r))
    ne = ms.normal_equations(br, n_params, True)
    assert np.abs(ne.H - S).max() <= 1e-11 * np.abs(S).max()
    assert np.abs(ne.g - gS).max() <= 1e-11 * np.abs(gS).max()
    # the step: the dense least-squares solution over the free model and all stars
    Jf = np.hstack([J[:, free], Js])
    keep = np.any(Jf != 0, axis=0)  # stars left without rows do not move
    full = np.zeros(Jf.shape[1])
    full[keep] = np.linalg.solve(Jf[:, keep].T @ Jf[:, keep], -Jf[:, keep].T @ r)
    dt, ds, _ = ms.solve_blocks(br, n_params, free, True)
    nf = int(free.sum())
    assert np.abs(dt[free] - full[:nf]).max() <= 1e-7 * np.abs(full[:nf]).max()
    assert np.all(dt[~free] == 0)
    assert np.abs(ds - full[nf:]).max() <= 1e-7 * np.abs(full[nf:]).max()


def test_astrometry_blocks_equal_dense_normal_equations(tiny):
    prep, am = tiny["prep"], tiny["amodel"]
    n = prep.n_stars
    ref = tiny["ref"]
    rsig = np.hypot(ref.ra_err, ref.dec_err) / np.sqrt(2) / 1000.0
    prob = AstrometryProblem(am, prep.meas, n, prep.ref_index, prep.ref_xi, prep.ref_eta,
                             rsig, prep.pm_xi, prep.pm_eta)
    prob.active[::7] = False  # rejected measurements leave the blocks
    rng = np.random.default_rng(1)
    stars = np.concatenate([prep.star_xi, prep.star_eta]) + rng.normal(0, 0.01, 2 * n)
    theta = tiny["theta"].copy()
    theta[am.ccd_base:] += rng.normal(0, 1e-4, 3 * am.n_ccds)  # off the layout start
    _check(prob, ms.AstrometryBlocks(prob), theta, stars, am.n_params, 2 * n, ~am.fixed)


def test_astrometry_blocks_with_proper_motions(tiny):
    """Stars with fitted motions (2 x 2 star blocks per coordinate, catalog motions as
    priors): the same equality with the dense algebra."""
    prep, am = tiny["prep"], tiny["amodel"]
    n = prep.n_stars
    ref = tiny["ref"]
    rng = np.random.default_rng(5)
    active = np.ones(len(prep.meas.star), bool)
    active[::9] = False
    cnt = np.bincount(prep.meas.star[active], minlength=n)  # one per visit: epochs
    pm_fit = (cnt >= 3) & (rng.random(n) < 0.6)
    assert pm_fit.sum() > 20 and (pm_fit & (prep.ref_index >= 0)).sum() > 10
    rsig = np.hypot(ref.ra_err, ref.dec_err) / np.sqrt(2) / 1000.0
    prob = AstrometryProblem(am, prep.meas, n, prep.ref_index, prep.ref_xi, prep.ref_eta,
                             rsig, prep.pm_xi, prep.pm_eta, pm_fit, 1e-3)
    prob.active[:] = active
    stars = prob.initial_stars(prep.star_xi, prep.star_eta)
    stars[:2 * n] += rng.normal(0, 0.01, 2 * n)
    stars[2 * n:] += rng.normal(0, 0.005, 2 * n) * np.tile(pm_fit, 2)
    blocks = ms.AstrometryBlocks(prob)
    assert blocks.block_rows(tiny["theta"], stars).slots == 2
    _check(prob, blocks, tiny["theta"], stars, am.n_params, 4 * n, ~am.fixed)


def test_photometry_blocks_equal_dense_normal_equations(tiny):
    prep, pm, res, ref = tiny["prep"], tiny["pmodel"], tiny["res"], tiny["ref"]
    n = prep.n_stars
    prob = PhotometryProblem(pm, prep.meas, n, prep.ref_index, ref.flux, ref.flux_err,
                             0.002)
    rng = np.random.default_rng(2)
    theta = res.photo_theta * (1 + rng.normal(0, 1e-3, len(res.photo_theta)))
    fluxes = res.stars_flux * (1 + rng.normal(0, 1e-3, n))
    prob.set_sigma(theta)
    prob.active[::5] = False
    _check(prob, ms.PhotometryBlocks(prob), theta, fluxes, pm.n_params, n, ~pm.fixed)


def _worst_differences(a, b):
    """Largest WCS (mas) and calibration (mmag) differences of two fits."""
    worst_mas = worst_mmag = 0.0
    for g, im in enumerate(a.images):
        x, y = np.meshgrid(np.linspace(0, im.nx - 1, 6), np.linspace(0, im.ny - 1, 6))
        ra, dec = a.pixel_to_sky(g, x.ravel(), y.ravel())
        rb, db = b.pixel_to_sky(g, x.ravel(), y.ravel())
        sep = np.hypot((ra - rb) * np.cos(np.radians(dec)), dec - db) * 3.6e6
        worst_mas = max(worst_mas, sep.max())
        dm = 2.5e3 * np.log10(a.calibration(g, x, y) / b.calibration(g, x, y))
        worst_mmag = max(worst_mmag, np.abs(dm).max())
    return worst_mas, worst_mmag


def test_blocks_and_sparse_assembly_fit_alike(tiny):
    """The whole fit through jointcal's generic sparse fitter lands on the same WCSs and
    calibrations (to far below their errors) as the block assembly."""
    det, images, ref, truth = tiny["data"]
    cfg = MosaicConfig(fittingOrder=3, fluxFitOrder=2)
    a = tiny["res"]
    b = ms.fit_mosaic(det, images, ref, cfg, assembly="sparse")
    assert np.array_equal(a.astro_active, b.astro_active)
    assert a.astro_fit.ndof == b.astro_fit.ndof and a.photo_fit.ndof == b.photo_fit.ndof
    worst_mas, worst_mmag = _worst_differences(a, b)
    assert worst_mas < 0.01 and worst_mmag < 0.01
    with pytest.raises(ValueError, match="assembly"):
        ms.fit_mosaic(det, images, ref, cfg, assembly="dense")


def test_blocks_and_sparse_fit_alike_with_proper_motions():
    """Visits over 1.6 years: both assemblies fit the same proper motions and WCSs."""
    det, images, ref, truth = make_synthetic(n_visits=6, ccd_grid=(3, 2), stars_per_ccd=150,
                                             seed=5, visit_spacing_days=120)
    cfg = MosaicConfig(fittingOrder=3, fluxFitOrder=2)
    a = ms.fit_mosaic(det, images, ref, cfg)
    b = ms.fit_mosaic(det, images, ref, cfg, assembly="sparse")
    assert a.counts["pm_fittedStars"] == b.counts["pm_fittedStars"] > 500
    assert a.astro_fit.chi2 == pytest.approx(b.astro_fit.chi2, rel=1e-9)
    assert a.astro_fit.ndof == b.astro_fit.ndof
    assert np.abs(a.stars_pm - b.stars_pm).max() < 1e-6  # arcsec/yr
    worst_mas, worst_mmag = _worst_differences(a, b)
    assert worst_mas < 0.01 and worst_mmag < 0.01


def test_series_kernel_equals_numpy():
    """The numba kernel (large fits) and the numpy path (small ones) of the per-visit
    series agree, values, basis and derivatives; the derivatives match finite
    differences."""
    from tractpatch.jointcal.mosaic_models import series

    rng = np.random.default_rng(4)
    n, order = 500, 9
    u, v = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    vis = rng.integers(0, 3, n)  # unsorted: the gathered row-wise product
    coef = rng.normal(size=(3, 55, 2))
    a = series(u, v, vis, coef, order, True, True, use_numba=False)
    b = series(u, v, vis, coef, order, True, True, use_numba=True)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-11)
    h = 1e-6
    up = series(u + h, v, vis, coef, order, use_numba=True)[0]
    um = series(u - h, v, vis, coef, order, use_numba=True)[0]
    np.testing.assert_allclose((up - um) / (2 * h), b[2], rtol=1e-5, atol=1e-5)
    assert b[1][:, 0] == pytest.approx(np.ones(n))  # T_0 T_0
    np.testing.assert_allclose(b[1][:, 1], u)      # T_1(u) T_0(v): the first order terms
    np.testing.assert_allclose(b[1][:, 2], v)


def _layout_image_by_image(model, img, u, v, xi, eta):
    """The layout and start of ConstrainedAstrometryModel.initialize as first written:
    one least-squares fit per image (a mask over the whole grid each), the reference the
    batched fits must reproduce. Returns (theta, scale, visit rotation)."""
    from tractpatch.jointcal.astrometry_models import _lstsq_poly

    theta = np.zeros(model.n_params)
    vis, ccd = model.image_visit[img], model.image_ccd[img]
    n = np.maximum(np.bincount(vis, None, model.n_visits), 1)
    cx, cy = np.bincount(vis, xi, model.n_visits) / n, np.bincount(vis, eta, model.n_visits) / n
    A = np.column_stack([np.ones_like(u), u, v])
    fits = {g: np.linalg.lstsq(A[img == g], np.column_stack([xi[img == g], eta[img == g]]),
                               rcond=None)[0] for g in np.unique(img)}
    rot = np.zeros(model.n_visits)
    for k in range(model.n_visits):
        ang = [np.arctan2(c[1, 1], c[1, 0]) for g, c in fits.items()
               if model.image_visit[g] == k]
        if ang:
            rot[k] = np.angle(np.mean(np.exp(1j * np.array(ang))))
    rot -= np.angle(np.mean(np.exp(1j * rot)))
    cr, sr = np.cos(rot[vis]), np.sin(rot[vis])
    dx, dy = xi - cx[vis], eta - cy[vis]
    fx, fy = cr * dx + sr * dy, -sr * dx + cr * dy
    per_ccd = {}
    for g in np.unique(img):
        s = img == g
        c = np.linalg.lstsq(A[s], np.column_stack([fx[s], fy[s]]), rcond=None)[0]
        per_ccd.setdefault(int(model.image_ccd[g]), []).append(np.r_[c[:, 0], c[:, 1]])
    for c, lst in per_ccd.items():
        theta[model.ccd_base + 6 * c:model.ccd_base + 6 * c + 6] = np.median(lst, axis=0)
    scale = float(np.max(np.abs(np.concatenate([fx, fy]))))
    a = theta[model.ccd_base:].reshape(model.n_ccds, 6)[ccd]
    fxm, fym = a[:, 0] + a[:, 1] * u + a[:, 2] * v, a[:, 3] + a[:, 4] * u + a[:, 5] * v
    for k in np.unique(vis):
        s = vis == k
        c = _lstsq_poly(fxm[s] / scale, fym[s] / scale, np.column_stack([xi[s], eta[s]]),
                        model.order)
        base = k * 2 * model.nt
        theta[base:base + 2 * model.nt] = np.r_[c[:, 0], c[:, 1]]
    return theta, scale, rot


@pytest.mark.parametrize("order", [1, 4])
def test_layout_start_equals_image_by_image_fits(tiny, order):
    """jointcal's layout start (and mosaic's, the same :func:`ccd_layout`), fitted for all
    images at once, equals the image-by-image least-squares fits it replaced."""
    from tractpatch.jointcal.astrometry_models import ConstrainedAstrometryModel

    prep = tiny["prep"]
    gi, gu, gv, gxi, geta = prep.grid
    nv, nc = len(prep.visits), len(prep.ccds)
    model = ConstrainedAstrometryModel(prep.img_visit, prep.img_ccd, nv, nc, order)
    got = model.initialize(gi, gu, gv, gxi, geta)
    want, scale, rot = _layout_image_by_image(model, gi, gu, gv, gxi, geta)
    assert np.abs(got - want).max() <= 1e-10 * np.abs(want).max()
    layout = got[model.ccd_base:].reshape(nc, 6)
    want_layout = want[model.ccd_base:].reshape(nc, 6)
    assert np.abs(layout - want_layout).max() <= 1e-10 * np.abs(want_layout).max()
    assert model.scale == pytest.approx(scale, rel=1e-12)
    np.testing.assert_allclose(model.visit_rotation, rot, rtol=0, atol=1e-12)
    assert np.ptp(rot) > 1e-3  # the visits are rotated: the de-rotation is exercised
    affine, ms_scale, _ = ms.ccd_layout(gi, gu, gv, gxi, geta, prep.img_visit, prep.img_ccd,
                                        nv, nc)
    assert np.array_equal(affine, layout) and ms_scale == model.scale
