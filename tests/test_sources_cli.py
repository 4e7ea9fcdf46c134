"""detectSources.py on repositories of real DECam CP cutouts (legacysurvey testcases).

testcase3 (8 CCDs, 41x51 pixels) checks paths, headers, summaries and a bad CCD; no
Gaia star falls inside those cutouts, so the astrometric check against Gaia DR2 runs on
testcase4 and testcase8 (245x251 and 280x375 pixels, with Gaia stars in the frame).
"""
from __future__ import annotations

import glob
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table, vstack

from tractpatch.image.wcs_io import read_wcs
from tractpatch.repo import Repository
from tractpatch.sources.catalog import read_src

CUTOUTS = "legacysurvey-decam-cutouts"


def _gaia(shared, case):
    files = sorted(glob.glob(str(shared / CUTOUTS / case / "gaia" / "*.fits")))
    return vstack([Table.read(f) for f in files])


@pytest.fixture(scope="module")
def tc3(tmp_path_factory, shared_data):
    """testcase3, testcase4 and testcase8 ingested together with an all-NaN copy of one
    testcase3 CCD (as exposure 999001), then one detectSources.py run over everything."""
    from tests.conftest import run_cmd

    base = tmp_path_factory.mktemp("tc3")
    root = base / "repo"
    # a CCD with no usable pixel: a CP triple whose image pixels are all NaN
    nan_dir = base / "nan"
    nan_dir.mkdir()
    ooi = next((shared_data / CUTOUTS / "testcase3" / "images").rglob("*_ooi_g_*.fits"))
    for kind in ("ooi", "oow", "ood"):
        with fits.open(str(ooi).replace("_ooi_", f"_{kind}_")) as hdul:
            hdul[0].header["EXPNUM"] = 999001
            if kind == "ooi":
                hdul[1].data = np.full_like(hdul[1].data, np.nan)
            hdul.writeto(nan_dir / f"allnan_{kind}_g.fits")
    run_cmd("ingestImages.py", root, nan_dir,
            *(shared_data / CUTOUTS / c / "images" for c in ("testcase3", "testcase4",
                                                               "testcase8")),
            "--instrument", "decam", "--no-progress", check=0)
    p = run_cmd("detectSources.py", root, "--rerun", "src", "--id", "visit=0..9999999",
                "--no-progress")
    return root, p


TC3_VISITS = {349590, 425858, 425859, 432164, 722778, 747382, 763152, 770496}


def test_src_written_for_every_good_ccd(tc3):
    root, p = tc3
    assert p.returncode == 0, p.stderr
    repo = Repository(root, rerun="src")
    rows = [r for r in repo.registry.exposures() if r["visit"] in TC3_VISITS]
    assert len(rows) == 8
    for r in rows:
        path = repo.path("src", visit=r["visit"], ccd=r["ccd"], pointing=r["pointing"],
                         filter=r["filter"])
        assert path.exists(), path
        assert path.name == f"SRC-{r['visit']:07d}-{r['ccd']:03d}.fits"
        assert path.parent.parts[-3:] == (f"{r['pointing']:05d}", r["filter"], "output")
        table, h = read_src(path)
        assert len(table) >= 1
        assert (h["VISIT"], h["CCD"], h["FILTER"]) == (r["visit"], r["ccd"], r["filter"])
        assert h["NX"] == r["nx"] and h["NY"] == r["ny"]
        assert h["MJD-OBS"] == pytest.approx(r["mjd"]) and h["TIMESYS"] == "UTC"
        assert h["TASK"] == "detectSources" and "CFGHASH" in h and "TPVERSN" in h
        # sky coordinates come from the header WCS written with the catalog
        ra, dec = read_wcs(h).pixel_to_world_values(table["x"], table["y"])
        np.testing.assert_allclose(table["ra"], ra, atol=1e-9)
        np.testing.assert_allclose(table["dec"], dec, atol=1e-9)
        # and that WCS is the CCD's own: the catalog lies inside the registry corners
        assert min(r["ra1"], r["ra2"], r["ra3"], r["ra4"]) - 1e-4 < table["ra"].min()
        assert table["ra"].max() < max(r["ra1"], r["ra2"], r["ra3"], r["ra4"]) + 1e-4
        # the CP inverse-variance map gives the sky noise: our sky scatter matches it
        # (to 10%: one galaxy fills much of these 41x51 cutouts)
        ivar = fits.getdata(repo.companion_path(r, "weight"), 1)
        assert h["SKYNOISE"] == pytest.approx(np.median(ivar) ** -0.5, rel=0.1)


def test_ccd_summaries_in_registry(tc3, shared_data):
    root, _ = tc3
    repo = Repository(root)
    summ = {s["visit"]: s for s in repo.registry.ccd_summaries("src")}
    assert TC3_VISITS <= set(summ) and 999001 not in summ
    # the Legacy Surveys' own sky (ccdskycounts, counts/s/pixel over the full CCD)
    ccds = Table.read(shared_data / CUTOUTS / "testcase3" / "survey-ccds-1.fits.gz")
    for row in ccds:
        s = summ[int(row["expnum"])]
        assert s["sky_level"] == pytest.approx(row["ccdskycounts"] * row["exptime"],
                                               rel=0.03)
        assert s["n_sources"] >= 1 and s["sky_noise"] > 0
        # each cutout holds one bright extended galaxy and no Gaia star
        src, h = read_src(next((root / "rerun" / "src").rglob(
            f"SRC-{int(row['expnum']):07d}-*.fits")))
        assert s["n_sources"] == len(src) == h["NSOURCES"]
        assert s["n_stars"] == int(np.sum(src["is_star"]))


def test_all_nan_ccd_flagged_and_run_goes_on(tc3):
    root, p = tc3
    repo = Repository(root)
    led = {row["data_id"] if isinstance(row.get("data_id"), str) else str(row): row
           for row in repo.registry.ledger_rows("src", "detectSources")}
    bad = [row for key, row in led.items() if "999001" in key]
    assert len(bad) == 1 and bad[0]["state"] == "done"
    assert "NaN" in bad[0]["quality"] and "999001" in bad[0]["quality"]
    assert "11 units" in p.stderr and "10 done" in p.stderr and "1 quality" in p.stderr


@pytest.mark.parametrize("case,visit", [("testcase4", 630780), ("testcase8", 695765)])
def test_positions_agree_with_gaia(case, visit, tc3, shared_data):
    root, _ = tc3
    gaia = _gaia(shared_data, case)
    gc = SkyCoord(gaia["ra"], gaia["dec"], unit="deg")
    paths = sorted((root / "rerun" / "src").rglob(f"SRC-{visit:07d}-*.fits"))
    assert len(paths) == 1
    table, h = read_src(paths[0])
    bright = table[np.argsort(-table["snr"])[:10]]
    c = SkyCoord(bright["ra"], bright["dec"], unit="deg")
    _, d, _ = c.match_to_catalog_sky(gc)
    matched = d.arcsec < 1.5
    assert matched.sum() >= 3
    assert np.all(d.arcsec[matched] < 0.5), d.arcsec[matched]
    # the PSF FWHM from the stellar locus agrees with the Legacy Surveys' value
    ccds = Table.read(shared_data / CUTOUTS / case / "survey-ccds-1.fits.gz")
    row = ccds[ccds["expnum"] == visit][0]
    assert h["PSFFWPIX"] == pytest.approx(row["fwhm"], rel=0.15)
