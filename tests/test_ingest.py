"""Registry and ingest on the real shared data, idempotence, modes and errors."""
import glob
import shutil
from collections import Counter

import numpy as np
import pytest
from astropy.io import fits

from tractpatch.errors import UserError
from tractpatch.repo import Registry, Repository, load_instrument
from tractpatch.repo.exposure_io import load_exposure
from tractpatch.repo.ingest import ingest_files
from tractpatch.repo.instrument import assigned_visit
from tests.conftest import tan_header


@pytest.fixture(scope="module")
def decam_repo(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("decam")
    repo = Repository(root, create=True)
    ingest_files(repo, [shared_data / "legacysurvey-decam-cutouts/testcase3/images"],
                 load_instrument("decam"), progress=False)
    return repo


def test_decam_testcase3_facts(decam_repo, shared_data):
    rows = decam_repo.registry.exposures()
    assert len(rows) == 8 and len({r["visit"] for r in rows}) == 8
    assert Counter(r["filter"] for r in rows) == {"g": 3, "r": 2, "z": 3}
    assert {r["ccdname"] for r in rows} == {"N10", "N11", "N12"}
    # every CCD has its oow weight and ood mask companions
    for r in rows:
        assert "_oow_" in r["weight_path"] and r["weight_kind"] == "weight"
        assert "_ood_" in r["mask_path"]
    # MJDs and exposure times straight from the primary headers
    for f in glob.glob(str(shared_data / "legacysurvey-decam-cutouts/testcase3/images/**/"
                           "*_ooi_*"), recursive=True):
        h0 = fits.getheader(f, 0)
        row = next(r for r in rows if r["visit"] == h0["EXPNUM"])
        assert row["mjd"] == pytest.approx(h0["MJD-OBS"])
        assert row["expTime"] == pytest.approx(h0["EXPTIME"])
    # sky corners enclose the CCD centre (testcase3 is at 244.779, +12.073)
    for r in rows:
        assert abs(r["ra_center"] - 244.78) < 0.1 and abs(r["dec_center"] - 12.07) < 0.1
        ras = [r[f"ra{i}"] for i in range(1, 5)]
        assert min(ras) < r["ra_center"] < max(ras)


def test_decam_exposure_with_companions(decam_repo):
    row = decam_repo.registry.exposures()[0]
    exp = load_exposure(decam_repo, row)
    w = fits.getdata(decam_repo.companion_path(row, "weight"))
    good = w > 0
    np.testing.assert_allclose(exp.variance[good], 1 / w[good], rtol=1e-6)
    assert exp.info.visit == row["visit"] and exp.info.filter == row["filter"]
    d = fits.getdata(decam_repo.companion_path(row, "mask"))
    assert np.all((exp.mask[d != 0] & exp.mask_planes.bitmask(
        "BAD", "SAT", "CR", "SUSPECT", "NO_DATA")) != 0)


def test_ingest_is_idempotent(decam_repo, shared_data):
    before = decam_repo.registry.exposures()
    rep = ingest_files(decam_repo, [shared_data / "legacysurvey-decam-cutouts/testcase3/images"],
                       load_instrument("decam"), progress=False)
    assert not rep.added and len(rep.already) == 8
    assert decam_repo.registry.exposures() == before


def test_2mass_tiles(tmp_path, shared_data):
    repo = Repository(tmp_path / "r", create=True)
    files = sorted((shared_data / "2mass-m17-ks").glob("*.fits.gz"))
    rep = ingest_files(repo, files, load_instrument("generic"), mode="register",
                       progress=False)
    rows = repo.registry.exposures()
    assert len(rows) == 8 and len(rep.added) == 8
    assert all(r["filter"] == "k" for r in rows)
    # no visit keyword: deterministic numbers from the file name, recorded
    assert sorted(r["visit"] for r in rows) == sorted(assigned_visit(f) for f in files)
    # SIN projection, 512 x 1024 at 1"/pix: the corner-to-corner span is ~0.14 x 0.28 deg
    r = rows[0]
    assert (r["nx"], r["ny"]) == (512, 1024)
    decs = [r[f"dec{i}"] for i in range(1, 5)]
    assert max(decs) - min(decs) == pytest.approx(1024 / 3600, rel=0.01)


def test_copy_mode_and_inputs_untouched(tmp_path, shared_data):
    src = tmp_path / "in"
    src.mkdir()
    f = sorted((shared_data / "2mass-m17-ks").glob("*.fits.gz"))[0]
    shutil.copy(f, src / f.name)
    before = (src / f.name).read_bytes()
    repo = Repository(tmp_path / "r", create=True)
    ingest_files(repo, [src / f.name], load_instrument("generic"), mode="copy",
                 progress=False)
    row = repo.registry.exposures()[0]
    assert repo.exposure_path(row).is_file() and not repo.exposure_path(row).is_symlink()
    assert (src / f.name).read_bytes() == before


def test_registry_round_trip_and_ledger(tmp_path):
    reg = Registry(f"sqlite:///{tmp_path / 'reg.sqlite3'}")
    row = dict(instrument="generic", visit=7, ccd=3, filter="r", path="a.fits", hdu="0",
               mjd=58000.25, ra1=1.0, dec1=2.0)
    assert reg.add_exposure(row) == "added"
    assert reg.add_exposure(row) == "same"
    with pytest.raises(UserError, match="already ingested"):
        reg.add_exposure(dict(row, path="b.fits"))
    got = reg.exposure(7, 3)
    assert got["mjd"] == 58000.25 and got["ra1"] == 1.0
    reg.add_rerun("a", None)
    reg.add_rerun("b", "a")
    assert reg.rerun_chain("b") == ["b", "a"]
    reg.ledger_set("t", "b", {"visit": 7, "ccd": 3}, "running")
    reg.ledger_set("t", "b", {"ccd": 3, "visit": 7}, "pending", fault=True, message="io")
    reg.ledger_set("t", "b", {"visit": 7, "ccd": 3}, "done")
    led = reg.ledger_get("t", "b", {"visit": 7, "ccd": 3})
    assert led["state"] == "done" and led["faults"] == 1


def test_unknown_instrument_and_bad_file(tmp_path):
    with pytest.raises(UserError, match="unknown instrument"):
        load_instrument("nosuchcam")
    bad = tmp_path / "x.fits"
    bad.write_text("hello")
    repo = Repository(tmp_path / "r", create=True)
    rep = ingest_files(repo, [bad], load_instrument("generic"), progress=False)
    assert len(rep.errors) == 1 and "not a readable FITS" in rep.errors[0]
    assert repo.registry.exposures() == []


def test_ingest_100_files(tmp_path):
    h = tan_header(FILTER="r", EXPTIME=30.0)
    for i in range(100):
        h["EXPNUM"] = 1000 + i
        fits.PrimaryHDU(np.zeros((100, 100), np.float32), h).writeto(tmp_path / f"c{i}.fits")
    repo = Repository(tmp_path / "r", create=True)
    rep = ingest_files(repo, sorted(tmp_path.glob("c*.fits")), load_instrument("generic"),
                       progress=False)
    assert len(rep.added) == 100
    assert sorted(r["visit"] for r in repo.registry.exposures()) == list(range(1000, 1100))
