"""The fit -> FitDiagnostics adapter of both solvers, on synthetic catalogs with truth."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator

from tractpatch.diagnostics.plots_visit import arrow_data
from tractpatch.diagnostics.plots_visit import plot_fcont, plot_jcont
from tractpatch.diagnostics.writer import residual_stats
from tractpatch.jointcal.config import JointcalConfig, MosaicConfig
from tractpatch.jointcal.diagnostics_adapter import fit_diagnostics
from tractpatch.jointcal.mosaic_solver import fit_mosaic
from tractpatch.jointcal.solver import fit_jointcal
from tractpatch.jointcal.synthetic import make_synthetic

K = 1e-8  # radial distortion (1/arcsec^2): 0.25 % more pixel area at the corner CCDs


@pytest.fixture(scope="module")
def synth():
    return make_synthetic(n_visits=4, ccd_grid=(3, 2), stars_per_ccd=250, k=K, seed=5)


@pytest.fixture(scope="module")
def fits(synth):
    det, images, ref, _ = synth
    return {"jointcal": fit_jointcal(det, images, ref, JointcalConfig()),
            "mosaic": fit_mosaic(det, images, ref, MosaicConfig(fittingOrder=4,
                                                                fluxFitOrder=2))}


@pytest.fixture(scope="module")
def diags(fits):
    return {k: fit_diagnostics(r, k, 0, "r") for k, r in fits.items()}


@pytest.mark.parametrize("solver", ["jointcal", "mosaic"])
def test_residuals_are_the_fits(fits, diags, solver):
    res, d = fits[solver], diags[solver]
    m = res.meas
    n = len(res.stars_xy) // 2
    xi, eta = res.astro_model.evaluate(res.astro_theta, m.img, m.u, m.v)
    ri = res.ref_index[m.star]
    pmx = np.where(ri >= 0, res.refcat.pm_ra[np.maximum(ri, 0)], 0) / 1000
    pmy = np.where(ri >= 0, res.refcat.pm_dec[np.maximum(ri, 0)], 0) / 1000
    sky = np.hypot(xi - res.stars_xy[m.star] - pmx * m.dt,
                   eta - res.stars_xy[n + m.star] - pmy * m.dt) * 1000
    # the focal plane has the sky's scale: the vector's length survives the change of axes
    np.testing.assert_allclose(np.hypot(d.dx, d.dy), sky, rtol=5e-3, atol=1e-6)
    fx, fy = res.focal(m.img, m.u, m.v)
    np.testing.assert_allclose(d.fx, fx / 3600)
    assert d.n_meas == len(m.img) and d.is_ref.sum() == (ri >= 0).sum()
    assert np.array_equal(d.rejected, ~res.astro_active | ~res.photo_active)
    # reference-matched stars: calibrated magnitudes agree with the reference
    ok = d.is_ref & ~d.rejected & np.isfinite(d.dmag)
    assert abs(np.median(d.dmag[ok])) < 0.003


@pytest.mark.parametrize("solver", ["jointcal", "mosaic"])
def test_ccd_layout_matches_truth(synth, diags, solver):
    truth = synth[3]
    d = diags[solver]
    lay = np.array([truth.ccd_layout[c] for c in d.ccd_id])
    # the focal-plane frame is free up to a rotation and shift: compare relative layouts
    fit_sep = np.hypot(d.ccd_fx - d.ccd_fx[0], d.ccd_fy - d.ccd_fy[0]) * 3600
    true_sep = np.hypot(lay[:, 0] - lay[0, 0], lay[:, 1] - lay[0, 1])
    np.testing.assert_allclose(fit_sep, true_sep, atol=0.5)  # arcsec of ~470
    dang = np.degrees(lay[:, 2] - lay[0, 2])
    np.testing.assert_allclose(d.ccd_angle - d.ccd_angle[0], dang, atol=0.003)
    # outlines: 1024 pixels of 0.2 arcsec
    side = np.hypot(*(d.ccd_corners[:, 1] - d.ccd_corners[:, 0]).T) * 3600
    np.testing.assert_allclose(side, 204.8, rtol=2e-3)


def test_mosaic_pixel_area_is_the_distortion(synth, diags):
    """Rigid CCDs: the visit map's Jacobian determinant is the true relative pixel area
    (1 + k r^2)(1 + 3 k r^2) of the radial distortion."""
    truth = synth[3]
    d = diags["mosaic"]
    lay = np.array([truth.ccd_layout[c] for c in d.ccd_id])
    r2 = lay[:, 0] ** 2 + lay[:, 1] ** 2
    true_area = (1 + K * r2) * (1 + 3 * K * r2)
    for iv in range(d.visit_id.size):
        f = RegularGridInterpolator((d.grid_fy, d.grid_fx), d.pixel_area[iv])
        fit_area = f(np.column_stack([d.ccd_fy, d.ccd_fx]))
        # ratios between CCDs cancel the normalisation at the (fitted) optical axis
        np.testing.assert_allclose(fit_area / fit_area[1], true_area / true_area[1],
                                   atol=2e-4)
    assert np.nanmax(d.pixel_area) - np.nanmin(d.pixel_area) > 1.5e-3


@pytest.mark.parametrize("solver", ["jointcal", "mosaic"])
def test_broken_ccd_rotation_found(synth, solver):
    """Spoil one CCD's fitted rotation by 30 arcsec: its arrows turn, its RMS grows."""
    det, images, ref, _ = synth
    cfg = JointcalConfig(maxOutlierRounds=1) if solver == "jointcal" else \
        MosaicConfig(fittingOrder=3, fluxFitOrder=1, maxOutlierRounds=1)
    res = (fit_jointcal if solver == "jointcal" else fit_mosaic)(det, images, ref, cfg)
    eps = np.radians(30 / 3600)
    am, th = res.astro_model, res.astro_theta
    c = am.image_ccd[res.image_index(images[0].visit, 4)]
    if solver == "mosaic":
        am.placement(th)[c, 2] += eps
    else:  # the affine CCD map turned about its centre: A -> R(eps) A
        a = th[am.ccd_base + 6 * c:am.ccd_base + 6 * c + 6]
        rot = np.array([[np.cos(eps), -np.sin(eps)], [np.sin(eps), np.cos(eps)]])
        lin = rot @ np.array([[a[1], a[2]], [a[4], a[5]]])
        a[1], a[2], a[4], a[5] = lin[0, 0], lin[0, 1], lin[1, 0], lin[1, 1]
    d = fit_diagnostics(res, solver, 0, "r")
    st = residual_stats(d)
    rms = {k: v["rms_pos"] for k, v in st["per_ccd"].items()}
    assert max(rms, key=rms.get) == 4
    # a turn eps about the centre of a square CCD of side w adds eps^2 w^2 / 6
    w_mas = 204.8e3
    others = np.median([v ** 2 for k, v in rms.items() if k != 4])
    assert rms[4] ** 2 - others == pytest.approx(eps ** 2 * w_mas ** 2 / 6, rel=0.2)
    ic = int(np.flatnonzero(d.ccd_id == 4)[0])
    a = arrow_data(d, int(d.visit_id[1]), max_arrows=100000)
    on = a["ccd"] == 4
    rx, ry = (a["fx"][on] - d.ccd_fx[ic]) * 3.6e6, (a["fy"][on] - d.ccd_fy[ic]) * 3.6e6
    curl = np.mean(a["dx"][on] * ry - a["dy"][on] * rx) / np.mean(rx ** 2 + ry ** 2)
    assert curl == pytest.approx(-eps, rel=0.15)  # measured - model = (R(eps) - I) r


def test_simple_models_write_flat_maps(synth, tmp_path):
    det, images, ref, _ = synth
    res = fit_jointcal(det, images, ref, JointcalConfig(astrometryModel="simple",
                                                       photometryModel="simple",
                                                       maxOutlierRounds=0))
    d = fit_diagnostics(res, "jointcal", 0, "r")
    inside = np.isfinite(d.pixel_area)
    assert inside.any() and np.all(d.pixel_area[inside] == 1.0)
    assert np.all(d.flux_corr[inside] == 1.0)
    assert np.median(d.visit_scale) == pytest.approx(1.0)
    # constant maps still give a legible contour figure (no contour levels to draw)
    for plot in (plot_fcont, plot_jcont):
        p = plot(d, int(d.visit_id[0]), tmp_path / f"{plot.__name__}.png")
        assert p.is_file() and p.stat().st_size > 20_000
