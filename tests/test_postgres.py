"""The registry and the processing ledger on a real PostgreSQL server.

The server is started once per test session by tests/pg_server.py (Debian's initdb and
pg_ctl on 127.0.0.1); each test gets a fresh database. Without the server binaries or
the psycopg2 driver these tests FAIL with the install command (they are not skipped).
"""
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from fits_task import expected_image
from pg_server import pg_server, pg_url  # noqa: F401  (fixtures)
from test_reliability import (HERE, check_ledger_semantics, fits_task,
                              ledger_by_visit_ccd, make_repo)
from test_reliability_concurrency import CREATE, N_PROCS, hammer_registry
from tractpatch.errors import UserError
from tractpatch.repo import Repository, load_instrument
from tractpatch.repo.ingest import ingest_files
from tractpatch.repo.registry import Registry

#: exposure columns that legitimately differ between two ingests of the same files
VOLATILE = {"id", "ingested"}


def test_server_is_postgresql(pg_url):
    reg = Registry(pg_url)
    assert reg.engine.dialect.name == "postgresql"
    with reg.engine.connect() as conn:
        version = conn.exec_driver_sql("show server_version_num").scalar()
    assert int(version) >= 120000


def test_exposures_round_trip_like_sqlite(pg_url, tmp_path, shared_data):
    """Ingest real DECam cutouts into PostgreSQL and SQLite: identical rows."""
    images = shared_data / "legacysurvey-decam-cutouts/testcase3/images"
    rows = {}
    for name, url in (("pg", pg_url), ("sqlite", None)):
        root = tmp_path / name
        root.mkdir()
        if url:
            (root / "repo.yaml").write_text(f"registry: {url}\n")
        report = ingest_files(Repository(root), [images], load_instrument("decam"),
                              progress=False)
        assert report.added and not report.errors
        rows[name] = Repository(root).registry.exposures()
    assert len(rows["pg"]) == len(rows["sqlite"]) == 8  # known: 8 CCDs in testcase3
    assert {r["ccdname"] for r in rows["pg"]} == {"N10", "N11", "N12"}
    for a, b in zip(rows["pg"], rows["sqlite"]):
        assert {k: v for k, v in a.items() if k not in VOLATILE} == {
            k: v for k, v in b.items() if k not in VOLATILE}
    # the same file again: "same"; another file with the same visit/ccd: refused
    reg = Registry(pg_url)
    row = {k: v for k, v in rows["pg"][0].items() if k not in VOLATILE}
    assert reg.add_exposure(row) == "same"
    with pytest.raises(UserError, match="already ingested from"):
        reg.add_exposure({**row, "path": "/elsewhere.fits"})


def test_reruns_skymap_and_summaries(pg_url):
    reg = Registry(pg_url)
    reg.add_rerun("a", None)
    reg.add_rerun("b", "a")
    reg.add_rerun("c", "b")
    reg.add_rerun("c", "b")  # idempotent
    assert reg.rerun_chain("c") == ["c", "b", "a"]
    with pytest.raises(UserError, match="already has input b"):
        reg.add_rerun("c", "a")
    reg.put_skymap("c", "discrete", "{}", [dict(tract=0, ra=10.0, dec=20.0,
                                                 num_patches_x=2, num_patches_y=1,
                                                 polygon="[]")],
                   [dict(tract=0, x=0, y=0, polygon="[]"),
                    dict(tract=0, x=1, y=0, polygon="[]")])
    assert [t["tract"] for t in reg.tracts("c")] == [0]
    assert sorted((p["x"], p["y"]) for p in reg.patches("c", 0)) == [(0, 0), (1, 0)]
    reg.put_ccd_summary("c", 2**33, 5, psf_fwhm=0.7, n_sources=10)  # BigInteger visit
    reg.put_ccd_summary("c", 2**33, 5, psf_fwhm=0.8, n_sources=12)  # replaced
    assert [(s["visit"], s["psf_fwhm"], s["n_sources"]) for s in reg.ccd_summaries("c")
            ] == [(2**33, 0.8, 12)]


def test_ledger_semantics_postgres(pg_url):
    check_ledger_semantics(Registry(pg_url))


def test_long_data_id_in_ledger(pg_url):
    """A data ID longer than 255 characters (PostgreSQL enforces VARCHAR lengths)."""
    reg = Registry(pg_url)
    d = {"tract": 9813, "patch": "4,5", "filter": "HSC-I", "field": "F" * 300}
    reg.ledger_set("coaddDriver", "r", d, "done")
    assert reg.ledger_rows("r")[0]["data_id"] == d


def test_concurrent_writers_postgres(pg_url):
    hammer_registry(pg_url)


def test_concurrent_first_open_postgres(pg_url):
    procs = [subprocess.Popen([sys.executable, "-c", CREATE, pg_url, str(k)],
                              stderr=subprocess.PIPE, text=True) for k in range(N_PROCS)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert sorted(Registry(pg_url).rerun_chain(f"r{k}")[0] for k in range(N_PROCS)) == [
        f"r{k}" for k in range(N_PROCS)]


def test_task_run_and_resume_on_postgres(pg_url, tmp_path):
    """A run with the registry on PostgreSQL (ROOT/repo.yaml), flags and resume (many
    processes writing at once are tested by test_concurrent_writers_postgres)."""
    root = make_repo(tmp_path, visits=(10, 11, 12), registry_url=pg_url)
    args = ["--rerun", "pg", "--id", "visit=10..12", "--no-progress",
            "--config", "size=16", "flagVisit=11"]
    p = fits_task(root, *args)
    assert p.returncode == 0, p.stderr
    assert not (root / "registry.sqlite3").exists()  # everything went to PostgreSQL
    ledger = ledger_by_visit_ccd(root, "pg")
    assert len(ledger) == 6
    assert {k for k, r in ledger.items() if r["quality"]} == {(11, 0), (11, 1)}
    assert all(r["state"] == "done" for r in ledger.values())
    assert np.array_equal(fits.getdata(root / "rerun/pg/fits-12-1.fits"),
                          expected_image(12, 1, 16))
    p = fits_task(root, *args)
    assert p.returncode == 0 and "6 skipped" in p.stderr
    p = subprocess.run([sys.executable, str(HERE.parent / "bin/showLedger.py"), root,
                        "--rerun", "pg"], capture_output=True, text=True)
    assert p.stdout.splitlines()[-1].split() == ["fitsTask", "6", "4", "2", "0", "0", "0"]
