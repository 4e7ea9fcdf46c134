"""The simulator's truth model: mappings, calibration formula, camera, catalog-only, CLI."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from tractpatch.repo import Repository
from tractpatch.sim import load_truth, make_demo_repo, preset_config
from tractpatch.sim import camera as cam
from tractpatch.sim.observing import build_truth
from tractpatch.sim.sky import COLOR_TERMS, hsc_mag_from_ps1


@pytest.fixture(scope="module")
def truth():
    return build_truth(preset_config("tiny"), 7, "tiny")


def test_pixel_sky_round_trip(truth):
    rng = np.random.default_rng(0)
    x = rng.uniform(-50, truth.camera.nx + 50, 500)
    y = rng.uniform(-50, truth.camera.ny + 50, 500)
    for v in truth.visits[::3]:
        for c in truth.ccds:
            ra, dec = truth.pixel_to_sky(v, c, x, y)
            x2, y2 = truth.sky_to_pixel(v, c, ra, dec)
            assert np.max(np.hypot(x2 - x, y2 - y)) < 1e-6


def test_distortion_size_and_inverse():
    # HSC scale: 10" at 0.75 deg; the inverse is exact
    k1 = (10 / 3600) / 0.75 ** 3
    up, vp = cam.distort(np.array([0.75, 0.0]), np.array([0.0, 0.3]), k1)
    assert (up[0] - 0.75) * 3600 == pytest.approx(10.0)
    assert (vp[1] - 0.3) * 3600 == pytest.approx(10.0 * (0.3 / 0.75) ** 3)
    u, v = cam.undistort(up, vp, k1)
    assert np.allclose([u[0], v[1]], [0.75, 0.3], atol=1e-12)


def test_header_wcs_is_truth_without_errors_and_distortion():
    """With no header errors and no distortion the header TAN WCS reproduces the truth
    (checks the formula of docs/simulator.md and the east-left parity)."""
    cfg = preset_config("tiny", ["distortion_arcsec=0", "pointing_error_arcsec=0",
                                 "rotation_error_deg=0", "ccd_placement_error_px=0"])
    t = build_truth(cfg, 3, "tiny")
    x = np.array([0.0, 255.0, 0.0, 255.0, 100.0])
    y = np.array([0.0, 0.0, 511.0, 511.0, 250.0])
    for v in t.visits[:3]:
        for c in t.ccds:
            w = t.header_wcs(v, c)
            ra_w, dec_w = w.all_pix2world(x, y, 0)
            ra_t, dec_t = t.pixel_to_sky(v, c, x, y)
            sep = np.hypot((ra_w - ra_t) * np.cos(np.radians(dec_t)), dec_w - dec_t)
            assert np.max(sep) * 3600 < 1e-6
    # rotation 0, CCD 0: +x goes west (RA decreases), +y north
    w = t.header_wcs(t.visits[0], 0)
    assert w.wcs.cd[0, 0] < 0 < w.wcs.cd[1, 1]


def test_header_errors_are_realistic(truth):
    """Header pointing, rotation and placement errors, as configured."""
    cfg = preset_config("tiny")
    for v in truth.visits:
        info = truth.visit(v)
        dra = (info["hdr_ra"] - info["ra"]) * np.cos(np.radians(info["dec"])) * 3600
        assert abs(dra) <= cfg.pointing_error_arcsec + 1e-9
        assert abs(info["hdr_dec"] - info["dec"]) * 3600 <= cfg.pointing_error_arcsec + 1e-9
        assert abs(info["hdr_rotation"] - info["rotation"]) <= cfg.rotation_error_deg
    assert np.all(np.abs(truth.camera.hdr_dfx) <= cfg.ccd_placement_error_px)
    assert np.any(np.abs(truth.camera.hdr_dfx) > 0.1)


def test_calibration_formula(truth):
    v, c = truth.visits[5], 2
    info = truth.visit(v)
    x, y = 10.0, 400.0
    fx, fy = truth.focal_plane(c, x, y)
    rho2 = (fx ** 2 + fy ** 2) / truth.camera.fp_radius ** 2
    ill = 1 + truth.illumination["a"] * rho2 + truth.illumination["b"] * fx / \
        truth.camera.fp_radius
    calib0 = 3631e9 * 10 ** (-0.4 * preset_config("tiny").zero_point[info["filter"]])
    expected = calib0 * truth.camera.qe[c] * info["transparency"] * ill
    assert truth.calibration(v, c, x, y) == pytest.approx(expected, rel=1e-12)
    trans = [truth.visit(v)["transparency"] for v in truth.visits]
    assert 0.9 <= min(trans) and max(trans) <= 1.1 and max(trans) - min(trans) > 0.02


def test_hsc_layout_has_104_ccds_in_a_disk():
    centres = cam.layout_centres(104, 2048, 4176, 70, 120)
    assert len(centres) == 104
    far = np.hypot(np.abs(centres[:, 0]) + 1024, np.abs(centres[:, 1]) + 2088)
    # the field radius is ~0.75 deg at 0.168"/pixel
    assert far.max() * 0.168 / 3600 == pytest.approx(0.8, abs=0.1)
    assert len({tuple(c) for c in centres}) == 104


def test_colour_terms_and_star_fluxes(truth):
    o = truth.objects[truth.objects["type"] == "star"]
    mags = {b: np.asarray(o[b]) for b in "grizy"}
    for f, (p, s, c0, c1, c2) in COLOR_TERMS.items():
        col = mags[p] - mags[s]
        assert np.allclose(np.asarray(o[f"mag_{f}"]),
                           mags[p] + c0 + c1 * col + c2 * col ** 2)
        assert np.allclose(np.asarray(o[f"flux_{f}"]),
                           3631e9 * 10 ** (-0.4 * hsc_mag_from_ps1(f, mags)))
    # HSC-I differs from PS1 i by -0.155 (i-z): a few hundredths for red stars
    d = np.asarray(o["mag_HSC-I"]) - mags["i"]
    assert d.min() < -0.05


def test_object_positions_apply_proper_motion(truth):
    v = truth.visits[0]
    ra, dec = truth.object_positions(v)
    dt = truth.visit(v)["epoch"] - 2016.0
    assert 3.5 < dt < 4.5
    o = truth.objects
    k = int(np.argmax(np.abs(o["pmdec"])))
    assert (dec[k] - o["dec"][k]) * 3.6e6 == pytest.approx(o["pmdec"][k] * dt)


def test_catalog_only_mode(tmp_path):
    cfg = preset_config("tiny", ["catalog_n_ccds=3", "catalog_visits_per_field=2",
                                 "filters=[HSC-I]", "galaxy_density=20000",
                                 "star_density=20000"])
    out = make_demo_repo(tmp_path, "tiny", seed=4, config=cfg, catalog_only=True,
                         rerun="cat", ingest=False)
    t = out.truth
    assert len(out.catalogs) == 6 and t.camera.nx == 2048 and t.camera.ny == 4176
    repo = Repository(tmp_path, rerun="cat")
    rows = repo.registry.exposures()
    assert len(rows) == 6
    path = repo.path("src", pointing=rows[0]["pointing"], filter="HSC-I",
                     visit=rows[0]["visit"], ccd=rows[0]["ccd"])
    assert path.exists()
    with fits.open(path) as h:
        hdr = h["SOURCES"].header
        for k in ("VISIT", "CCD", "FILTER", "MJD-OBS", "TIMESYS", "EXPTIME", "NX", "NY",
                  "PSFFWHM", "SKYLEVEL", "SKYNOISE", "CTYPE1", "CD1_1", "TASK", "CFGHASH"):
            assert k in hdr
    src = Table.read(path, hdu="SOURCES")
    for col in ("id", "x", "y", "x_err", "y_err", "ra", "dec", "flux_psf", "flux_psf_err",
                "flux_ap_6", "flux_ap_6_err", "mag_inst", "a", "b", "theta", "fwhm", "snr",
                "is_star", "flags", "flag_saturated", "flag_edge", "flag_bad", "flag_cr",
                "flag_blended"):
        assert col in src.colnames
    assert str(src["x"].unit) == "pix" and str(src["ra"].unit) == "deg"
    v, c = int(hdr["VISIT"]), int(hdr["CCD"])
    ok = src["snr"] > 20
    ra, dec = t.object_positions(v)
    xt, yt = t.sky_to_pixel(v, c, ra[src["truth_id"] - 1], dec[src["truth_id"] - 1])
    pull = (np.asarray(src["x"]) - xt)[ok] / np.asarray(src["x_err"])[ok]
    assert np.std(pull) == pytest.approx(1.0, abs=0.15)
    counts = t.true_counts(v, c, np.asarray(src["truth_id"]) - 1, xt, yt)
    fpull = ((src["flux_psf"] - counts) / src["flux_psf_err"])[ok]
    assert np.std(fpull) == pytest.approx(1.0, abs=0.15)
    assert np.all(src["snr"] > 5)


def test_cli_errors_are_one_line(tmp_path, run):
    p = run("makeDemoRepo.py", tmp_path / "r", "--preset", "huge")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "huge" in p.stderr
    p = run("makeDemoRepo.py", tmp_path / "r", "--config", "n_ccds=many")
    assert p.returncode == 2 and "n_ccds" in p.stderr
    assert "Traceback" not in p.stderr
    p = run("makeDemoRepo.py", tmp_path / "r", "--preset", "tiny", "--show", "config",
            "--config", "n_fields=1")
    assert p.returncode == 0 and "n_fields: 1" in p.stdout and "n_ccds: 4" in p.stdout


def test_load_truth_missing_is_user_error(tmp_path):
    from tractpatch.errors import UserError

    with pytest.raises(UserError, match="makeDemoRepo"):
        load_truth(tmp_path)


def test_fitted_sip_wcs_and_photo_calib_reproduce_truth(truth):
    rng = np.random.default_rng(5)
    x = rng.uniform(0, truth.camera.nx - 1, 300)
    y = rng.uniform(0, truth.camera.ny - 1, 300)
    for v in truth.visits[:2]:
        for c in truth.ccds[:2]:
            w = truth.sip_wcs(v, c)
            ra_w, dec_w = w.all_pix2world(x, y, 0)
            ra_t, dec_t = truth.pixel_to_sky(v, c, x, y)
            sep = np.hypot((ra_w - ra_t) * np.cos(np.radians(dec_t)), dec_w - dec_t)
            assert np.max(sep) * 3.6e6 < 0.05  # mas
            pc = truth.photo_calib(v, c)
            assert np.allclose(pc.evaluate(x, y), truth.calibration(v, c, x, y),
                               rtol=1e-10)
