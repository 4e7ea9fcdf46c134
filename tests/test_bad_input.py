"""Bad input tried as a new user would (issue 10): one line naming the file or data ID
and the remedy, a non-zero exit status, no traceback, and nothing else changed."""
import shutil

import numpy as np
import pytest
from astropy.io import fits

from tractpatch.sim import make_demo_repo

from tests.conftest import run_cmd, tan_header


def one_line(p, status=2):
    assert p.returncode == status, p.stderr
    lines = [l for l in p.stderr.splitlines() if "error" in l.lower()]
    assert "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1, p.stderr
    return lines[0]


def snapshot(root):
    """Every file under root with its size and mtime (to check nothing changed)."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "registry.sqlite3-shm"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "repo"
    make_demo_repo(root, preset="tiny")
    run_cmd("detectSources.py", root, "--rerun", "r", "--id", "filter=HSC-R", check=0)
    return root


def test_zero_exposure_time(tmp_path):
    h = tan_header()
    h["FILTER"], h["EXPTIME"], h["EXPNUM"] = "r", 0.0, 5
    f = tmp_path / "zero.fits"
    fits.PrimaryHDU(np.zeros((100, 100), np.float32), h).writeto(f)
    line = one_line(run_cmd("ingestImages.py", tmp_path / "repo", f))
    assert str(f) in line and "EXPTIME" in line


def test_unknown_filter(tmp_path):
    h = tan_header()
    h["FILTER"], h["EXPTIME"], h["VISIT"], h["CCD"] = "HSC-Q", 30.0, 5, 1
    f = tmp_path / "q.fits"
    fits.PrimaryHDU(np.zeros((100, 100), np.float32), h).writeto(f)
    line = one_line(run_cmd("ingestImages.py", tmp_path / "repo", f, "--instrument", "hsc"))
    assert "unknown filter 'HSC-Q'" in line and "instrument YAML" in line


def test_visits_that_do_not_overlap_the_tract(sim):
    # an all-sky rings skymap: tract 0 is at the south pole, far from the visits
    run_cmd("makeSkyMap.py", sim, "--rerun", "r:rings", check=0)
    before = snapshot(sim / "rerun")
    line = one_line(run_cmd("jointcal.py", sim, "--rerun", "rings", "--id", "filter=HSC-R",
                            "tract=0"))
    assert "filter=HSC-R tract=0 matches no data" in line and "overlap the tract" in line
    assert snapshot(sim / "rerun") == before


def test_refcat_with_no_stars_in_the_area(sim, tmp_path):
    # a reference catalog far away from the survey, as the only one offered
    from astropy.table import Table

    from tractpatch.refcat.ingest import ingest_catalog
    from tractpatch.refcat.config import IngestRefCatConfig

    t = Table({"ra": [300.0, 300.01], "dec": [-40.0, -40.01], "r": [18.0, 18.5],
               "r_err": [0.01, 0.01]})
    f = tmp_path / "far.fits"
    t.write(f)
    ingest_catalog(sim, [f], "far", IngestRefCatConfig(ra_name="ra", dec_name="dec",
                                                       mag_column_list=["r"],
                                                       mag_err_column_map={"r": "r_err"}))
    run_cmd("makeDiscreteSkyMap.py", sim, "--rerun", "r:far", "--id", "filter=HSC-R", check=0)
    p = run_cmd("jointcal.py", sim, "--rerun", "far", "--id", "filter=HSC-R", "tract=0",
                "--config", "astrometryRefCat=far", "photometryRefCat=far")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "far" in p.stderr and ("no" in p.stderr.lower() and "star" in p.stderr.lower())
    assert not list((sim / "rerun" / "far").glob("jointcal-results/0/*.fits"))
    shutil.rmtree(sim / "ref_cats" / "far")


def test_empty_source_catalog(sim):
    """A CCD whose SRC catalog is empty is left out with its reason; the fit goes on."""
    from astropy.table import Table

    from tractpatch.repo import Repository

    repo = Repository(sim, rerun="r:empty")
    row = repo.registry.exposures(filter="HSC-R")[0]
    src = repo.find("src", **row)
    empty = Table.read(src)[:0]
    dest = repo.path("src", **row)
    dest.parent.mkdir(parents=True, exist_ok=True)
    empty.meta.update(fits.getheader(src, 1))
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(empty, header=fits.getheader(src, 1),
                                                      name="SOURCES")]).writeto(dest)
    run_cmd("makeDiscreteSkyMap.py", sim, "--rerun", "empty", "--id", "filter=HSC-R", check=0)
    p = run_cmd("jointcal.py", sim, "--rerun", "empty", "--id", "filter=HSC-R", "tract=0",
                "--config", "minMeasurementsPerCcd=8")
    assert p.returncode == 0, p.stderr
    assert f"dropped visit={row['visit']} ccd={row['ccd']}: 0 associated stars" in p.stderr
    assert repo.find("jointcal_wcs", tract=0, visit=row["visit"], ccd=row["ccd"]) is None
