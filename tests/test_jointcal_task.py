"""jointcal.py end to end on the simulator (catalog-only SRC files), scored on its truth."""
from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS

from tractpatch.image.photocalib import PhotoCalib

ROOT_KEY = "jc_repo"


@pytest.fixture(scope="module")
def sim_repo(tmp_path_factory):
    from tests.conftest import make_catalog_survey

    return make_catalog_survey(tmp_path_factory.mktemp("jointcal") / "repo", visits=4)


@pytest.fixture(scope="module")
def jointcal_run(sim_repo):
    from tests.conftest import run_cmd

    run_cmd("makeDiscreteSkyMap.py", sim_repo, "--rerun", "sim:jc", "--id",
            "filter=HSC-I", "--no-progress", check=0)
    p = run_cmd("jointcal.py", sim_repo, "--rerun", "jc", "--id", "tract=0",
                "--no-progress", check=0)
    return sim_repo, p


def test_outputs_match_truth(jointcal_run):
    from tractpatch.sim.truth import load_truth

    root, proc = jointcal_run
    truth = load_truth(root / "sim")
    out = root / "rerun" / "jc" / "jointcal-results" / "0"
    wcs_files = sorted(out.glob("jointcal_wcs-*.fits"))
    assert len(wcs_files) == 24
    for p in wcs_files:
        visit, ccd = map(int, re.findall(r"(\d+)-(\d+)\.fits", p.name)[0])
        h = fits.getheader(p)
        assert h["TASK"] == "jointcal" and h["JCWCSRES"] < 1.0
        nx, ny = h["IMAGEW"], h["IMAGEH"]
        gx, gy = np.meshgrid(np.linspace(0, nx - 1, 15), np.linspace(0, ny - 1, 15))
        gx, gy = gx.ravel(), gy.ravel()
        ra, dec = WCS(h).all_pix2world(gx, gy, 0)
        tra, tdec = truth.pixel_to_sky(visit, ccd, gx, gy)
        d = np.hypot((ra - tra) * np.cos(np.radians(dec)), dec - tdec) * 3.6e6
        assert np.sqrt(np.mean(d ** 2)) < 5.0, p.name  # issue 6: 5 mas RMS per CCD
        pc = PhotoCalib.read(str(p).replace("jointcal_wcs", "jointcal_photoCalib"))
        dm = 2.5e3 * np.log10(pc.evaluate(gx, gy) / truth.calibration(visit, ccd, gx, gy))
        assert np.sqrt(np.mean(dm ** 2)) < 3.0, p.name  # and 3 mmag RMS


def test_metrics_file(jointcal_run):
    root, proc = jointcal_run
    m = yaml.safe_load((root / "rerun" / "jc" / "jointcal-results" / "0" /
                        "jointcal_metrics-HSC-I.yaml").read_text())
    assert m["prepared_ccdImages"] == 24
    assert m["collected_refStars"] > m["prepared_refStars"] > 100
    assert 0.5 < m["final_chi2"] / m["final_ndof"] < 1.5
    assert set(m["astrometry_rms_ref_mas_per_visit"]) == {1000, 1002, 1004, 1006}
    assert "astrometry rms" in proc.stderr


def test_missing_tract_is_one_line_error(sim_repo):
    from tests.conftest import run_cmd

    p = run_cmd("jointcal.py", sim_repo, "--rerun", "jc2", "--id", "visit=1000",
                check=2)
    assert "tract" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_tpv_outputs_match_truth_and_the_tan_sip_run(jointcal_run):
    """--config wcsFormat=tpv: TPV headers (SCAMP's form) that astropy reads, as close to
    the truth as the TAN-SIP run's and within 1 mas of them (the same fit); the batch
    write leaves no temporary file behind."""
    from tests.conftest import run_cmd
    from tractpatch.sim.truth import load_truth

    root, _ = jointcal_run
    run_cmd("jointcal.py", root, "--rerun", "jc:jctpv", "--id", "tract=0", "--config",
            "wcsFormat=tpv", "--no-progress", check=0)
    truth = load_truth(root / "sim")
    out = root / "rerun" / "jctpv" / "jointcal-results" / "0"
    sip_out = root / "rerun" / "jc" / "jointcal-results" / "0"
    files = sorted(out.glob("jointcal_wcs-*.fits"))
    assert len(files) == 24 and not list(out.glob(".tmp-*"))
    for p in files:
        visit, ccd = map(int, re.findall(r"(\d+)-(\d+)\.fits", p.name)[0])
        h = fits.getheader(p)
        assert h["CTYPE1"] == "RA---TPV" and "PV1_7" in h and "A_ORDER" not in h
        assert h["JCWCSRES"] < 1.0
        nx, ny = h["IMAGEW"], h["IMAGEH"]
        gx, gy = np.meshgrid(np.linspace(0, nx - 1, 15), np.linspace(0, ny - 1, 15))
        gx, gy = gx.ravel(), gy.ravel()
        ra, dec = WCS(h).all_pix2world(gx, gy, 0)
        tra, tdec = truth.pixel_to_sky(visit, ccd, gx, gy)
        d = np.hypot((ra - tra) * np.cos(np.radians(dec)), dec - tdec) * 3.6e6
        assert np.sqrt(np.mean(d ** 2)) < 5.0, p.name
        sra, sdec = WCS(fits.getheader(sip_out / p.name)).all_pix2world(gx, gy, 0)
        d = np.hypot((ra - sra) * np.cos(np.radians(dec)), dec - sdec) * 3.6e6
        assert d.max() < 2.0, p.name  # each within 1 mas of the same fitted model
