"""``showLedger.py ROOT --rerun R [--id ...] [--task NAME]``: what the ledger says.

Lists the units of work of a rerun that are not cleanly done (pending, running, faulted
or flagged with a data-quality problem) with the reason, host and time, then one summary
line per task. ``--clean-tmp`` also removes ``.tmp-*`` files that runs killed in the
middle of an atomic write left in the rerun (they are never read: no dataset name starts
with ``.tmp-``, and a final name appears only by an atomic rename). It removes only files
older than ``--min-age`` seconds (default one hour), so writes in progress survive.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from ..errors import UserError
from ..repo.dataid import parse_id_args
from ..repo.registry import rerun as rerun_table
from ..repo.repository import Repository
from .parser import CommandParser
from .task import simple_main

#: the classes of a ledger row, in the order of the summary columns
STATES = ("done", "flagged", "faulted", "running", "pending")


def classify(row: dict) -> str:
    """Class of one ledger row: done, flagged, faulted, running or pending.

    A unit left ``running`` by a killed run stays ``running`` here until it is rerun (the
    runner retries it: only ``done`` units are skipped).
    """
    if row["state"] == "done":
        return "flagged" if row["quality"] is not None else "done"
    if row["state"] == "running":
        return "running"
    return "faulted" if row["faults"] else "pending"


@dataclass
class TaskSummary:
    """Numbers of units of one task in each class of :data:`STATES`."""

    task: str
    counts: dict = field(default_factory=lambda: dict.fromkeys(STATES, 0))

    @property
    def units(self) -> int:
        return sum(self.counts.values())


def summarize_ledger(rows: list[dict]) -> list[TaskSummary]:
    """One :class:`TaskSummary` per task, in task-name order."""
    out: dict[str, TaskSummary] = {}
    for r in rows:
        out.setdefault(r["task"], TaskSummary(r["task"])).counts[classify(r)] += 1
    return [out[k] for k in sorted(out)]


def _ident(data_id: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in data_id.items())


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def format_ledger(rows: list[dict]) -> str:
    """The report: one line per unit not cleanly done, then the per-task summary."""
    lines = []
    problems = [r for r in rows if classify(r) != "done"]
    if problems:
        lines.append(f"{'task':<20} {'class':<8} {'faults':>6}  data ID  --  why")
    for r in problems:
        cls = classify(r)
        if cls == "flagged":
            why = r["quality"]
        elif cls == "running":
            why = (f"started {_when(r['started'])} on {r['host']} pid {r['pid']} "
                   "(a killed run leaves this; the next run retries it)")
        elif cls == "faulted":
            why = f"{r['message']} (last on {r['host']} at {_when(r['finished'])})"
        else:
            why = "not run yet"
        lines.append(f"{r['task']:<20} {cls:<8} {r['faults']:>6}  {_ident(r['data_id'])}"
                     f"  --  {why}")
    if problems:
        lines.append("")
    lines.append(f"{'task':<20} {'units':>6} " + " ".join(f"{s:>8}" for s in STATES))
    for s in summarize_ledger(rows):
        lines.append(f"{s.task:<20} {s.units:>6} "
                     + " ".join(f"{s.counts[k]:>8}" for k in STATES))
    return "\n".join(lines)


def clean_tmp(rerun_dir: Path, min_age: float) -> list[Path]:
    """Remove ``.tmp-*`` leftovers of atomic writes older than ``min_age`` seconds."""
    removed = []
    if not rerun_dir.is_dir():
        return removed
    now = time.time()
    for p in rerun_dir.rglob(".tmp-*"):
        try:
            if p.is_file() and now - p.stat().st_mtime >= min_age:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # its writer finished meanwhile
            pass
    return sorted(removed)


def _body(argv) -> int:
    p = CommandParser(prog="showLedger.py",
                description="List pending, running, faulted and flagged units of a rerun")
    p.add_argument("root", metavar="ROOT", help="data repository root")
    p.add_argument("--rerun", required=True, metavar="R", help="rerun to report on")
    p.add_argument("--id", nargs="+", action="append", metavar="KEY=VALUE",
                   help="only units matching these data IDs")
    p.add_argument("--task", action="append", metavar="NAME", help="only this task")
    p.add_argument("--registry", metavar="URL", help="SQLAlchemy URL of the registry")
    p.add_argument("--clean-tmp", action="store_true",
                   help="remove .tmp-* leftovers of killed runs from the rerun")
    p.add_argument("--min-age", type=float, default=3600.0, metavar="SECONDS",
                   help="with --clean-tmp, only files older than this (default 3600)")
    p.add_argument("--doraise", action="store_true")
    args = p.parse_args(argv)
    specs = [parse_id_args(t) for t in (args.id or [])]
    repo = Repository(args.root, registry_url=args.registry)
    reg = repo.registry
    rerun_name = args.rerun.rpartition(":")[2]
    with reg.engine.connect() as conn:
        known = sorted(r[0] for r in conn.execute(sa.select(rerun_table.c.name)))
    if rerun_name not in known:
        raise UserError(f"--rerun {rerun_name}: no such rerun in {repo.root}; known: "
                        f"{', '.join(known) or 'none (run a task first)'}")
    rows = reg.ledger_rows(rerun_name)
    if args.task:
        tasks = {r["task"] for r in rows}
        unknown = [t for t in args.task if t not in tasks]
        if unknown:
            raise UserError(f"--task {unknown[0]}: no units in rerun {rerun_name}; tasks "
                            f"there: {', '.join(sorted(tasks)) or 'none'}")
        rows = [r for r in rows if r["task"] in args.task]
    if specs:
        rows = [r for r in rows if any(s.matches(r["data_id"]) for s in specs)]
        if not rows:
            raise UserError(f"{' '.join('--id ' + str(s) for s in specs)} matches no "
                            f"unit in the ledger of rerun {rerun_name}")
    print(format_ledger(rows) if rows else f"rerun {rerun_name}: no units in the ledger")
    if args.clean_tmp:
        removed = clean_tmp(repo.root / "rerun" / rerun_name, args.min_age)
        print(f"removed {len(removed)} .tmp-* leftovers older than {args.min_age:g} s")
    return 0


def main(argv=None) -> None:
    """Console-script entry point."""
    sys.exit(simple_main("showLedger", _body, argv))
