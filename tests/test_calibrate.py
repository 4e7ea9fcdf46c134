"""calibrateExposure / calibrateCatalog on ingested CCDs with jointcal-format results.

The CCDs, their SRC catalogs and the jointcal/mosaic result files (a TAN-SIP WCS header
and a spatially varying PhotoCalib) are written here, so the expected outputs are known
exactly: CALEXP = counts × calib(x, y), variance × calib², the fitted WCS; CALSRC ra/dec
from astropy on the same x, y with the fitted WCS, nJy = counts × calib(x, y),
mag = −2.5 log10(nJy) + 31.4.
"""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from tractpatch.image import PhotoCalib, read_exposure, read_wcs, wcs_to_header
from tractpatch.repo import Repository

NX, NY = 64, 48
CCDS = [(100, 0), (100, 1), (101, 0)]  # (visit, ccd)
MAGZP = {100: 25.0, 101: 26.5}  # header zero points (AB mag of 1 count)


def header_wcs(visit, ccd) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0 + 0.01 * ccd, 2.0 + 0.001 * (visit - 100)]
    w.wcs.crpix = [NX / 2, NY / 2]
    w.wcs.cd = [[-0.2 / 3600, 0.0], [0.0, 0.2 / 3600]]
    return w


def fitted_wcs(visit, ccd) -> WCS:
    """The 'jointcal' WCS: shifted by ~1.5 arcsec, rotated a little, with SIP terms."""
    h = wcs_to_header(header_wcs(visit, ccd))
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    h["CRVAL1"] += 1.5 / 3600
    h["CRVAL2"] -= 1.0 / 3600
    h["CD1_2"] = 1e-7
    h["A_ORDER"], h["B_ORDER"] = 2, 2
    h["A_2_0"], h["A_0_2"], h["B_1_1"] = 2e-5, -1e-5, 3e-5
    return WCS(h)


def photo_calib(visit, ccd) -> PhotoCalib:
    """Spatially varying calibration: ±15% across the CCD."""
    c = np.array([[2.0 + 0.1 * ccd + 0.05 * (visit - 100), 0.2], [-0.3, 0.1]])
    return PhotoCalib(c, (0.0, 0.0, float(NX), float(NY)), 0.01)


def write_ccd(path, visit, ccd, rng):
    h = wcs_to_header(header_wcs(visit, ccd))
    h.update(EXPNUM=visit, CCDNUM=ccd, FILTER="r", EXPTIME=30.0, MAGZP=MAGZP[visit],
             OBJECT="TESTFIELD")
    h["MJD-OBS"] = 56000.5 + visit
    image = rng.normal(100.0, 5.0, (NY, NX)).astype(np.float32)
    image[10:14, 20:24] += 1000.0
    fits.PrimaryHDU(image, h).writeto(path)
    # inverse-variance companion (varying, so the scaling of the variance is visible)
    weight = (1.0 / (20.0 + np.arange(NX)[None, :] * np.ones((NY, 1)))).astype(np.float32)
    weight[0, 0] = 0.0  # no data pixel
    fits.PrimaryHDU(weight, h).writeto(str(path).replace(".fits", ".weight.fits"))


def write_src(path, visit, ccd, rng):
    """A SRC catalog in the documented format (subset of columns that matter here)."""
    n = 25
    x = rng.uniform(0, NX - 1, n)
    y = rng.uniform(0, NY - 1, n)
    w = header_wcs(visit, ccd)
    ra, dec = w.all_pix2world(x, y, 0)
    flux = rng.uniform(100, 1e5, n)
    flux[0] = -5.0  # a negative flux: NaN magnitude
    t = Table()
    t["id"] = np.arange(n, dtype=np.int64)
    t["x"], t["y"] = x, y
    t["x"].unit = t["y"].unit = "pix"
    t["ra"], t["dec"] = ra, dec
    t["ra"].unit = t["dec"].unit = "deg"
    t["flux_psf"], t["flux_psf_err"] = flux, np.sqrt(np.abs(flux)) + 1
    t["flux_ap_6"], t["flux_ap_6_err"] = 1.1 * flux, np.sqrt(np.abs(flux)) + 2
    for c in ("flux_psf", "flux_psf_err", "flux_ap_6", "flux_ap_6_err"):
        t[c].unit = "ct"
    t["is_star"] = np.ones(n, bool)
    t["flags"] = np.zeros(n, np.int32)
    hdu = fits.table_to_hdu(t)
    hdu.name = "SOURCES"
    hdu.header.update(wcs_to_header(w))
    hdu.header.update(VISIT=visit, CCD=ccd, FILTER="r", NX=NX, NY=NY, EXPTIME=30.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)


def write_fit(repo, fit, tract, visit, ccd, wcs, calib, size=(NX, NY)):
    """Result files in the jointcal format (interfaces.md, Calibrations)."""
    h = wcs_to_header(wcs)
    # header-only primary HDU; the CCD size in IMAGEW/IMAGEH as jointcal writes it (a
    # data-less HDU may not carry NAXIS1/2)
    h["IMAGEW"], h["IMAGEH"] = size
    p = repo.path(f"{fit}_wcs", tract=tract, visit=visit, ccd=ccd)
    p.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(header=h).writeto(p)
    calib.write(repo.path(f"{fit}_photoCalib", tract=tract, visit=visit, ccd=ccd))


@pytest.fixture(scope="module")
def repo_root(tmp_path_factory):
    from tests.conftest import run_cmd

    base = tmp_path_factory.mktemp("calib")
    raw = base / "raw"
    raw.mkdir()
    rng = np.random.default_rng(8)
    for visit, ccd in CCDS:
        write_ccd(raw / f"img{visit}_{ccd}.fits", visit, ccd, rng)
    root = base / "repo"
    run_cmd("ingestImages.py", root, *sorted(raw.glob("img*_?.fits")), "--no-progress",
            check=0)
    repo = Repository(root, rerun="fit")
    for visit, ccd in CCDS:
        row = repo.registry.exposure(visit, ccd)
        write_src(repo.path("src", pointing=row["pointing"], filter="r", visit=visit,
                            ccd=ccd), visit, ccd, rng)
        if (visit, ccd) != (101, 0):  # this CCD has no jointcal calibration
            write_fit(repo, "jointcal", 0, visit, ccd, fitted_wcs(visit, ccd),
                      photo_calib(visit, ccd))
    return root


def _files(root, rerun, kind, visit, ccd, tract=0):
    repo = Repository(root, rerun=rerun)
    return repo.path(kind, pointing=0, filter="r", tract=tract, visit=visit, ccd=ccd)


def test_calibrate_exposure_jointcal(repo_root, run):
    p = run("calibrateExposure.py", repo_root, "--rerun", "fit:calexp", "--id", "tract=0",
            "visit=100..101", "-j", "2", "--no-progress", check=0)
    # the CCD without a calibration is skipped with one line naming it and the reason
    skip = [ln for ln in p.stderr.splitlines() if "skipped" in ln]
    assert len(skip) == 1 and "visit=101 ccd=0" in skip[0] and \
        "no jointcal or mosaic calibration for tract 0" in skip[0]
    assert not _files(repo_root, "fit:calexp", "calexp", 101, 0).exists()
    repo = Repository(repo_root, rerun="fit")
    for visit, ccd in [(100, 0), (100, 1)]:
        path = _files(repo_root, "fit:calexp", "calexp", visit, ccd)
        out = read_exposure(path)
        row = repo.registry.exposure(visit, ccd)
        from tractpatch.repo.exposure_io import load_exposure
        inp = load_exposure(repo, row)
        pc = photo_calib(visit, ccd)
        yy, xx = np.mgrid[0:NY, 0:NX]
        calib = pc.evaluate(xx, yy)  # pointwise, independent of evaluate_image
        assert calib.max() / calib.min() > 1.2  # really spatially varying
        np.testing.assert_allclose(out.image, inp.image * calib, rtol=2e-7)
        finite = np.isfinite(inp.variance)
        np.testing.assert_allclose(out.variance[finite], (inp.variance * calib ** 2)[finite],
                                   rtol=2e-7)
        assert not np.isfinite(out.variance[0, 0])  # weight 0 stays no-data
        np.testing.assert_array_equal(out.mask, inp.mask)
        # the WCS is the fitted one (SIP included), not the header's
        fw = fitted_wcs(visit, ccd)
        ra_o, dec_o = out.wcs.all_pix2world(xx.ravel(), yy.ravel(), 0)
        ra_f, dec_f = fw.all_pix2world(xx.ravel(), yy.ravel(), 0)
        assert np.max(np.hypot((ra_o - ra_f) * np.cos(np.radians(dec_f)), dec_o - dec_f)) \
            * 3600 < 1e-6
        ra_h, _ = header_wcs(visit, ccd).all_pix2world(xx.ravel(), yy.ravel(), 0)
        assert np.max(np.abs(ra_h - ra_f)) * 3600 > 1.0
        h = fits.getheader(path, 0)
        assert h["CALIBSRC"] == "jointcal"
        assert h["CALIBFIL"].endswith(f"jointcal-results/0/jointcal_photoCalib-"
                                      f"{visit:07d}-{ccd:03d}.fits")
        assert h["MAGZP"] == pytest.approx(31.4 - 2.5 * np.log10(pc.mean), abs=1e-6)
        assert h["TASK"] == "calibrateExposure" and "CFGHASH" in h
        assert out.photo_calib.mean == 1.0
    # the ledger recorded the skip, so a rerun does nothing new and still exits 0
    led = Repository(repo_root).registry.ledger_rows("calexp", "calibrateExposure")
    flagged = {(r["data_id"]["visit"], r["data_id"]["ccd"], r["data_id"]["tract"]):
               r["quality"] for r in led}
    assert flagged[(100, 0, 0)] is None and flagged[(100, 1, 0)] is None
    assert "no jointcal or mosaic calibration" in flagged[(101, 0, 0)]


def test_calibrate_catalog_apply_and_switch(repo_root, run):
    run("calibrateCatalog.py", repo_root, "--rerun", "fit:calsrc", "--id", "tract=0",
        "ccd=0^1", "visit=100", "--no-progress", check=0)
    run("calibrateCatalog.py", repo_root, "--rerun", "fit:calsrc_inst", "--id", "tract=0",
        "ccd=0^1", "visit=100", "--config", "doApplyCalib=False", "--no-progress", check=0)
    repo = Repository(repo_root, rerun="fit")
    for visit, ccd in [(100, 0), (100, 1)]:
        src = Table.read(repo.find("src", pointing=0, filter="r", visit=visit, ccd=ccd))
        cal = Table.read(_files(repo_root, "fit:calsrc", "calsrc", visit, ccd))
        inst = Table.read(_files(repo_root, "fit:calsrc_inst", "calsrc", visit, ccd))
        # ra/dec from astropy with the fitted WCS on the same x, y
        ra, dec = fitted_wcs(visit, ccd).all_pix2world(src["x"], src["y"], 0)
        for t in (cal, inst):
            d = np.hypot((t["ra"] - ra) * np.cos(np.radians(dec)), t["dec"] - dec) * 3600
            assert d.max() < 1e-6
            assert str(t["ra"].unit) == "deg"
        assert np.max(np.abs(src["ra"] - ra)) * 3600 > 1.0  # they did change
        calib = photo_calib(visit, ccd).evaluate(src["x"], src["y"])
        for col in ("flux_psf", "flux_ap_6"):
            np.testing.assert_allclose(cal[f"{col}_njy"], src[col] * calib, rtol=1e-12)
            np.testing.assert_allclose(cal[f"{col}_njy_err"], src[f"{col}_err"] * calib,
                                       rtol=1e-12)
            assert str(cal[f"{col}_njy"].unit) == "nJy"
        njy = src["flux_psf"] * calib
        pos = njy > 0
        np.testing.assert_allclose(cal["mag_psf"][pos], -2.5 * np.log10(njy[pos]) + 31.4,
                                   atol=1e-10)
        np.testing.assert_allclose(cal["mag_psf_err"][pos], 2.5 / np.log(10) *
                                   src["flux_psf_err"][pos] / src["flux_psf"][pos],
                                   rtol=1e-10)
        assert np.all(np.isnan(np.ma.filled(cal["mag_psf"][~pos], np.nan))) and (~pos).sum() == 1
        # doApplyCalib=False: instrumental fluxes kept, nothing converted
        assert "flux_psf_njy" not in inst.colnames and "mag_psf" not in inst.colnames
        np.testing.assert_array_equal(inst["flux_psf"], src["flux_psf"])
        np.testing.assert_array_equal(cal["flux_psf"], src["flux_psf"])
        h = fits.getheader(_files(repo_root, "fit:calsrc", "calsrc", visit, ccd), "SOURCES")
        assert h["CALIBSRC"] == "jointcal" and h["FLUXCAL"] is True
        assert h["TASK"] == "calibrateCatalog"
        # the header WCS is the fitted one
        w = read_wcs(h)
        r2, d2 = w.all_pix2world(src["x"], src["y"], 0)
        assert np.max(np.abs(r2 - ra)) * 3600 < 1e-6
        assert fits.getheader(_files(repo_root, "fit:calsrc_inst", "calsrc", visit, ccd),
                              "SOURCES")["FLUXCAL"] is False


def test_auto_refuses_when_both_fits_exist(repo_root, run, tmp_path):
    repo = Repository(repo_root, rerun="fit2")
    # rerun fit2 holds both a jointcal and a mosaic result of visit 100 ccd 0
    write_fit(repo, "jointcal", 0, 100, 0, fitted_wcs(100, 0), photo_calib(100, 0))
    mosaic_calib = PhotoCalib.constant(3.0, bbox=(0, 0, NX, NY))
    write_fit(repo, "mosaic", 0, 100, 0, header_wcs(100, 0), mosaic_calib)
    p = run("calibrateExposure.py", repo_root, "--rerun", "fit2:calexp2", "--id", "tract=0",
            "visit=100", "ccd=0", "--no-progress", check=2)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "both jointcal and mosaic" in lines[0] and "calibSource=mosaic" in lines[0]
    # choosing explicitly works and uses the chosen fit
    run("calibrateExposure.py", repo_root, "--rerun", "fit2:calexp2", "--id", "tract=0",
        "visit=100", "ccd=0", "--config", "calibSource=mosaic", "--no-progress", check=0)
    path = _files(repo_root, "fit2:calexp2", "calexp", 100, 0)
    h = fits.getheader(path, 0)
    assert h["CALIBSRC"] == "mosaic" and "mosaic_photoCalib-0000100-000" in h["CALIBFIL"]
    assert h["MAGZP"] == pytest.approx(31.4 - 2.5 * np.log10(3.0), abs=1e-6)
    out = read_exposure(path)
    inp = read_exposure(Repository(repo_root).exposure_path(
        Repository(repo_root).registry.exposure(100, 0)))
    np.testing.assert_allclose(out.image, inp.image * 3.0, rtol=2e-7)


def test_no_results_at_all_is_one_line_error(repo_root, run):
    p = run("calibrateExposure.py", repo_root, "--rerun", "empty", "--id", "visit=100",
            "--no-progress", check=2)
    assert len(p.stderr.strip().splitlines()) == 1
    assert "no jointcal or mosaic results" in p.stderr and "tract" in p.stderr


def test_wcs_of_another_ccd_size_is_refused(repo_root, run):
    repo = Repository(repo_root, rerun="fit3")
    write_fit(repo, "jointcal", 0, 100, 0, fitted_wcs(100, 0), photo_calib(100, 0),
              size=(NX * 2, NY))
    p = run("calibrateExposure.py", repo_root, "--rerun", "fit3:calexp3", "--id", "tract=0",
            "visit=100", "ccd=0", "--config", "calibSource=jointcal", "--no-progress",
            check=2)  # its only CCD was unusable: the run made nothing
    skip = [ln for ln in p.stderr.splitlines() if "skipped" in ln]
    assert len(skip) == 1 and f"WCS is for a {2 * NX}x{NY} CCD" in skip[0]
    assert not _files(repo_root, "fit3:calexp3", "calexp", 100, 0).exists()


def test_header_source_for_catalog_and_exposure(repo_root, run):
    """calibSource=header: header WCS kept, zero point from MAGZP, tract 0 by default."""
    run("calibrateCatalog.py", repo_root, "--rerun", "fit:hdr", "--config",
        "calibSource=header", "--no-progress", check=0)
    run("calibrateExposure.py", repo_root, "--rerun", "fit:hdr", "--config",
        "calibSource=header", "--id", "visit=101", "--no-progress", check=0)
    repo = Repository(repo_root, rerun="fit")
    for visit, ccd in CCDS:
        src = Table.read(repo.find("src", pointing=0, filter="r", visit=visit, ccd=ccd))
        cal = Table.read(_files(repo_root, "fit:hdr", "calsrc", visit, ccd))
        calib = 10 ** (-0.4 * (MAGZP[visit] - 31.4))
        np.testing.assert_allclose(cal["flux_psf_njy"], src["flux_psf"] * calib, rtol=1e-12)
        ra, dec = header_wcs(visit, ccd).all_pix2world(src["x"], src["y"], 0)
        assert np.max(np.abs(cal["ra"] - ra)) * 3600 < 1e-6
        assert np.max(np.abs(cal["dec"] - dec)) * 3600 < 1e-6
        h = fits.getheader(_files(repo_root, "fit:hdr", "calsrc", visit, ccd), "SOURCES")
        assert h["CALIBSRC"] == "header" and h["MAGZP"] == pytest.approx(MAGZP[visit])
    out = read_exposure(_files(repo_root, "fit:hdr", "calexp", 101, 0))
    inp = read_exposure(Repository(repo_root).exposure_path(
        Repository(repo_root).registry.exposure(101, 0)))
    np.testing.assert_allclose(out.image, inp.image * 10 ** (-0.4 * (26.5 - 31.4)),
                               rtol=2e-7)
    assert out.wcs.wcs.ctype[0] == "RA---TAN"
    np.testing.assert_allclose(out.wcs.wcs.crval, header_wcs(101, 0).wcs.crval)
