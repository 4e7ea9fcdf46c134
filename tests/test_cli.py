"""The shared command line: options, config, ledger, errors (one line, exit 2)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tractpatch.repo import Repository, load_instrument
from tractpatch.repo.ingest import ingest_files
from tests.conftest import tan_header

HERE = Path(__file__).parent


def echo(*args):
    return subprocess.run([sys.executable, str(HERE / "echo_task.py"), *map(str, args)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def repo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    h = tan_header(EXPTIME=30.0)
    (root / "in").mkdir()
    for visit in (10, 12, 14):
        for ccd in (0, 1):
            h["EXPNUM"], h["CCDNUM"], h["FILTER"] = visit, ccd, "r" if visit < 14 else "i"
            fits.PrimaryHDU(np.zeros((100, 100), np.float32), h).writeto(
                root / "in" / f"v{visit}c{ccd}.fits")
    ingest_files(Repository(root / "repo", create=True), [root / "in"],
                 load_instrument("generic"), progress=False)
    return root / "repo"


def one_line_error(p):
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_show_data_expands_ids(repo_root):
    p = echo(repo_root, "--rerun", "a", "--id", "visit=10..14:2", "ccd=1", "--show", "data")
    assert p.returncode == 0
    assert [l.split()[:2] for l in p.stdout.splitlines()] == [
        ["visit=10", "ccd=1"], ["visit=12", "ccd=1"], ["visit=14", "ccd=1"]]
    p = echo(repo_root, "--rerun", "a", "--id", "filter=r", "--id", "visit=14", "ccd=0",
             "--show", "data")
    assert len(p.stdout.splitlines()) == 5  # union of the two --id options


def test_show_config_and_override(repo_root):
    p = echo(repo_root, "--rerun", "a", "--config", "scale=3.5", "--show", "config")
    assert p.returncode == 0 and "scale: 3.5" in p.stdout


def test_run_writes_config_and_refuses_changes(repo_root):
    p = echo(repo_root, "--rerun", "run1", "--id", "visit=10", "-j", "2")
    assert p.returncode == 0, p.stderr
    assert (repo_root / "rerun/run1/echo-10-1.txt").read_text() == "2.0\n"
    assert "scale: 2.0" in (repo_root / "rerun/run1/config/echoTask.yaml").read_text()
    line = one_line_error(echo(repo_root, "--rerun", "run1", "--id", "visit=10",
                               "--config", "scale=5"))
    assert "differs" in line and "scale" in line and "--clobber-config" in line
    p = echo(repo_root, "--rerun", "run1", "--id", "visit=10", "--config", "scale=5",
             "--clobber-config", "--clobber-output")
    assert p.returncode == 0
    assert (repo_root / "rerun/run1/echo-10-1.txt").read_text() == "5.0\n"


def test_quality_flag_and_fault_do_not_stop_the_run(repo_root):
    p = echo(repo_root, "--rerun", "run2", "--id", "visit=10..14:2", "--config",
             "failVisit=12", "crashVisit=14", "--retries", "1")
    assert p.returncode == 1  # a fault remains
    assert (repo_root / "rerun/run2/echo-10-0.txt").exists()
    assert not (repo_root / "rerun/run2/echo-12-0.txt").exists()
    assert "no stars" in p.stderr and "disk on fire" in p.stderr
    rows = Repository(repo_root).registry.ledger_rows("run2", "echoTask")
    by_visit = {(r["data_id"]["visit"], r["data_id"]["ccd"]): r for r in rows}
    assert by_visit[(12, 0)]["quality"] == "visit=12: no stars"
    assert by_visit[(12, 0)]["state"] == "done"
    assert by_visit[(14, 0)]["state"] == "pending" and by_visit[(14, 0)]["faults"] == 2
    # rerun: done units skipped, the faulted ones retried (and now succeed)
    p = echo(repo_root, "--rerun", "run2", "--id", "visit=10..14:2", "--config",
             "failVisit=12", "--clobber-config")
    assert p.returncode == 0 and (repo_root / "rerun/run2/echo-14-0.txt").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--rerun", "a", "--id", "visit=10", "--config", "nosuch=1"], "unknown config key"),
    (["--rerun", "a", "--id", "visit=10", "--config", "scale=abc"], "scale"),
    (["--rerun", "a", "--id", "visit"], "malformed"),
    (["--rerun", "a", "--id"], "expected at least one"),
    (["--rerun", "a", "--id", "visit=999"], "matches no data"),
    (["--rerun", "a", "--id", "visit=10", "--configfile", "/nonexistent.yaml"], "no such file"),
    (["--id", "visit=10"], "--rerun"),
])
def test_user_errors(repo_root, args, fragment):
    assert fragment in one_line_error(echo(repo_root, *args))


def test_missing_root(tmp_path):
    line = one_line_error(echo(tmp_path / "nope", "--rerun", "a", "--id", "visit=1"))
    assert "does not exist" in line


def test_doraise_shows_traceback(repo_root):
    p = echo(repo_root, "--rerun", "a", "--id", "visit=10", "--config", "nosuch=1",
             "--doraise")
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_ingest_cli_errors(tmp_path, run):
    p = run("ingestImages.py", tmp_path / "r", tmp_path / "missing.fits")
    assert one_line_error(p).count("no such file") == 1
    bad = tmp_path / "junk.fits"
    bad.write_text("junk")
    assert "not a readable FITS" in one_line_error(run("ingestImages.py", tmp_path / "r", bad))
    p = run("ingestImages.py", tmp_path / "r", bad, "--instrument", "nosuchcam")
    assert "unknown instrument" in one_line_error(p)
    nowcs = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.zeros((5, 5), np.float32)).writeto(nowcs)
    assert "no celestial WCS" in one_line_error(run("ingestImages.py", tmp_path / "r", nowcs))


def test_deleted_rerun_is_redone(repo_root):
    import shutil

    assert echo(repo_root, "--rerun", "gone", "--id", "visit=10").returncode == 0
    shutil.rmtree(repo_root / "rerun/gone")
    p = echo(repo_root, "--rerun", "gone", "--id", "visit=10")
    assert p.returncode == 0 and "forgot its 2 ledger entries" in p.stderr
    assert (repo_root / "rerun/gone/echo-10-0.txt").exists()
