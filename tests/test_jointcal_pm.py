"""Proper motions of fitted stars: block Schur elimination, star selection, recovery."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

import tractpatch.jointcal.fitter as fitter
from tractpatch.jointcal.config import JointcalConfig
from tractpatch.jointcal.fitter import Rows, solve_step
from tractpatch.jointcal.problems import Measurements
from tractpatch.jointcal.solver import fit_jointcal, proper_motion_stars
from tractpatch.jointcal.synthetic import make_synthetic
from tractpatch.jointcal.tangent import project


def _block_problem(seed=0, n_theta=7, n_stars=5, per_star=6):
    """Rows of a tiny problem shaped like astrometry with proper motions: star k has
    parameters (xi, eta, mu_xi, mu_eta) = (k, K+k, 2K+k, 3K+k); each row depends on one
    coordinate and its motion (star 0 without motion: column -1), plus 3 model
    parameters; star ``n_stars - 1`` has no rows at all."""
    rng = np.random.default_rng(seed)
    K = n_stars
    idx, val, col, cval, r = [], [], [], [], []
    for k in range(K - 1):
        for axis in (0, 1):
            for _ in range(per_star):
                t = rng.uniform(-2, 2)
                idx.append(rng.choice(n_theta, 3, replace=False))
                val.append(rng.normal(size=3))
                w = rng.uniform(0.5, 2)
                col.append([axis * K + k, -1 if k == 0 else (2 + axis) * K + k])
                cval.append([-w, 0.0 if k == 0 else -w * t])
                r.append(rng.normal())
    # a prior row on star 1's motion and one on star 2's position
    idx += [[-1, -1, -1]] * 2
    val += [[0.0, 0.0, 0.0]] * 2
    col += [[2 * K + 1, -1], [2, -1]]
    cval += [[3.0, 0.0], [2.0, 0.0]]
    r += [0.5, -0.3]
    return (Rows(np.array(idx), np.array(val), np.array(col), np.array(cval), np.array(r)),
            4 * K, K, n_theta)


def _dense_solution(rows, n_theta, n_star):
    """Least-squares step from the full dense Jacobian (unused parameters dropped)."""
    n = len(rows.r)
    J = np.zeros((n, n_theta + n_star))
    for i in range(n):
        for a, v in zip(rows.idx[i], rows.val[i]):
            if a >= 0:
                J[i, a] += v
        for c, v in zip(rows.star[i], rows.star_val[i]):
            if c >= 0:
                J[i, n_theta + c] += v
    used = np.any(J != 0, axis=0)
    step = np.zeros(n_theta + n_star)
    step[used] = np.linalg.lstsq(J[:, used], -rows.r, rcond=None)[0]
    return step[:n_theta], step[n_theta:]


@pytest.mark.parametrize("path", ["small", "numba", "sparse"])
def test_block_schur_matches_dense_solve(path, monkeypatch):
    rows, n_star, K, n_theta = _block_problem()
    free_map = np.arange(n_theta)
    dense_limit = 0 if path == "sparse" else 8000
    if path == "numba":  # the kernels' path, as above 50 k rows
        monkeypatch.setattr(fitter, "SPARSE_FORMATION_ROWS", 0)
    dt, ds = solve_step(rows, free_map, n_theta, n_star, dense_limit, chunk=4,
                        n_blocks=K)
    dt_ref, ds_ref = _dense_solution(rows, n_theta, n_star)
    assert np.allclose(dt, dt_ref, atol=1e-9)
    assert np.allclose(ds, ds_ref, atol=1e-9)
    # parameters without rows (star 0's motion, the last star) are not moved
    assert ds[2 * K] == 0 and ds[3 * K] == 0
    assert np.all(ds[[K - 1, 2 * K - 1, 3 * K - 1, 4 * K - 1]] == 0)


def test_block_schur_stars_only():
    rows, n_star, K, n_theta = _block_problem(seed=4)
    dt, ds = solve_step(rows, np.full(n_theta, -1), 0, n_star, n_blocks=K)
    # model fixed: each star's 4 parameters are a small independent least squares
    rows_fixed = Rows(np.full_like(rows.idx, -1), rows.val, rows.star, rows.star_val,
                      rows.r)
    assert np.allclose(ds, _dense_solution(rows_fixed, n_theta, n_star)[1], atol=1e-10)


def test_proper_motion_star_selection():
    # star 0: nights 0, 200, 400 -> fitted; star 1: two nights; star 2: three visits of
    # one night; star 3: three nights within 0.2 yr
    day = 1 / 365.25
    star = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    dt = np.array([0, 200, 400, 0, 0.01, 400, 10, 10.02, 10.04, 5, 40, 70]) * day
    meas = Measurements(np.zeros(12, int), np.zeros(12), np.zeros(12), star, dt,
                        np.ones(12), np.ones(12), np.ones(12))
    assert list(proper_motion_stars(meas, 5, 0.5, 3)) == [True, False, False, False, False]
    assert list(proper_motion_stars(meas, 4, 0.1, 2)) == [True, True, False, True]
    # visits spanning no more than the minimum: no proper motions at all
    assert not proper_motion_stars(meas, 4, 1.2, 2).any()


@pytest.fixture(scope="module")
def long_baseline():
    """8 visits over 2.3 years; stars move by 10 mas/yr (rms per axis)."""
    det, images, ref, truth = make_synthetic(n_visits=8, ccd_grid=(3, 2),
                                             stars_per_ccd=250, seed=3,
                                             visit_spacing_days=120.0)
    res = fit_jointcal(det, images, ref, JointcalConfig())
    return res, truth


def _truth_match(res, truth):
    K = len(res.stars_xy) // 2
    tx, ty = project(truth.star_ra, truth.star_dec, *res.tangent)
    d, j = cKDTree(np.column_stack([tx, ty])).query(
        np.column_stack([res.stars_xy[:K], res.stars_xy[K:]]))
    return K, d, j


def test_proper_motions_recovered(long_baseline):
    res, truth = long_baseline
    K, d, j = _truth_match(res, truth)
    assert res.counts["pm_fittedStars"] == res.pm_fitted.sum() > 0.7 * K
    free = res.pm_fitted & (res.ref_index < 0)  # no catalog motion to lean on
    assert free.sum() > 300
    err = np.column_stack([res.stars_pm[:K] * 1000 - truth.star_pmra[j],
                           res.stars_pm[K:] * 1000 - truth.star_pmdec[j]])[free]
    # predicted error of a straight-line fit: sigma / sqrt(sum (t - mean t)^2) per axis
    m = res.meas
    act = res.astro_active
    w = 1.0 / m.sigma[act] ** 2
    sw = np.bincount(m.star[act], w, K)[free]
    swt = np.bincount(m.star[act], w * m.dt[act], K)[free]
    swtt = np.bincount(m.star[act], w * m.dt[act] ** 2, K)[free]
    sig = 1000.0 / np.sqrt(swtt - swt ** 2 / sw)  # mas/yr
    chi2 = ((err / sig[:, None]) ** 2).sum(axis=1)
    print(f"pm recovery: {free.sum()} stars, median chi2 {np.median(chi2):.3f}, median "
          f"error {np.median(np.hypot(*err.T)):.2f} mas/yr")
    # chi^2 with 2 dof: median 2 ln 2 = 1.386; the model's own errors add a little
    assert 1.0 < np.median(chi2) < 1.9
    # and the motions are found: typical error far below the 10 mas/yr spread
    assert np.median(np.hypot(*err.T)) < 4.0
    # reference stars' motions stay near the catalog (prior 1 mas/yr)
    rs = res.pm_fitted & (res.ref_index >= 0)
    dref = res.stars_pm[:K][rs] * 1000 - res.refcat.pm_ra[res.ref_index[rs]]
    assert np.median(np.abs(dref)) < 1.0


def test_stars_without_enough_epochs_keep_their_motion(long_baseline):
    res, truth = long_baseline
    K = len(res.stars_xy) // 2
    fixed = ~res.pm_fitted
    assert fixed.sum() > 10
    ri = res.ref_index[fixed]
    expect = np.where(ri >= 0, res.refcat.pm_ra[np.maximum(ri, 0)] / 1000.0, 0.0)
    assert np.array_equal(res.stars_pm[:K][fixed], expect)
    # every one of them really has fewer than 3 nights or less than 0.5 yr
    m = res.meas
    for k in np.nonzero(fixed)[0][:50]:
        t = m.dt[m.star == k]
        assert len(np.unique(np.round(t * 365.25))) < 3 or np.ptp(t) < 0.5


def test_long_baseline_accuracy_and_short_baseline_untouched(long_baseline):
    res, truth = long_baseline
    worst = truth.score(res, n=8, photometry=False)[0].max()
    assert worst < 2.5  # mas, as the same data without motion (core tests: < 5)
    # 5 visits 30 days apart (0.33 yr): no proper-motion parameters at all
    det, images, ref, _ = make_synthetic(n_visits=5, ccd_grid=(2, 1), stars_per_ccd=150,
                                         seed=5)
    short = fit_jointcal(det, images, ref, JointcalConfig(doPhotometry=False))
    assert short.counts["pm_fittedStars"] == 0 and not short.pm_fitted.any()


def test_rejection_stops_at_the_gaussian_tail():
    from tractpatch.jointcal.solver import _noise_tail

    # 1e6 good 2-d measurements: exp(-25/2) * 1e6 = 3.73 beyond 5 sigma by noise alone,
    # so up to 3.73 + 3 sqrt(3.73) + 1 = 10.5 candidates are no evidence of outliers
    chi2 = np.full(1_000_000, 30.0)
    bad = np.zeros(chi2.size, bool)
    bad[:10] = True
    assert _noise_tail(bad, chi2, chi2.size, 5.0, 2)
    bad[10] = True
    assert not _noise_tail(bad, chi2, chi2.size, 5.0, 2)
    # one gross (> 10 sigma) outlier is always rejected
    bad[:] = False
    bad[0] = True
    chi2[0] = 101.0
    assert not _noise_tail(bad, chi2, chi2.size, 5.0, 2)
