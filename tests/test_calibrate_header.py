"""calibSource=header on real data: 2MASS M17 (MAGZP keyword) and DECam (survey-ccds table).

- 2MASS Ks tiles of M17: each CALEXP is counts × 10^(−0.4 (MAGZP − 31.4)) with MAGZP read
  by hand from the tile's header, and the calibrated tiles agree in their overlaps (one
  tile reprojected onto the other with reproject_interp; sky-subtracted flux in 8×8-pixel
  blocks, bright blocks, median ratio): a seamless mosaic is possible.
- DECam testcase3 cutouts: nJy per count = 10^(−0.4 (ccdzpt + 2.5 log10(exptime) − 31.4))
  per CCD, computed by hand from survey-ccds-1.fits.gz.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from tractpatch.image import read_exposure
from tractpatch.repo import Repository
from tractpatch.repo.exposure_io import load_exposure


def _calexp(repo, row, tract=0):
    return repo.path("calexp", pointing=row["pointing"], filter=row["filter"], tract=tract,
                     visit=row["visit"], ccd=row["ccd"])


@pytest.fixture(scope="module")
def m17(tmp_path_factory, shared_data):
    from tests.conftest import run_cmd

    root = tmp_path_factory.mktemp("m17") / "repo"
    tiles = sorted((shared_data / "2mass-m17-ks").glob("aK_asky_*.fits.gz"))
    assert len(tiles) == 8
    run_cmd("ingestImages.py", root, *tiles, "--no-progress", check=0)
    # no --id tract: header calibrations go to tract 0
    run_cmd("calibrateExposure.py", root, "--rerun", "hdr", "--id", "filter=k",
            "--config", "calibSource=header", "--no-progress", check=0)
    return Repository(root, rerun="hdr")


def test_2mass_calexp_is_counts_times_magzp(m17):
    for row in m17.registry.exposures():
        raw = fits.getheader(m17.exposure_path(row))
        calib = 10 ** (-0.4 * (raw["MAGZP"] - 31.4))  # nJy per DN, by hand
        path = _calexp(m17, row)
        assert path.parent.name == "0"  # tract 0 in the path
        out = read_exposure(path)
        inp = load_exposure(m17, row)
        np.testing.assert_allclose(out.image, inp.image * calib, rtol=2e-7)
        np.testing.assert_allclose(out.variance, inp.variance * calib ** 2, rtol=2e-7)
        h = fits.getheader(path, 0)
        assert h["CALIBSRC"] == "header" and h["CALIBFIL"].endswith("[MAGZP]")
        assert h["MAGZP"] == pytest.approx(raw["MAGZP"], abs=1e-6)
        assert h["CALIBWCS"] == "input header"
        # WCS kept from the input header (RA---SIN with CROTA2)
        x, y = np.array([0.0, 511.0, 100.0]), np.array([0.0, 1023.0, 700.0])
        np.testing.assert_allclose(out.wcs.all_pix2world(x, y, 0),
                                   inp.wcs.all_pix2world(x, y, 0), atol=1e-10)


def _block_sums(img, ok, n=8):
    ny, nx = (s // n * n for s in img.shape)
    s = np.where(ok, img, 0.0)[:ny, :nx].reshape(ny // n, n, nx // n, n).sum(axis=(1, 3))
    full = ok[:ny, :nx].reshape(ny // n, n, nx // n, n).all(axis=(1, 3))
    return s[full]


def test_2mass_overlaps_are_seamless(m17):
    from reproject import reproject_interp

    exps = [read_exposure(_calexp(m17, r)) for r in m17.registry.exposures()]
    ratios = []
    for a, b in itertools.combinations(exps, 2):
        # only the part of tile a that b's corners cover (fast: the overlaps are small)
        xb, yb = a.wcs.all_world2pix(*b.sky_corners().T, 0)
        x0, x1 = max(int(xb.min()), 0), min(int(np.ceil(xb.max())) + 1, a.shape[1])
        y0, y1 = max(int(yb.min()), 0), min(int(np.ceil(yb.max())) + 1, a.shape[0])
        if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) < 5000:
            continue
        a_img = a.image[y0:y1, x0:x1]
        warped, foot = reproject_interp((b.image, b.wcs), a.wcs[y0:y1, x0:x1],
                                        shape_out=a_img.shape)
        ov = (foot > 0.99) & np.isfinite(warped)
        if ov.sum() < 5000:
            continue
        # sky: the median of each tile over the same sky area (the overlap)
        da = a_img - np.median(a_img[ov])
        db = np.where(ov, warped, 0.0) - np.median(warped[ov])
        # block sums are immune to the different PSFs of the scans and to the smoothing
        # of the interpolation; bright blocks chosen on the mean of both (no selection bias)
        sa, sb = _block_sums(da, ov), _block_sums(db, ov)
        mean = (sa + sb) / 2
        bright = mean > np.percentile(mean, 90)
        ratios.append(np.median(sb[bright] / sa[bright]))
    ratios = np.array(ratios)
    print("2MASS overlap flux ratios:", np.round(np.sort(ratios), 4))
    assert len(ratios) >= 10  # 4 same-scan and >= 6 cross-scan overlaps
    assert np.all(np.abs(ratios - 1) < 0.05), ratios
    assert abs(np.median(ratios) - 1) < 0.01, ratios


@pytest.fixture(scope="module")
def decam(tmp_path_factory, shared_data):
    from tests.conftest import run_cmd

    case = shared_data / "legacysurvey-decam-cutouts" / "testcase3"
    root = tmp_path_factory.mktemp("decam") / "repo"
    run_cmd("ingestImages.py", root, case / "images", "--instrument", "decam",
            "--no-progress", check=0)
    return root, case / "survey-ccds-1.fits.gz"


def test_decam_survey_ccds_zero_points(decam, run):
    root, table = decam
    run("calibrateExposure.py", root, "--rerun", "zp", "--id", "tract=0",
        "--config", "calibSource=header", f"zeroPointTable={table}", "--no-progress",
        check=0)
    repo = Repository(root, rerun="zp")
    ccds = Table.read(table)
    rows = repo.registry.exposures()
    assert len(rows) == 8
    for row in rows:
        (t,) = [r for r in ccds if r["expnum"] == row["visit"]
                and r["ccdname"].strip() == row["ccdname"]]
        # legacypipe's convention: ccdzpt is for 1 count per second
        zpt_exp = float(t["ccdzpt"]) + 2.5 * np.log10(float(t["exptime"]))
        calib = 10 ** (-0.4 * (zpt_exp - 31.4))
        path = _calexp(repo, row)
        h = fits.getheader(path, 0)
        assert h["CALIBORG"] == pytest.approx(calib, rel=1e-12)
        assert h["MAGZP"] == pytest.approx(zpt_exp, abs=1e-6)
        assert h["CALIBFIL"] == f"{table}[ccdzpt]"
        out = read_exposure(path)
        inp = load_exposure(repo, row)
        np.testing.assert_allclose(out.image, inp.image * calib, rtol=2e-7)
        np.testing.assert_array_equal(out.mask, inp.mask)


def test_missing_keyword_and_bad_table(decam, run, tmp_path):
    root, _ = decam
    # DECam CP headers have no MAGZP: every CCD skipped with the reason; nothing made, exit 2
    p = run("calibrateExposure.py", root, "--rerun", "kw", "--id", "visit=349590^425858",
            "--config", "calibSource=header", "--no-progress", check=2)
    skipped = [ln for ln in p.stderr.splitlines() if "skipped" in ln]
    assert len(skipped) == 2 and all("zeroPointKeyword" in ln for ln in skipped)
    # a table path that does not exist: one line, exit 2, before any work
    p = run("calibrateExposure.py", root, "--rerun", "kw2", "--config", "calibSource=header",
            f"zeroPointTable={tmp_path / 'nope.fits'}", "--no-progress", check=2)
    assert len(p.stderr.strip().splitlines()) == 1 and "nope.fits" in p.stderr
