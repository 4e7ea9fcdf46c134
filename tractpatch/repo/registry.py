"""The registry: an SQL database (SQLite by default, PostgreSQL for shared repositories).

Tables
------
exposure      one row per CCD of a visit: data-ID keys, file and HDU, companion files,
              the four sky corners (deg) and centre, size, and the file's size/mtime
rerun         rerun name and its parent (``--rerun IN:OUT``)
skymap, tract, patch
              skymaps saved by makeDiscreteSkyMap/makeSkyMap, with sky polygons
ledger        per task, rerun and data ID: state (pending/running/done), fault count,
              quality flag, message, host and times (the processing ledger)
ccd_summary   per-CCD measurements (PSF FWHM, sky level and noise, numbers of sources)

The processing ledger: a unit is ``done`` (possibly with a ``quality`` flag: bad data,
the unit completed and later stages leave it out), ``running`` (or left so by a killed
run: not done, so the next run retries it) or ``pending`` (never run, or ``faults`` > 0:
a transient failure, retried). A later stage asks with :meth:`Registry.unit_ok` (True:
use it, False: flagged, leave it out, raises :class:`UpstreamNotDone`: a fault blocks
the dependant) or, for many units at once, :meth:`Registry.flagged_units` /
:meth:`Registry.done_units`, e.g. the CCDs detectSources flagged::

    reg.flagged_units(repo.rerun, "detectSources", keys=("visit", "ccd"))
    # {'{"ccd":3,"visit":1228}', ...}: canonical_data_id({"visit": v, "ccd": c})

Every method opens its own short transaction, so several processes may share a
registry (SQLite serialises writers with a busy timeout; PostgreSQL is the choice for
many writers on a network filesystem).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ..errors import UserError
from .dataid import DataIdSpec

metadata = sa.MetaData()

exposure = sa.Table(
    "exposure", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("instrument", sa.String(64), nullable=False),
    sa.Column("visit", sa.BigInteger, nullable=False),
    sa.Column("ccd", sa.Integer, nullable=False),
    sa.Column("ccdname", sa.String(64)),
    sa.Column("filter", sa.String(64), nullable=False),
    sa.Column("field", sa.String(128)),
    sa.Column("pointing", sa.Integer),
    sa.Column("dateObs", sa.String(32)),
    sa.Column("mjd", sa.Float),
    sa.Column("expTime", sa.Float),
    sa.Column("gain", sa.Float),  # e-/count (instrument keyword or per-CCD override)
    sa.Column("saturation", sa.Float),  # counts
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("hdu", sa.String(64)),
    sa.Column("weight_path", sa.Text),
    sa.Column("weight_hdu", sa.String(64)),
    sa.Column("weight_kind", sa.String(16)),  # weight (inverse variance) | variance
    sa.Column("mask_path", sa.Text),
    sa.Column("mask_hdu", sa.String(64)),
    sa.Column("nx", sa.Integer), sa.Column("ny", sa.Integer),
    *[sa.Column(f"{c}{i}", sa.Float) for i in range(1, 5) for c in ("ra", "dec")],
    sa.Column("ra_center", sa.Float), sa.Column("dec_center", sa.Float),
    sa.Column("file_size", sa.BigInteger), sa.Column("file_mtime", sa.Float),
    sa.Column("ingested", sa.Float),
    sa.UniqueConstraint("visit", "ccd", name="uq_exposure_visit_ccd"),
)

rerun = sa.Table(
    "rerun", metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("parent", sa.String(255)),
    sa.Column("created", sa.Float),
)

skymap = sa.Table(
    "skymap", metadata,
    sa.Column("rerun", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("created", sa.Float),
)

tract = sa.Table(
    "tract", metadata,
    sa.Column("rerun", sa.String(255), primary_key=True),
    sa.Column("tract", sa.Integer, primary_key=True),
    sa.Column("ra", sa.Float), sa.Column("dec", sa.Float),
    sa.Column("num_patches_x", sa.Integer), sa.Column("num_patches_y", sa.Integer),
    sa.Column("polygon", sa.Text),  # JSON [[ra, dec], ...]
)

patch = sa.Table(
    "patch", metadata,
    sa.Column("rerun", sa.String(255), primary_key=True),
    sa.Column("tract", sa.Integer, primary_key=True),
    sa.Column("x", sa.Integer, primary_key=True),
    sa.Column("y", sa.Integer, primary_key=True),
    sa.Column("polygon", sa.Text),  # JSON, inner box corners
)

ledger = sa.Table(
    "ledger", metadata,
    sa.Column("task", sa.String(64), primary_key=True),
    sa.Column("rerun", sa.String(255), primary_key=True),
    # canonical JSON; Text, not String(255): PostgreSQL enforces lengths, and patch-level
    # IDs with long field names exceed 255 characters
    sa.Column("data_id", sa.Text, primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # pending | running | done
    sa.Column("faults", sa.Integer, nullable=False, default=0),
    sa.Column("quality", sa.Text),  # a data-quality flag: the unit is left out later
    sa.Column("message", sa.Text),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("started", sa.Float), sa.Column("finished", sa.Float),
)

ccd_summary = sa.Table(
    "ccd_summary", metadata,
    sa.Column("rerun", sa.String(255), primary_key=True),
    sa.Column("visit", sa.BigInteger, primary_key=True),
    sa.Column("ccd", sa.Integer, primary_key=True),
    sa.Column("psf_fwhm", sa.Float),  # arcsec
    sa.Column("sky_level", sa.Float), sa.Column("sky_noise", sa.Float),
    sa.Column("n_sources", sa.Integer), sa.Column("n_stars", sa.Integer),
)

#: exposure columns that are data-ID keys
EXPOSURE_KEYS = ("visit", "ccd", "filter", "field", "pointing", "dateObs")


def canonical_data_id(data_id: dict) -> str:
    """The ledger's key for a data ID: JSON with sorted keys."""
    return json.dumps({k: data_id[k] for k in sorted(data_id)}, separators=(",", ":"))


def _project(data_id: dict, keys) -> str:
    """Canonical ID of ``data_id`` restricted to ``keys`` (all keys when None)."""
    if keys is None:
        return canonical_data_id(data_id)
    return canonical_data_id({k: data_id[k] for k in keys if k in data_id})


class UpstreamNotDone(RuntimeError):
    """An input unit of an earlier stage is not done (pending, running, faulted or never
    run). Not a UserError: the runner records the dependant unit as a fault, so a fault
    upstream blocks the units that depend on it until it is resolved."""


class Registry:
    """Access to the registry database.

    Parameters
    ----------
    url : str
        SQLAlchemy URL, e.g. ``sqlite:////data/repo/registry.sqlite3`` or
        ``postgresql+psycopg2://user@host/db``.
    create : bool
        Create missing tables.
    """

    def __init__(self, url: str, create: bool = True):
        self.url = url
        kwargs = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 120}
        try:
            self.engine = sa.create_engine(url, future=True, **kwargs)
            if url.startswith("sqlite"):
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            if create:
                _create_tables(self.engine)
        except Exception as exc:
            raise UserError(f"registry {url}: cannot open ({exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0]}); check --registry / repo.yaml") from None

    @classmethod
    def for_root(cls, root, url: str | None = None) -> "Registry":
        """The registry of repository ``root`` (``ROOT/registry.sqlite3`` by default)."""
        if url is None:
            url = f"sqlite:///{Path(root).resolve() / 'registry.sqlite3'}"
        return cls(url)

    # --- exposures --------------------------------------------------------------
    def add_exposure(self, row: dict) -> str:
        """Insert one CCD. Returns ``"added"``, ``"same"`` (already there from the same
        file) or raises UserError when another file already holds this visit/ccd."""
        for _ in range(2):
            with self.engine.begin() as conn:
                old = conn.execute(sa.select(exposure).where(
                    exposure.c.visit == row["visit"], exposure.c.ccd == row["ccd"])).first()
                if old is not None:
                    old = old._mapping
                    if old["path"] == row["path"] and str(old["hdu"]) == str(row.get("hdu")):
                        return "same"
                    raise UserError(
                        f"{row['path']}: visit {row['visit']} ccd {row['ccd']} is already "
                        f"ingested from {old['path']}; remove one of them or fix the visit "
                        "number (e.g. --instrument with another visit keyword)")
                try:
                    conn.execute(exposure.insert().values(ingested=time.time(), **row))
                    return "added"
                except IntegrityError:
                    # a concurrent ingest won the race: compare with its row in a new
                    # transaction (PostgreSQL aborts this one)
                    pass
        raise RuntimeError(f"{row['path']}: could not insert visit {row['visit']} "
                           f"ccd {row['ccd']} (concurrent writers)")

    def exposures(self, specs: list[DataIdSpec] | None = None, **equal) -> list[dict]:
        """Exposure rows matching any of ``specs`` (union) and all ``equal`` terms."""
        q = sa.select(exposure).order_by(exposure.c.visit, exposure.c.ccd)
        for k, v in equal.items():
            q = q.where(exposure.c[k] == v)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        if specs:
            rows = [r for r in rows if any(s.matches(r) for s in specs)]
        return rows

    def exposure(self, visit: int, ccd: int) -> dict:
        """One exposure row; UserError if missing."""
        rows = self.exposures(visit=visit, ccd=ccd)
        if not rows:
            raise UserError(f"visit={visit} ccd={ccd}: not in the registry; "
                            "ingest it with ingestImages.py")
        return rows[0]

    # --- reruns -------------------------------------------------------------------
    def add_rerun(self, name: str, parent: str | None) -> None:
        """Record a rerun and its parent (idempotent; a changed parent is an error)."""
        with self.engine.begin() as conn:
            old = conn.execute(sa.select(rerun).where(rerun.c.name == name)).first()
            if old is None:
                try:
                    conn.execute(rerun.insert().values(name=name, parent=parent,
                                                       created=time.time()))
                except IntegrityError:
                    pass
            elif parent is not None and old._mapping["parent"] not in (None, parent):
                raise UserError(f"--rerun {parent}:{name}: rerun {name} already has "
                                f"input {old._mapping['parent']}; use another output rerun")

    def rerun_chain(self, name: str) -> list[str]:
        """``[name, parent, grandparent, ...]``."""
        chain = [name]
        with self.engine.connect() as conn:
            while True:
                r = conn.execute(sa.select(rerun.c.parent).where(
                    rerun.c.name == chain[-1])).first()
                if r is None or r[0] is None or r[0] in chain:
                    return chain
                chain.append(r[0])

    # --- ledger -------------------------------------------------------------------
    def ledger_get(self, task: str, rerun_name: str, data_id: dict) -> dict | None:
        """The ledger row of one unit of work, or None."""
        key = canonical_data_id(data_id)
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(ledger).where(
                ledger.c.task == task, ledger.c.rerun == rerun_name,
                ledger.c.data_id == key)).first()
        return dict(r._mapping) if r else None

    def ledger_set(self, task: str, rerun_name: str, data_id: dict, state: str,
                   fault: bool = False, quality: str | None = None,
                   message: str | None = None) -> None:
        """Create or update the ledger row of one unit of work."""
        key = canonical_data_id(data_id)
        now = time.time()
        values = dict(state=state, quality=quality, message=message,
                      host=socket.gethostname(), pid=os.getpid())
        if state == "running":
            values["started"] = now
            values["finished"] = None
        else:
            values["finished"] = now
        where = (ledger.c.task == task, ledger.c.rerun == rerun_name,
                 ledger.c.data_id == key)
        for _ in range(3):
            # update first, with the fault count incremented in SQL (a read-modify-write
            # in Python loses the faults of concurrent writers); insert when no row
            with self.engine.begin() as conn:
                n = conn.execute(ledger.update().where(*where).values(
                    faults=ledger.c.faults + int(fault), **values)).rowcount
                if n:
                    return
            try:
                with self.engine.begin() as conn:
                    conn.execute(ledger.insert().values(
                        task=task, rerun=rerun_name, data_id=key, faults=int(fault),
                        **values))
                return
            except IntegrityError:
                continue  # inserted concurrently: update instead
        raise RuntimeError(f"ledger {task} {rerun_name} {key}: could not record state "
                           "(concurrent writers)")

    def ledger_clear(self, rerun_name: str) -> int:
        """Forget every ledger row of a rerun (its directory was deleted); returns how many."""
        with self.engine.begin() as conn:
            return conn.execute(ledger.delete().where(ledger.c.rerun == rerun_name)).rowcount

    def ledger_rows(self, rerun_name: str, task: str | None = None) -> list[dict]:
        """All ledger rows of a rerun (optionally of one task)."""
        q = sa.select(ledger).where(ledger.c.rerun == rerun_name)
        if task:
            q = q.where(ledger.c.task == task)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q.order_by(ledger.c.task,
                                                                      ledger.c.data_id))]
        for r in rows:
            r["data_id"] = json.loads(r["data_id"])
        return rows

    def _ledger_chain_rows(self, rerun_name: str, task: str) -> list[dict]:
        """Ledger rows of ``task`` in ``rerun_name`` and its input reruns; a unit's row
        in a nearer rerun hides the same unit's row in a farther one."""
        seen: dict[str, dict] = {}
        for name in self.rerun_chain(rerun_name):
            for r in self.ledger_rows(name, task):
                seen.setdefault(canonical_data_id(r["data_id"]), r)
        return list(seen.values())

    def done_units(self, rerun_name: str, task: str, keys=None,
                   flagged: bool = False) -> set[str]:
        """Canonical data IDs (:func:`canonical_data_id`) of the units of ``task`` that
        are done in ``rerun_name`` or its input reruns.

        Parameters
        ----------
        keys : sequence of str, optional
            Project each data ID onto these keys first (e.g. ``("visit", "ccd")`` for a
            CCD-level stage whose units also carry filter, pointing, field).
        flagged : bool
            Include units done with a quality flag (default: only clean ones).
        """
        return {_project(r["data_id"], keys)
                for r in self._ledger_chain_rows(rerun_name, task)
                if r["state"] == "done" and (flagged or r["quality"] is None)}

    def flagged_units(self, rerun_name: str, task: str, keys=None) -> set[str]:
        """Canonical data IDs of the units ``task`` flagged (done with a quality flag):
        later stages leave them out. ``keys`` as in :meth:`done_units`."""
        return {_project(r["data_id"], keys)
                for r in self._ledger_chain_rows(rerun_name, task)
                if r["state"] == "done" and r["quality"] is not None}

    def unit_ok(self, rerun_name: str, task: str, data_id: dict) -> bool:
        """Whether a later stage may use the output of ``task`` for ``data_id``.

        Returns True when the unit is done and unflagged, False when it is done with a
        quality flag (leave it out and go on). Raises :class:`UpstreamNotDone` (a fault:
        the dependant is recorded as faulted and retried on the next run) when the unit
        is pending, running, faulted or absent. ``data_id`` may hold a subset of the
        unit's keys (``{"visit": 1, "ccd": 2}`` matches the detectSources unit with
        filter, pointing and field); the rerun chain is searched nearest first.
        """
        rows = []
        for name in self.rerun_chain(rerun_name):
            row = self.ledger_get(task, name, data_id)
            rows = [row] if row is not None else [
                r for r in self.ledger_rows(name, task)
                if all(r["data_id"].get(k) == v for k, v in data_id.items())]
            if rows:
                break
        ident = " ".join(f"{k}={v}" for k, v in data_id.items())
        if not rows:
            raise UpstreamNotDone(f"{ident}: {task} has not run in rerun {rerun_name}; "
                                  f"run {task} first")
        if len(rows) > 1:
            raise UserError(f"{ident}: matches {len(rows)} units of {task}; "
                            "give all the keys of the unit")
        row = rows[0]
        if row["state"] != "done":
            why = f" ({row['faults']} faults: {row['message']})" if row["faults"] else ""
            raise UpstreamNotDone(f"{ident}: {task} is {row['state']}{why}; rerun "
                                  f"{task} (showLedger.py ROOT --rerun {rerun_name})")
        return row["quality"] is None

    # --- CCD summaries ------------------------------------------------------------
    def put_ccd_summary(self, rerun_name: str, visit: int, ccd: int, **values) -> None:
        """Insert or replace the per-CCD summary of one CCD."""
        with self.engine.begin() as conn:
            conn.execute(ccd_summary.delete().where(
                ccd_summary.c.rerun == rerun_name, ccd_summary.c.visit == visit,
                ccd_summary.c.ccd == ccd))
            conn.execute(ccd_summary.insert().values(rerun=rerun_name, visit=visit,
                                                     ccd=ccd, **values))

    def ccd_summaries(self, rerun_name: str) -> list[dict]:
        """All per-CCD summaries of a rerun."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                sa.select(ccd_summary).where(ccd_summary.c.rerun == rerun_name))]

    # --- skymaps ------------------------------------------------------------------
    def put_skymap(self, rerun_name: str, name: str, config: str, tracts: list[dict],
                   patches: list[dict]) -> None:
        """Replace the skymap, tracts and patches recorded for a rerun."""
        with self.engine.begin() as conn:
            for t in (skymap, tract, patch):
                conn.execute(t.delete().where(t.c.rerun == rerun_name))
            conn.execute(skymap.insert().values(rerun=rerun_name, name=name,
                                                config=config, created=time.time()))
            if tracts:
                conn.execute(tract.insert(), [dict(rerun=rerun_name, **t) for t in tracts])
            if patches:
                conn.execute(patch.insert(), [dict(rerun=rerun_name, **p) for p in patches])

    def tracts(self, rerun_name: str) -> list[dict]:
        """Tract rows of a rerun's skymap."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                sa.select(tract).where(tract.c.rerun == rerun_name).order_by(tract.c.tract))]

    def patches(self, rerun_name: str, tract_id: int | None = None) -> list[dict]:
        """Patch rows of a rerun's skymap (optionally of one tract)."""
        q = sa.select(patch).where(patch.c.rerun == rerun_name)
        if tract_id is not None:
            q = q.where(patch.c.tract == tract_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]


def _create_tables(engine) -> None:
    """Create missing tables; tolerate another process creating them at the same time."""
    for attempt in range(5):
        try:
            metadata.create_all(engine)
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, IntegrityError):
            # "table already exists" (SQLite) or a unique violation in pg_type
            # (PostgreSQL) when two processes open a new registry at once
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=120000")
    cur.close()
