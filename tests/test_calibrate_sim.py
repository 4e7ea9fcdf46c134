"""calibrateExposure / calibrateCatalog on the simulator with the TRUE calibrations.

The true pixel→sky map of every CCD is written as a TAN-SIP jointcal_wcs file
(``truth.sip_wcs``, checked against the truth to < 2 mas) and the true calibration
(calib0 × QE × transparency × illumination, quadratic in pixels; ``truth.photo_calib``,
an exact order-2 Chebyshev) as a jointcal_photoCalib file.
Then, with SRC catalogs from detectSources:

- CALSRC PSF fluxes of stars equal the true fluxes times the Moffat flux fraction inside
  the 12-pixel radius the PSF fluxes are aperture-corrected to (known from the truth's
  PSF), within the noise;
- CALSRC RA/Dec of stars equal the true positions at the visit epoch (centroid noise);
- CALEXP aperture sums of stars equal the catalog's calibrated aperture fluxes.
"""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from tractpatch.image import read_exposure, wcs_to_header
from tractpatch.repo import Repository



def true_wcs(truth, visit, ccd):
    """The simulator's TAN-SIP fit of the true pixel→sky map, checked against the truth."""
    w = truth.sip_wcs(visit, ccd, degree=3)
    ny, nx = truth.ccd_shape()
    yy, xx = np.meshgrid(np.linspace(0, ny - 1, 13), np.linspace(0, nx - 1, 7),
                         indexing="ij")
    ra, dec = truth.pixel_to_sky(visit, ccd, xx.ravel(), yy.ravel())
    r2, d2 = w.all_pix2world(xx.ravel(), yy.ravel(), 0)
    assert np.max(np.hypot((r2 - ra) * np.cos(np.radians(dec)), d2 - dec)) * 3.6e6 < 2.0
    return w


def true_photo_calib(truth, visit, ccd):
    """The true calibration as a PhotoCalib, checked against the truth (spatially varying)."""
    pc = truth.photo_calib(visit, ccd)
    ny, nx = truth.ccd_shape()
    yy, xx = np.meshgrid(np.linspace(0, ny - 1, 9), np.linspace(0, nx - 1, 9),
                         indexing="ij")
    x, y = xx.ravel(), yy.ravel()
    np.testing.assert_allclose(pc.evaluate(x, y), truth.calibration(visit, ccd, x, y),
                               rtol=1e-10)
    return pc


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from tests.conftest import run_cmd
    from tractpatch.sim import make_demo_repo, preset_config

    root = tmp_path_factory.mktemp("calsim") / "repo"
    # tiny with one field and one visit per filter: 2 visits x 4 CCDs
    config = preset_config("tiny", ["n_fields=1", "visits_per_field=1"])
    demo = make_demo_repo(root, preset="tiny", config=config)
    truth = demo.truth
    run_cmd("detectSources.py", root, "--rerun", "src", "--no-progress", check=0)
    repo = Repository(root, rerun="src")
    for row in repo.registry.exposures():
        v, c = row["visit"], row["ccd"]
        p = repo.path("jointcal_wcs", tract=0, visit=v, ccd=c)
        p.parent.mkdir(parents=True, exist_ok=True)
        fits.PrimaryHDU(header=wcs_to_header(true_wcs(truth, v, c))).writeto(p)
        true_photo_calib(truth, v, c).write(
            repo.path("jointcal_photoCalib", tract=0, visit=v, ccd=c))
    run_cmd("calibrateCatalog.py", root, "--rerun", "src:cal", "--id", "tract=0", "-j", "2",
            "--no-progress", check=0)
    run_cmd("calibrateExposure.py", root, "--rerun", "src:cal", "--id", "tract=0",
            "--no-progress", check=0)
    return Repository(root, rerun="src:cal"), truth


def matched_stars(repo, truth, row):
    """CALSRC rows of clean stars matched to true stars (< 1 px) and their truth index."""
    v, c, f = row["visit"], row["ccd"], row["filter"]
    t = Table.read(repo.path("calsrc", pointing=row["pointing"], filter=f, tract=0,
                             visit=v, ccd=c))
    idx, tx, ty = truth.objects_on(v, c)
    star = truth.objects["type"][idx] == "star"
    idx, tx, ty = idx[star], tx[star], ty[star]
    d = np.hypot(np.asarray(t["x"])[:, None] - tx, np.asarray(t["y"])[:, None] - ty)
    j = np.argmin(d, axis=1)
    ok = (d[np.arange(len(t)), j] < 1.0) & (t["flags"] == 0) & (t["snr"] > 10)
    return t[ok], idx[j[ok]]


def test_calsrc_star_fluxes_and_positions_match_truth(sim):
    repo, truth = sim
    ratio, pull, snr, sep_mas, ccd_median, nominal_median = [], [], [], [], [], []
    rows = repo.registry.exposures()
    assert len(rows) == 8
    for row in rows:
        t, jj = matched_stars(repo, truth, row)
        true = np.asarray(truth.objects[f"flux_{row['filter']}"])[jj]
        expected = true  # detectSources' flux_psf is a total flux (growth-curve corrected)
        ratio += list(t["flux_psf_njy"] / expected)
        ccd_median.append(np.median(t["flux_psf_njy"] / expected))
        # control: the filter's nominal calibration alone (no QE, transparency,
        # illumination) is visibly wrong, so the test can tell a wrong calibration
        nominal = truth.filters[row["filter"]]["calib0"] * t["flux_psf"]
        nominal_median.append(np.median(nominal / expected))
        pull += list((t["flux_psf_njy"] - expected) / t["flux_psf_njy_err"])
        snr += list(t["snr"])
        ra, dec = truth.object_positions(row["visit"])
        sep_mas += list(np.hypot((t["ra"] - ra[jj]) * np.cos(np.radians(dec[jj])),
                                 t["dec"] - dec[jj]) * 3.6e6)
        np.testing.assert_allclose(t["mag_psf"], -2.5 * np.log10(t["flux_psf_njy"]) + 31.4)
    ratio, pull, snr, sep_mas = map(np.array, (ratio, pull, snr, sep_mas))
    assert len(ratio) > 150
    faint = snr < 100  # noise-dominated: the pulls are unit-normal-like
    print(f"{len(ratio)} stars: median flux ratio {np.median(ratio):.4f}; S/N<100 "
          f"({faint.sum()}): median pull {np.median(pull[faint]):.2f}, robust sd "
          f"{1.4826 * np.median(np.abs(pull[faint] - np.median(pull[faint]))):.2f}; "
          f"S/N>=100: median ratio {np.median(ratio[~faint]):.4f}; separation median "
          f"{np.median(sep_mas):.1f} mas, p90 {np.percentile(sep_mas, 90):.1f} mas")
    # PSF-flux systematics of detectSources are ~0.5%; the calibration varies by ~4%
    # across a CCD and by ~8% between CCDs and visits
    assert abs(np.median(ratio) - 1) < 0.01, np.median(ratio)
    print("per-CCD median flux ratios", np.round(ccd_median, 4), "nominal",
          np.round(nominal_median, 4))
    # per CCD (~20 stars, a few bright ones with PSF-flux systematics): within 4%
    assert np.max(np.abs(np.array(ccd_median) - 1)) < 0.04, ccd_median
    assert np.max(np.abs(np.array(nominal_median) - 1)) > 0.05, nominal_median
    assert faint.sum() > 50
    assert abs(np.median(pull[faint])) < 0.5
    # detectSources errors look ~1.6x small (PSF-flux model error); allow up to 2
    assert 1.4826 * np.median(np.abs(pull[faint] - np.median(pull[faint]))) < 2.0
    bright = ~faint
    assert abs(np.median(ratio[bright]) - 1) < 0.015
    assert 1.4826 * np.median(np.abs(ratio[bright] - np.median(ratio[bright]))) < 0.015
    # positions: centroid noise only (the WCS is the truth's)
    assert np.median(sep_mas) < 15 and np.percentile(sep_mas, 90) < 60


def test_calexp_aperture_sums_equal_catalog_fluxes(sim):
    import sep

    from tractpatch.sources.background import estimate_background

    repo, truth = sim
    ratios = []
    for row in repo.registry.exposures():
        t, _ = matched_stars(repo, truth, row)
        e = read_exposure(repo.path("calexp", pointing=row["pointing"],
                                    filter=row["filter"], tract=0, visit=row["visit"],
                                    ccd=row["ccd"]))
        assert fits.getheader(repo.path("calexp", pointing=row["pointing"],
                                        filter=row["filter"], tract=0, visit=row["visit"],
                                        ccd=row["ccd"]), 0)["CALIBSRC"] == "jointcal"
        bad = (e.mask & e.mask_planes.bitmask("BAD", "NO_DATA")) != 0
        img = np.where(bad, 0.0, e.image).astype(np.float32)
        sky = estimate_background(img, bad).level
        s, _, _ = sep.sum_circle((img - sky).astype(np.float64),
                                 np.asarray(t["x"], float), np.asarray(t["y"], float), 6.0)
        ratios += list(s / t["flux_ap_6_njy"])
    ratios = np.array(ratios)
    print("CALEXP aperture sum / CALSRC flux_ap_6_njy: median %.4f" % np.median(ratios))
    # the sky estimates (ours here, detectSources' there) differ at the 0.5% level; a
    # calibration applied differently to CALEXP and CALSRC would differ by several %
    assert abs(np.median(ratios) - 1) < 0.01, np.median(ratios)
    assert 1.4826 * np.median(np.abs(ratios - np.median(ratios))) < 0.015


def test_header_fluxmag0_keyword(sim, run):
    """calibSource=header with zeroPointKeyword=FLUXMAG0 (HSC: counts of a 0-mag source):
    the simulator writes the filter's nominal calibration there."""
    repo, truth = sim
    row = repo.registry.exposures()[0]
    run("calibrateExposure.py", repo.root, "--rerun", "src:hdr", "--id",
        f"visit={row['visit']}", f"ccd={row['ccd']}", "--config", "calibSource=header",
        "zeroPointKeyword=FLUXMAG0", "--no-progress", check=0)
    path = Repository(repo.root, rerun="src:hdr").path(
        "calexp", pointing=row["pointing"], filter=row["filter"], tract=0,
        visit=row["visit"], ccd=row["ccd"])
    fluxmag0 = fits.getheader(repo.exposure_path(row), 0)["FLUXMAG0"]
    h = fits.getheader(path, 0)
    assert h["MAGZP"] == pytest.approx(2.5 * np.log10(fluxmag0), abs=1e-6)
    # 10^(-0.4 (2.5 log10 F - 31.4)) = 10^12.56 / F, and F = 3631e9 / calib0
    assert h["CALIBORG"] == pytest.approx(10 ** 12.56 / fluxmag0, rel=1e-12)
    assert h["CALIBORG"] == pytest.approx(truth.filters[row["filter"]]["calib0"], rel=1e-4)
