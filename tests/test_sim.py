"""The simulated images are what the truth says: PSF, fluxes, positions, noise, masks."""
from __future__ import annotations

import numpy as np
import pytest
import sep
from scipy.optimize import curve_fit

from tractpatch.image import read_exposure
from tractpatch.repo import Repository
from tractpatch.sim import load_truth, make_demo_repo, preset_config
from tractpatch.sim.observing import build_truth
from tractpatch.sim.render import (moffat_alpha, render_ccd, render_objects, sky_model,
                                   star_radius)
from tractpatch.sim.survey import exposure_path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("simdemo")
    return make_demo_repo(root, preset="tiny", seed=1, ingest=True)


def _load(demo, visit, ccd):
    return read_exposure(exposure_path(demo.sim_dir, demo.truth.visit(visit), ccd))


def isolated_stars(truth, visit, ccd, min_counts=2e4, radius=30.0, rel=0.003):
    """Unsaturated bright stars with no other object brighter than ``rel`` of the star
    within ``radius`` pixels, away from the edges: (index, x, y, counts)."""
    idx, x, y = truth.objects_on(visit, ccd, margin=40)
    counts = truth.true_counts(visit, ccd, idx, x, y)
    star = np.asarray(truth.objects["type"])[idx] == "star"
    beta = truth.psf["beta"]
    alpha = moffat_alpha(truth.psf_fwhm(visit, ccd, x, y) / truth.camera.pixel_scale, beta)
    peak = counts * (beta - 1) / (np.pi * alpha ** 2) + truth.visit(visit)["sky_level"]
    ny, nx = truth.ccd_shape()
    ok = (star & (counts > min_counts) & (peak < 0.7 * truth.detector["saturation"])
          & (x > radius) & (y > radius) & (x < nx - 1 - radius) & (y < ny - 1 - radius))
    out = []
    for k in np.flatnonzero(ok):
        d = np.hypot(x - x[k], y - y[k])
        near = (d < radius) & (np.arange(len(x)) != k)
        if not np.any(counts[near] > rel * counts[k]):
            out.append((idx[k], x[k], y[k], counts[k]))
    return out


def _moffat(coords, amp, x0, y0, alpha, bg, beta):
    xx, yy = coords
    return amp * (1 + ((xx - x0) ** 2 + (yy - y0) ** 2) / alpha ** 2) ** (-beta) + bg


def test_psf_fwhm_matches_config(demo):
    t = demo.truth
    lo, hi = preset_config("tiny").seeing_range
    fwhms = [t.visit(v)["fwhm"] for v in t.visits]
    assert lo <= min(fwhms) and max(fwhms) <= hi and max(fwhms) - min(fwhms) > 0.1
    beta = t.psf["beta"]
    ratios = []
    for v in (min(t.visits, key=lambda v: t.visit(v)["fwhm"]),
              max(t.visits, key=lambda v: t.visit(v)["fwhm"])):
        for c in t.ccds:
            exp = _load(demo, v, c)
            for _, x, y, _ in isolated_stars(t, v, c, min_counts=5e4)[:3]:
                ix, iy = int(round(x)), int(round(y))
                cut = exp.image[iy - 12:iy + 13, ix - 12:ix + 13].astype(float)
                yy, xx = np.mgrid[iy - 12:iy + 13, ix - 12:ix + 13]
                p0 = [cut.max(), x, y, 4.0, np.median(exp.image)]
                popt, _ = curve_fit(lambda c_, a, x0, y0, al, bg: _moffat(
                    c_, a, x0, y0, al, bg, beta), (xx.ravel(), yy.ravel()), cut.ravel(),
                    p0=p0)
                fwhm = 2 * abs(popt[3]) * np.sqrt(2 ** (1 / beta) - 1) * t.camera.pixel_scale
                ratios.append(fwhm / t.psf_fwhm(v, c, x, y))
    assert len(ratios) >= 6
    assert np.median(ratios) == pytest.approx(1.0, abs=0.02)
    assert np.max(np.abs(np.array(ratios) - 1)) < 0.05


def test_star_fluxes_through_true_calibration(demo):
    """Aperture counts x true calibration = true flux (nJy), within the noise."""
    t = demo.truth
    beta = t.psf["beta"]
    pulls, ratios = [], []
    for v in t.visits:
        for c in t.ccds:
            exp = _load(demo, v, c)
            stars = isolated_stars(t, v, c)
            if not stars:
                continue
            data = (exp.image - sky_model(t, v, c)).astype(np.float64)
            bad = exp.mask != 0
            for oid, x, y, counts in stars:
                fwhm_px = t.psf_fwhm(v, c, x, y) / t.camera.pixel_scale
                r = 2.5 * fwhm_px
                if bad[int(y - r):int(y + r) + 2, int(x - r):int(x + r) + 2].any():
                    continue
                f, _, _ = sep.sum_circle(data, [x], [y], r, subpix=5)
                var, _, _ = sep.sum_circle(exp.variance.astype(np.float64), [x], [y], r,
                                           subpix=5)
                a = moffat_alpha(fwhm_px, beta)
                frac = (1 - (1 + (r / a) ** 2) ** (1 - beta))
                # stamps are normalised within their radius (6-30 FWHM)
                rs = star_radius(fwhm_px, counts)
                frac /= (1 - (1 + (rs / a) ** 2) ** (1 - beta))
                njy = f[0] / frac * t.calibration(v, c, x, y)
                truth_njy = t.objects[f"flux_{t.visit(v)['filter']}"][oid]
                err = np.sqrt(var[0]) / frac * t.calibration(v, c, x, y)
                pulls.append((njy - truth_njy) / err)
                ratios.append(njy / truth_njy)
    assert len(pulls) > 30
    assert np.median(ratios) == pytest.approx(1.0, abs=0.002)
    assert np.std(pulls) < 1.6
    assert abs(np.median(pulls)) < 0.3


def test_star_centroids_follow_true_mapping(demo):
    t = demo.truth
    dx, dy = [], []
    for v in t.visits[:4]:
        for c in t.ccds:
            exp = _load(demo, v, c)
            data = (exp.image - sky_model(t, v, c)).astype(np.float64)
            for _, x, y, _ in isolated_stars(t, v, c, min_counts=5e4):
                sig = t.psf_fwhm(v, c, x, y) / t.camera.pixel_scale / 2.355
                xw, yw, flag = sep.winpos(data, [x + 0.3], [y - 0.3], sig)
                if flag[0] == 0:
                    dx.append(xw[0] - x)
                    dy.append(yw[0] - y)
    assert len(dx) > 15
    assert abs(np.median(dx)) < 0.02 and abs(np.median(dy)) < 0.02
    assert np.sqrt(np.mean(np.square(dx) + np.square(dy))) < 0.08


def test_noise_matches_variance_plane(demo):
    t = demo.truth
    v, c = t.visits[2], 1
    exp = _load(demo, v, c)
    objects = render_objects(t, v, c)
    resid = exp.image - sky_model(t, v, c) - objects
    good = exp.mask == 0
    norm = resid[good] / np.sqrt(exp.variance[good])
    assert np.std(norm) == pytest.approx(1.0, abs=0.03)
    assert abs(np.mean(norm)) < 0.02
    blank = good & (objects < 0.05 * np.sqrt(exp.variance))
    sky_rms = np.std(resid[blank])
    assert sky_rms == pytest.approx(np.sqrt(np.mean(exp.variance[blank])), rel=0.03)
    # the variance is the Poisson + read-noise model of the header's gain
    gain = exp.info.gain
    expected = t.visit(v)["sky_level"] / gain + (t.detector["read_noise"] / gain) ** 2
    assert np.median(exp.variance[blank]) == pytest.approx(expected, rel=0.05)


def test_saturated_stars_bleed_and_are_masked(demo):
    t = demo.truth
    sat_level = t.detector["saturation"]
    beta = t.psf["beta"]
    n_checked = 0
    for v in t.visits:
        for c in t.ccds:
            exp = _load(demo, v, c)
            satbit = exp.mask_planes.bitmask("SAT")
            sat = (exp.mask & satbit) != 0
            assert np.all(exp.image[sat] == np.float32(sat_level))
            assert not np.any(exp.image[~sat & ((exp.mask & exp.mask_planes.bitmask(
                "BAD")) == 0)] >= sat_level)
            idx, x, y = t.objects_on(v, c)
            counts = t.true_counts(v, c, idx, x, y)
            alpha = moffat_alpha(t.psf_fwhm(v, c, x, y) / t.camera.pixel_scale, beta)
            peak = counts * (beta - 1) / (np.pi * alpha ** 2)
            for k in np.flatnonzero(peak > 2 * sat_level):
                ix, iy = int(round(x[k])), int(round(y[k]))
                assert sat[iy, ix], f"visit {v} ccd {c}: saturated star not masked SAT"
                # the bleed trail runs along the column beyond the saturated core
                col = sat[:, ix]
                row = sat[iy, :]
                assert col.sum() > row.sum()
                n_checked += 1
    assert n_checked >= 1


def test_bad_columns_and_cosmic_rays_masked(demo):
    t = demo.truth
    n_bad = 0
    for c in t.ccds:
        exp = _load(demo, t.visits[0], c)
        expected = np.zeros(exp.shape, bool)
        for x, start, _ in t.camera.bad_columns[c]:
            expected[start:, x] = True
            n_bad += 1
        assert np.array_equal((exp.mask & exp.mask_planes.bitmask("BAD")) != 0, expected)
        cr = (exp.mask & exp.mask_planes.bitmask("CR")) != 0
        assert cr.sum() > 0
        excess = (exp.image - sky_model(t, t.visits[0], c))[cr & ~expected]
        assert np.median(excess) > 200
    assert n_bad >= 1


def test_satellite_trail_in_one_visit(demo):
    t = demo.truth
    trails = [v for v in t.visits if t.visit(v)["trail"]]
    assert len(trails) == 1
    v = trails[0]
    tr = t.visit(v)["trail"]
    lit = 0
    for c in t.ccds:
        s = sky_model(t, v, c) - t.visit(v)["sky_level"] * 1.1
        lit += int((s > 0.5 * tr["peak_adu"]).sum())
    assert lit > 100


def test_same_seed_same_files_other_seed_differs(demo):
    cfg = preset_config("tiny")
    t2 = build_truth(cfg, 1, "tiny")
    assert t2.to_dict() == demo.truth.to_dict()
    for col in ("ra", "dec", "flux_HSC-R", "flux_HSC-I", "pmra"):
        assert np.array_equal(np.asarray(t2.objects[col]), np.asarray(demo.truth.objects[col]))
    v, c = demo.truth.visits[1], 2
    e = render_ccd(t2, v, c, cfg, 1)
    f = _load(demo, v, c)
    assert np.array_equal(e.image, f.image)
    assert np.array_equal(e.mask, f.mask)
    assert np.array_equal(e.variance, f.variance)
    t3 = build_truth(cfg, 2, "tiny")
    assert not np.array_equal(render_ccd(t3, v, c, cfg, 2).image, f.image)


def test_headers_and_ingest(demo):
    t = demo.truth
    repo = Repository(demo.root)
    rows = repo.registry.exposures()
    assert len(rows) == len(t.visits) * len(t.ccds) == 32
    assert {r["filter"] for r in rows} == {"HSC-R", "HSC-I"}
    assert {r["field"] for r in rows} == {"SIMFIELD1", "SIMFIELD2"}
    assert {r["pointing"] for r in rows} == {1001, 1002}
    for r in rows[:4]:
        v = t.visit(r["visit"])
        assert r["mjd"] == pytest.approx(v["mjd"])
        # the registry centre comes from the header WCS: off the truth by the header
        # errors only (pointing 4", rotation 0.05 deg, placement 1.5 px, distortion)
        ra, dec = t.pixel_to_sky(r["visit"], r["ccd"], (r["nx"] - 1) / 2, (r["ny"] - 1) / 2)
        d = np.hypot((r["ra_center"] - ra) * np.cos(np.radians(dec)), r["dec_center"] - dec)
        assert 0 < d * 3600 < 10
    exp = _load(demo, rows[0]["visit"], rows[0]["ccd"])
    assert exp.info.instrument == "hsc" and exp.info.exptime == 300.0
    assert exp.info.psf_fwhm == pytest.approx(
        t.psf_fwhm(rows[0]["visit"], rows[0]["ccd"], 127.5, 255.5), abs=1e-3)
    assert exp.wcs.wcs.cd[0, 0] < 0  # east left
    assert exp.header["SIMSEED"] == 1


def test_truth_on_disk_is_the_truth_used(demo):
    t = load_truth(demo.root / "sim")
    assert t.visits == demo.truth.visits and t.ccds == demo.truth.ccds
    x, y = np.array([0.0, 100.5, 255.0]), np.array([0.0, 300.2, 511.0])
    for v in t.visits[:3]:
        a = t.pixel_to_sky(v, 3, x, y)
        b = demo.truth.pixel_to_sky(v, 3, x, y)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert np.array_equal(t.calibration(v, 3, x, y), demo.truth.calibration(v, 3, x, y))
    assert len(t.objects) == len(demo.truth.objects)
    assert set(t.objects["type"]) == {"star", "galaxy"}


def test_refcat_ingested_with_truth_fluxes_and_motions(demo):
    """The ingested reference catalog, loaded at a visit's epoch in HSC-R through the
    instrument's colour terms, gives the true positions and HSC-R fluxes."""
    from tractpatch.refcat.loader import load_region

    t = demo.truth
    v = t.visits[0]
    info = t.visit(v)
    ref = load_region(demo.root, "sim", info["ra"], info["dec"], 0.05,
                      epoch_mjd=info["mjd"], filter_name="HSC-R", instrument="hsc")
    assert len(ref) > 50
    ra, dec = t.object_positions(v)
    star = np.flatnonzero(np.asarray(t.objects["type"]) == "star")
    cosd = np.cos(np.radians(info["dec"]))
    # nearest true star of every reference star
    d2 = ((np.asarray(ref["ra"])[:, None] - ra[star][None, :]) * cosd) ** 2 + \
        (np.asarray(ref["dec"])[:, None] - dec[star][None, :]) ** 2
    k = np.argmin(d2, axis=1)
    sep_mas = np.sqrt(d2[np.arange(len(ref)), k]) * 3.6e6
    # Gaia-like errors: position <= 0.6 mas, proper motion <= 0.7 mas/yr over ~4 yr
    assert np.median(sep_mas) < 2.0 and np.max(sep_mas) < 15.0
    truth_flux = np.asarray(t.objects["flux_HSC-R"])[star[k]]
    ratio = np.asarray(ref["flux"]) / truth_flux
    assert np.median(ratio) == pytest.approx(1.0, abs=0.003)
    pull = (np.asarray(ref["flux"]) - truth_flux) / np.asarray(ref["flux_err"])
    assert np.std(pull) < 2.0


def test_other_simulation_into_same_root_refused(demo):
    from tractpatch.errors import UserError

    with pytest.raises(UserError, match="another simulation"):
        make_demo_repo(demo.root, preset="tiny", seed=2, ingest=False)
    assert load_truth(demo.root).seed == 1
