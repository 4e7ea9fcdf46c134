"""Many processes ingesting and updating the ledger of one SQLite registry at once.

The same check runs against PostgreSQL in tests/test_postgres.py (``hammer_registry``).
Every process adds its own exposures and the same shared ones (one file per visit/ccd:
the race of two ingests of the same file), and records faults on shared ledger units;
afterwards no row is lost or duplicated and no fault count is lost.
"""
import subprocess
import sys

from tractpatch.repo.registry import Registry, canonical_data_id

N_PROCS = 4
N_OWN = 15      # exposures and ledger units of each process alone
N_SHARED = 10   # exposures and ledger units every process writes

#: One writer process: argv = URL, worker index.
WORKER = r"""
import sys
from tractpatch.repo.registry import Registry
url, k = sys.argv[1], int(sys.argv[2])
reg = Registry(url)
def row(visit, ccd, path):
    return dict(instrument="generic", visit=visit, ccd=ccd, filter="r", path=path,
                hdu="0", nx=10, ny=10)
out = []
for i in range(N_OWN):
    out.append(reg.add_exposure(row(1000 * (k + 1) + i, 0, f"own-{k}-{i}.fits")))
for i in range(N_SHARED):
    out.append(reg.add_exposure(row(i, 1, f"shared-{i}.fits")))
for i in range(N_OWN):
    reg.ledger_set("hammer", "r", {"visit": 1000 * (k + 1) + i, "ccd": 0}, "running")
    reg.ledger_set("hammer", "r", {"visit": 1000 * (k + 1) + i, "ccd": 0}, "done")
for i in range(N_SHARED):
    reg.ledger_set("hammer", "r", {"visit": i, "ccd": 1}, "running")
    reg.ledger_set("hammer", "r", {"visit": i, "ccd": 1}, "pending", fault=True,
                   message=f"fault from {k}")
print(out.count("added"), out.count("same"))
""".replace("N_OWN", str(N_OWN)).replace("N_SHARED", str(N_SHARED))


def hammer_registry(url: str, n_procs: int = N_PROCS) -> None:
    """Run ``n_procs`` writer processes on the registry at ``url`` and check the rows."""
    Registry(url)  # tables exist before the race on rows (a table race is tested apart)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(k)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(n_procs)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    added = [tuple(map(int, out.split())) for out, _ in outs]
    # each shared file is "added" by exactly one process, "same" for the others
    assert sum(a for a, _ in added) == n_procs * N_OWN + N_SHARED
    assert sum(s for _, s in added) == (n_procs - 1) * N_SHARED
    reg = Registry(url)
    rows = reg.exposures()
    keys = [(r["visit"], r["ccd"]) for r in rows]
    assert len(keys) == len(set(keys)) == n_procs * N_OWN + N_SHARED
    assert {r["path"] for r in rows if r["ccd"] == 1} == {f"shared-{i}.fits"
                                                         for i in range(N_SHARED)}
    ledger = reg.ledger_rows("r", "hammer")
    ids = [canonical_data_id(r["data_id"]) for r in ledger]
    assert len(ids) == len(set(ids)) == n_procs * N_OWN + N_SHARED
    own = [r for r in ledger if r["data_id"]["ccd"] == 0]
    assert all(r["state"] == "done" and r["faults"] == 0 for r in own)
    shared = [r for r in ledger if r["data_id"]["ccd"] == 1]
    # no lost update: every process's fault is counted
    assert [r["faults"] for r in shared] == [n_procs] * N_SHARED
    assert all(r["state"] == "pending" for r in shared)


def test_concurrent_writers_sqlite(tmp_path):
    hammer_registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}")


CREATE = r"""
import sys
from tractpatch.repo.registry import Registry
reg = Registry(sys.argv[1])
reg.add_rerun("r" + sys.argv[2], None)
"""


def test_concurrent_first_open_creates_tables_once(tmp_path):
    """Several processes opening a new registry at once (a race on CREATE TABLE)."""
    url = f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    procs = [subprocess.Popen([sys.executable, "-c", CREATE, url, str(k)],
                              stderr=subprocess.PIPE, text=True) for k in range(N_PROCS)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    reg = Registry(url)
    assert sorted(reg.rerun_chain(f"r{k}")[0] for k in range(N_PROCS)) == [
        f"r{k}" for k in range(N_PROCS)]
