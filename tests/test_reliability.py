"""Keep going under faults, lose nothing: ledger semantics, resume after SIGKILL, dead
workers, disk full, showLedger.py. The basics of skip/retry are in tests/test_cli.py.

The runs use tests/fits_task.py: one 256x256 float32 FITS image per CCD (known pixels),
written atomically, with switches that kill a unit's worker or fill the disk.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from fits_task import expected_image
from tractpatch.repo import Repository, load_instrument
from tractpatch.repo.ingest import ingest_files
from tractpatch.repo.registry import Registry, UpstreamNotDone, canonical_data_id
from tests.conftest import tan_header

HERE = Path(__file__).parent
VISITS = (10, 11, 12, 13)
CCDS = (0, 1)


def make_repo(root: Path, visits=VISITS, ccds=CCDS, registry_url=None) -> Path:
    """A repository with one 20x20 CCD per (visit, ccd), ingested with 'generic';
    the registry at ``registry_url`` (recorded in ROOT/repo.yaml) when given."""
    h = tan_header(crpix=(10, 10), EXPTIME=30.0)
    (root / "in").mkdir(parents=True)
    for visit in visits:
        for ccd in ccds:
            h["EXPNUM"], h["CCDNUM"], h["FILTER"] = visit, ccd, "r"
            fits.PrimaryHDU(np.zeros((20, 20), np.float32), h).writeto(
                root / "in" / f"v{visit}c{ccd}.fits")
    if registry_url:
        (root / "repo").mkdir()
        (root / "repo" / "repo.yaml").write_text(f"registry: {registry_url}\n")
    ingest_files(Repository(root / "repo", create=True), [root / "in"],
                 load_instrument("generic"), progress=False)
    return root / "repo"


def fits_task(*args, **kw):
    return subprocess.run([sys.executable, str(HERE / "fits_task.py"), *map(str, args)],
                          capture_output=True, text=True, **kw)


def show_ledger(*args):
    return subprocess.run([sys.executable, str(HERE.parent / "bin" / "showLedger.py"),
                           *map(str, args)], capture_output=True, text=True)


def ledger_by_visit_ccd(root, rerun, task="fitsTask"):
    rows = Repository(root).registry.ledger_rows(rerun, task)
    return {(r["data_id"]["visit"], r["data_id"]["ccd"]): r for r in rows}


def one_line_error(p):
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def assert_same_fits(a: Path, b: Path) -> None:
    """Same pixels and same header cards (CHECKSUM/DATASUM/DATE aside)."""
    skip = {"CHECKSUM", "DATASUM", "DATE"}
    with fits.open(a) as fa, fits.open(b) as fb:
        assert len(fa) == len(fb)
        for ha, hb in zip(fa, fb):
            assert np.array_equal(ha.data, hb.data)
            ca = [(c.keyword, c.value) for c in ha.header.cards if c.keyword not in skip]
            cb = [(c.keyword, c.value) for c in hb.header.cards if c.keyword not in skip]
            assert ca == cb


def _without_checksum_cards(path: Path) -> bytes:
    raw = path.read_bytes()
    assert len(raw) % 2880 == 0  # whole FITS blocks: not truncated
    cards = [raw[i:i + 80] for i in range(0, len(raw), 80)]
    return b"".join(c for c in cards if not c.startswith((b"CHECKSUM", b"DATASUM")))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("rel"))


# --- ledger semantics (registry helpers) ------------------------------------------------
def check_ledger_semantics(reg: Registry) -> None:
    """Flags, faults and the helpers later stages call (also run on PostgreSQL)."""
    reg.add_rerun("det", None)
    reg.add_rerun("cal", "det")
    unit = lambda v, c: {"visit": v, "ccd": c, "filter": "r", "pointing": 0}  # noqa: E731
    reg.ledger_set("detectSources", "det", unit(1, 0), "done")
    reg.ledger_set("detectSources", "det", unit(1, 1), "done", quality="no stars",
                   message="no stars")
    reg.ledger_set("detectSources", "det", unit(2, 0), "pending", fault=True,
                   message="OSError: disk on fire")
    reg.ledger_set("detectSources", "det", unit(2, 1), "running")
    # asked from the downstream rerun "cal", projected onto (visit, ccd)
    key = lambda v, c: canonical_data_id({"visit": v, "ccd": c})  # noqa: E731
    assert reg.flagged_units("cal", "detectSources", keys=("visit", "ccd")) == {key(1, 1)}
    assert reg.done_units("cal", "detectSources", keys=("visit", "ccd")) == {key(1, 0)}
    assert reg.done_units("cal", "detectSources", keys=("visit", "ccd"),
                          flagged=True) == {key(1, 0), key(1, 1)}
    assert reg.flagged_units("det", "detectSources") == {canonical_data_id(unit(1, 1))}
    # a clean unit is used, a flagged one left out, a fault blocks the dependant
    assert reg.unit_ok("cal", "detectSources", {"visit": 1, "ccd": 0}) is True
    assert reg.unit_ok("cal", "detectSources", unit(1, 1)) is False
    with pytest.raises(UpstreamNotDone, match=r"visit=2 ccd=0: detectSources is "
                       r"pending \(1 faults: OSError: disk on fire\)"):
        reg.unit_ok("cal", "detectSources", {"visit": 2, "ccd": 0})
    with pytest.raises(UpstreamNotDone, match="is running"):
        reg.unit_ok("cal", "detectSources", {"visit": 2, "ccd": 1})
    with pytest.raises(UpstreamNotDone, match="has not run"):
        reg.unit_ok("cal", "detectSources", {"visit": 3, "ccd": 0})
    # a unit redone in the nearer rerun hides the flag of the farther one
    reg.ledger_set("detectSources", "cal", unit(1, 1), "done")
    assert reg.unit_ok("cal", "detectSources", {"visit": 1, "ccd": 1}) is True
    assert reg.flagged_units("cal", "detectSources") == set()
    # fault counts accumulate; done keeps them
    d = {"visit": 5, "ccd": 2}
    for _ in range(3):
        reg.ledger_set("t", "r", d, "running")
        reg.ledger_set("t", "r", d, "pending", fault=True, message="IOError")
    reg.ledger_set("t", "r", d, "done")
    row = reg.ledger_get("t", "r", d)
    assert (row["state"], row["faults"], row["quality"]) == ("done", 3, None)
    assert row["host"] and row["pid"] == os.getpid() and row["finished"] >= row["started"]


def test_ledger_semantics_sqlite(tmp_path):
    check_ledger_semantics(Registry(f"sqlite:///{tmp_path / 'r.sqlite3'}"))


def test_later_stage_leaves_flagged_units_out_and_is_blocked_by_faults(repo):
    """fitsTask flags visit 11 and faults on visit 13; the per-visit stackTask (in a
    rerun chained to it) uses visits 10 and 12, flags 11 and is blocked on 13."""
    ids = ["--id", "visit=10..13", "--no-progress", "--retries", "1"]
    p = fits_task(repo, "--rerun", "cal", *ids, "--config", "size=8", "flagVisit=11",
                  "faultVisit=13")
    assert p.returncode == 1 and "input/output error" in p.stderr
    p = fits_task("stack", repo, "--rerun", "cal:stack", *ids)
    assert p.returncode == 1, p.stderr
    assert "1 fault" in p.stderr and "1 quality" in p.stderr and "2 done" in p.stderr
    out = repo / "rerun" / "stack"
    assert (out / "stack-10.txt").read_text() == "0 1\n"
    assert (out / "stack-12.txt").read_text() == "0 1\n"
    assert not (out / "stack-11.txt").exists() and not (out / "stack-13.txt").exists()
    rows = {r["data_id"]["visit"]: r for r in
            Repository(repo).registry.ledger_rows("stack", "stackTask")}
    assert rows[11]["quality"] == "visit=11: every CCD is flagged"
    assert rows[13]["state"] == "pending" and rows[13]["faults"] == 1  # not retried
    assert rows[13]["message"].startswith("blocked: visit=13 ccd=0: fitsTask is pending")
    # the fault upstream is cured; the blocked unit runs on the next run, others skip
    p = fits_task(repo, "--rerun", "cal", *ids, "--clobber-config", "--config", "size=8",
                  "flagVisit=11")
    assert p.returncode == 0 and "8 units: 2 done, 6 skipped" in p.stderr
    p = fits_task("stack", repo, "--rerun", "cal:stack", *ids)
    assert p.returncode == 0, p.stderr
    assert "4 units: 1 done, 3 skipped" in p.stderr
    assert (out / "stack-13.txt").read_text() == "0 1\n"


# --- resume after SIGKILL ---------------------------------------------------------------
def _visible_finals(rerun_dir: Path) -> list[Path]:
    return sorted(rerun_dir.glob("fits-*.fits"))


def test_sigkill_mid_run_then_resume_gives_identical_outputs(repo):
    size = 256
    ids = ["--id", "visit=10..13", "--no-progress", "--config", f"size={size}"]
    ref = fits_task(repo, "--rerun", "ref", *ids, "pause=0.25")  # serial: same bytes
    assert ref.returncode == 0, ref.stderr
    rerun_dir = repo / "rerun" / "killed"
    proc = subprocess.Popen([sys.executable, str(HERE / "fits_task.py"), repo, "--rerun",
                             "killed", *ids, "pause=0.25", "-j", "2"],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    seen_tmp = False
    checked = set()
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            # every file visible under its final name is complete and correct
            for p in _visible_finals(rerun_dir):
                if p not in checked:
                    visit, ccd = map(int, p.stem.split("-")[1:])
                    assert np.array_equal(fits.getdata(p),
                                          expected_image(visit, ccd, size))
                    checked.add(p)
            seen_tmp = seen_tmp or any(rerun_dir.glob(".tmp-fits-*"))
            if len(checked) >= 2 and any(rerun_dir.glob(".tmp-fits-*")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: parent and -j workers
        proc.wait()
    assert seen_tmp
    leftovers = sorted(rerun_dir.glob(".tmp-*"))
    assert leftovers, "killed mid-write: a .tmp-* file is expected"
    ledger = ledger_by_visit_ccd(repo, "killed")
    states = {r["state"] for r in ledger.values()}
    assert "running" in states  # the units it was working on
    n_done_before = sum(r["state"] == "done" for r in ledger.values())
    assert 1 <= n_done_before < 8  # a unit renamed but not yet recorded is redone
    # showLedger reports the interrupted units as running, and why
    p = show_ledger(repo, "--rerun", "killed")
    assert p.returncode == 0, p.stderr
    assert "the next run retries it" in p.stdout
    # restart: the units left running are not done, so they run again
    p = fits_task(repo, "--rerun", "killed", *ids, "pause=0.25", "-j", "2")
    assert p.returncode == 0, p.stderr
    assert "8 units" in p.stderr and f"{n_done_before} skipped" in p.stderr
    ledger = ledger_by_visit_ccd(repo, "killed")
    assert len(ledger) == 8 and all(r["state"] == "done" for r in ledger.values())
    for visit in VISITS:
        for ccd in CCDS:
            name = f"fits-{visit}-{ccd}.fits"
            assert_same_fits(rerun_dir / name, repo / "rerun" / "ref" / name)
            # and byte for byte, but for the checksum cards (their comment has a date)
            assert _without_checksum_cards(rerun_dir / name) == _without_checksum_cards(
                repo / "rerun" / "ref" / name)
    # leftovers are never read; showLedger --clean-tmp removes them (age-guarded)
    p = show_ledger(repo, "--rerun", "killed", "--clean-tmp")
    assert "removed 0 .tmp-*" in p.stdout and all(l.exists() for l in leftovers)
    p = show_ledger(repo, "--rerun", "killed", "--clean-tmp", "--min-age", "0")
    assert f"removed {len(leftovers)} .tmp-*" in p.stdout
    assert not list(rerun_dir.glob(".tmp-*"))
    assert len(_visible_finals(rerun_dir)) == 8


# --- dead workers with -j 2 --------------------------------------------------------------
def test_dead_workers_are_faults_retried_and_the_run_completes(repo):
    # ccd=0 only: every dead worker costs a new pool (a process start, seconds)
    ids = ["--id", "visit=10..13", "ccd=0", "-j", "2", "--no-progress"]
    p = fits_task(repo, "--rerun", "dying", *ids, "--retries", "1", "--config",
                  "dieOnceVisit=11", "dieAlwaysVisit=13", "flagVisit=12", "size=16")
    assert p.returncode == 1, p.stderr  # visit 13 still faulted
    assert "Traceback" not in p.stderr
    ledger = ledger_by_visit_ccd(repo, "dying")
    rerun_dir = repo / "rerun" / "dying"
    # died once, then succeeded (a unit running beside a dying one may be charged too)
    assert ledger[(11, 0)]["state"] == "done" and ledger[(11, 0)]["faults"] >= 1
    assert np.array_equal(fits.getdata(rerun_dir / "fits-11-0.fits"),
                          expected_image(11, 0, 16))
    # always dies: retried once alone, then left faulted
    assert ledger[(13, 0)]["state"] == "pending" and ledger[(13, 0)]["faults"] == 2
    assert ledger[(13, 0)]["message"].startswith("worker process died (BrokenProcessPool")
    assert not (rerun_dir / "fits-13-0.fits").exists()
    # a quality flag completes the unit
    assert ledger[(12, 0)]["state"] == "done"
    assert ledger[(12, 0)]["quality"] == "visit=12 ccd=0: no stars"
    assert ledger[(10, 0)]["state"] == "done"
    assert np.array_equal(fits.getdata(rerun_dir / "fits-10-0.fits"),
                          expected_image(10, 0, 16))
    assert "visit=13" in p.stderr and "failed" in p.stderr
    # showLedger: the faulted and flagged units, why, and the per-task summary
    p = show_ledger(repo, "--rerun", "dying")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    faulted = [l for l in lines if l.split()[:2] == ["fitsTask", "faulted"]]
    flagged = [l for l in lines if l.split()[:2] == ["fitsTask", "flagged"]]
    assert len(faulted) == 1 and "visit=13" in faulted[0]
    assert "worker process died" in faulted[0] and faulted[0].split()[2] == "2"
    assert len(flagged) == 1 and "visit=12" in flagged[0] and "no stars" in flagged[0]
    # task units done flagged faulted running pending
    assert lines[-1].split() == ["fitsTask", "4", "2", "1", "1", "0", "0"]
    p = show_ledger(repo, "--rerun", "dying", "--id", "visit=12..13")
    assert [l.split()[1] for l in p.stdout.splitlines() if l.startswith("fitsTask ")][
        :2] == ["flagged", "faulted"]
    # resume without the crash: only the faulted unit runs
    p = fits_task(repo, "--rerun", "dying", *ids, "--clobber-config", "--config",
                  "dieOnceVisit=11", "flagVisit=12", "size=16")
    assert p.returncode == 0, p.stderr
    assert "3 skipped" in p.stderr and "1 done" in p.stderr
    ledger = ledger_by_visit_ccd(repo, "dying")
    assert ledger[(13, 0)]["state"] == "done" and ledger[(13, 0)]["faults"] == 2


def test_show_ledger_errors(repo):
    assert "no such rerun" in one_line_error(show_ledger(repo, "--rerun", "nosuch"))
    fits_task(repo, "--rerun", "small", "--id", "visit=10", "--config", "size=8",
              "--no-progress")
    line = one_line_error(show_ledger(repo, "--rerun", "small", "--task", "nope"))
    assert "--task nope" in line and "fitsTask" in line
    line = one_line_error(show_ledger(repo, "--rerun", "small", "--id", "visit=99"))
    assert "matches no unit" in line
    p = show_ledger(repo, "--rerun", "small", "--task", "fitsTask")
    assert p.stdout.splitlines()[-1].split() == ["fitsTask", "2", "2", "0", "0", "0", "0"]


# --- disk full ---------------------------------------------------------------------------
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_disk_full_ends_in_one_line_and_keeps_the_old_file(repo, jobs):
    rerun = f"full{jobs}"
    args = ["--rerun", rerun, "--id", "visit=10..11", "--no-progress", "-j", jobs]
    p = fits_task(repo, *args, "--config", "size=64")
    assert p.returncode == 0, p.stderr
    target = repo / "rerun" / rerun / "fits-11-0.fits"
    before = target.read_bytes()
    mtime = target.stat().st_mtime_ns
    p = fits_task(repo, *args, "--clobber-output", "--clobber-config", "--config",
                  "size=64", "diskFullVisit=11")
    line = one_line_error(p)
    assert "no space left on device" in line and "free space" in line
    assert str(repo / "rerun" / rerun / "fits-11-") in line  # names the final file
    assert ".tmp-" not in line
    assert target.read_bytes() == before and target.stat().st_mtime_ns == mtime
    assert not list((repo / "rerun" / rerun).glob(".tmp-*"))
    row = next(r for (v, c), r in ledger_by_visit_ccd(repo, rerun).items() if v == 11
               and r["state"] != "done")
    assert row["faults"] == 1 and "No space left" in row["message"]
