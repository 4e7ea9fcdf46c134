"""The one argument parser every command shares (DESIGN.md, Conventions)."""
from __future__ import annotations

import argparse

from ..errors import UserError


class CommandParser(argparse.ArgumentParser):
    """argparse that raises UserError (one line, exit 2) instead of printing usage."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def make_parser(prog: str, description: str, uses_ids: bool = True,
                needs_rerun: bool = True) -> argparse.ArgumentParser:
    """The shared parser: ``ROOT --rerun [IN:]OUT --id ... --config ... -j N ...``."""
    p = CommandParser(prog=prog, description=description)
    p.add_argument("root", metavar="ROOT", help="data repository root")
    p.add_argument("--calib", metavar="DIR", help="calibration root (accepted for "
                   "hscPipe compatibility; unused)")
    p.add_argument("--rerun", metavar="[IN:]OUT", required=needs_rerun,
                   help="output rerun, optionally chained to an input rerun")
    p.add_argument("--registry", metavar="URL", help="SQLAlchemy URL of the registry "
                   "(default ROOT/repo.yaml or ROOT/registry.sqlite3)")
    if uses_ids:
        p.add_argument("--id", nargs="+", action="append", metavar="KEY=VALUE",
                       help="data IDs: visit=1..9:2 ccd=0^5 filter=HSC-I ...")
        p.add_argument("--selectId", nargs="+", action="append", metavar="KEY=VALUE",
                       help="input selection for coadds (visit=..., ccd=...)")
    p.add_argument("--config", "-c", nargs="+", action="extend", metavar="NAME=VALUE",
                   default=[], help="configuration overrides")
    p.add_argument("--configfile", "-C", nargs="+", action="extend", default=[],
                   metavar="FILE", help="YAML configuration override files")
    p.add_argument("-j", "--processes", type=int, default=1, metavar="N",
                   help="number of local processes")
    p.add_argument("--cluster", metavar="ADDRESS", help="Dask distributed scheduler "
                   "address (tcp://host:8786) to run the work on")
    p.add_argument("--show", choices=["config", "data"], help="print and exit")
    p.add_argument("--clobber-config", action="store_true",
                   help="accept a config that differs from the one saved in the rerun")
    p.add_argument("--clobber-output", action="store_true",
                   help="redo units the ledger records as done")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="retries of a unit after a transient fault (default 2)")
    p.add_argument("--doraise", action="store_true",
                   help="raise exceptions with tracebacks instead of one-line errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p
