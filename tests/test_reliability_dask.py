"""``--cluster``: the units of a task run on a real Dask distributed cluster.

A ``distributed.LocalCluster`` (two worker processes, one thread each) listens on
127.0.0.1; the command connects to it by address like any external scheduler. The
workers import the test task from tests/ (PYTHONPATH set before they start).
"""
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from fits_task import expected_image
from test_reliability import fits_task, ledger_by_visit_ccd, make_repo

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def cluster():
    import dask
    from distributed import LocalCluster

    # a task whose worker dies is given up after one retry (the default is 3)
    cfg = dask.config.set({"distributed.scheduler.allowed-failures": 1})
    mp = pytest.MonkeyPatch()
    # worker processes inherit the environment: they must import fits_task
    mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(HERE), os.environ.get("PYTHONPATH", "")])))
    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                     host="127.0.0.1", dashboard_address=None, silence_logs=40)
    try:
        yield c
    finally:
        c.close()
        mp.undo()
        cfg.__exit__(None, None, None)


def test_units_run_on_the_cluster(cluster, tmp_path):
    from distributed import Client

    root = make_repo(tmp_path, visits=(10, 11, 12))
    address = cluster.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")
    args = ["--rerun", "dask", "--id", "visit=10..12", "--cluster", address,
            "--no-progress", "--config", "size=32", "flagVisit=11"]
    p = fits_task(root, *args)
    assert p.returncode == 0, p.stderr
    assert "6 units: 4 done, 2 quality" in p.stderr
    ledger = ledger_by_visit_ccd(root, "dask")
    assert all(r["state"] == "done" for r in ledger.values()) and len(ledger) == 6
    assert {k for k, r in ledger.items() if r["quality"]} == {(11, 0), (11, 1)}
    # the work ran in the cluster's worker processes, not in the command
    with Client(address) as client:
        worker_pids = set(client.run(os.getpid).values())
    assert {r["pid"] for r in ledger.values()} <= worker_pids
    for visit in (10, 12):
        for ccd in (0, 1):
            assert np.array_equal(fits.getdata(root / f"rerun/dask/fits-{visit}-{ccd}.fits"),
                                  expected_image(visit, ccd, 32))
    # resume on the cluster: everything done is skipped
    p = fits_task(root, *args)
    assert p.returncode == 0 and "6 units: 6 skipped" in p.stderr


def test_dead_dask_worker_is_a_fault_and_the_run_completes(cluster, tmp_path):
    root = make_repo(tmp_path, visits=(10, 11, 12), ccds=(0,))
    p = fits_task(root, "--rerun", "dd", "--id", "visit=10..12", "--cluster",
                  cluster.scheduler_address, "--no-progress", "--config", "size=8",
                  "dieAlwaysVisit=11")
    assert p.returncode == 1, p.stderr
    # a unit dask rescheduled after the worker died may find itself already done
    # ("skipped"): either way two units are done and one is a fault
    assert "Traceback" not in p.stderr
    summary = p.stderr.strip().splitlines()[-1]
    assert "3 units:" in summary and "1 fault" in summary
    n_ok = sum(int(w) for w, kind in zip(summary.split()[::1], summary.split()[1:])
               if kind.rstrip(",") in ("done", "skipped") and w.isdigit())
    assert n_ok == 2, summary
    ledger = ledger_by_visit_ccd(root, "dd")
    assert ledger[(11, 0)]["state"] == "pending" and ledger[(11, 0)]["faults"] == 1
    assert "KilledWorker" in ledger[(11, 0)]["message"]
    assert ledger[(10, 0)]["state"] == ledger[(12, 0)]["state"] == "done"
    assert (root / "rerun/dd/fits-12-0.fits").exists()


def test_unreachable_cluster_is_one_line(tmp_path):
    root = make_repo(tmp_path, visits=(10,), ccds=(0,))
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    p = fits_task(root, "--rerun", "x", "--id", "visit=10", "--cluster",
                  "tcp://127.0.0.1:9", "--no-progress", env=env)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "--cluster tcp://127.0.0.1:9: cannot connect" in lines[0]
    assert not (root / "rerun/x/fits-10-0.fits").exists()
